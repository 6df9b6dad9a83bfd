"""The demo's measured sweep: the bubble at M = 1, 2, 4, ..., 32 on real processes.

One launch of P processes (gloo) builds, for each M, a Pipeline of emulated
stages (``conveyor.measure.emulated``): each stage holds its "device" for a set
time per sample without using the CPU, as an accelerator kernel does, so four
ranks on two cores behave like four devices. The batch is fixed, so a
micro-batch of n samples takes n times the per-sample time, exactly as real
compute would, and the whole batch costs the same work at every M.

Per M: ``warmup`` unrecorded steps with the device time off (they only pay
the first step's costs: the shape handshake, allocations), then ``steps``
recorded ones (``steps_short`` from M = 8 on); the median step by step time
is that M's row and timeline.

The measured bubble is ``Timeline.bubble_overall``, the demo's own measure:
1 - (time in F and B actions, summed over ranks) / (P x step time), where the
step runs from the first action's start to the last action's end on any rank.
Time blocked in a receive is bubble (the rank waits on its neighbour), and so
is the host time of posting sends and receives (the device computes nothing
then).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SweepConfig", "run_sweep", "check_sweep", "sweep_rank", "announce", "finish",
           "median_step", "predicted", "progress_bar", "sweep_summary"]


@dataclass(frozen=True)
class SweepConfig:
    """What the sweep runs; the defaults are ``conveyor demo``'s.

    stages:        P, processes (one stage each).
    schedule:      a registered schedule name (the training's).
    microbatches:  the values of M, each dividing ``batch``.
    batch:         samples per step, the same at every M.
    forward_s:     seconds one stage's forward of the whole batch takes; a
                   micro-batch of M takes forward_s / M. Backward: 2x.
    width:         features crossing each cut.
    warmup:        unrecorded steps per M, run with zero device time.
    steps:         recorded steps per M (the median is reported).
    steps_short:   recorded steps for M >= 8, whose steps are short, so one
                   stall on a busy machine weighs more (median of more).
    out:           folder for M01.json ... and sweep.json; None: none written.
    json_path:     also write sweep.json's content here (for scripts).
    progress:      print each row as it is measured, and a progress bar.
    backend:       "gloo" (default) or "nccl".
    """

    stages: int = 4
    schedule: str = "1f1b"
    microbatches: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    batch: int = 64
    forward_s: float = 0.3
    width: int = 16
    warmup: int = 1
    steps: int = 3
    steps_short: int = 5
    out: str | None = "runs/demo/sweep"
    json_path: str | None = None
    progress: bool = True
    backend: str | None = "gloo"

    @property
    def backward_s(self) -> float:
        return 2 * self.forward_s

    def recorded(self, M: int) -> int:
        """Recorded steps at this M."""
        return self.steps_short if M >= 8 else self.steps


def median_step(timelines: list):
    """The recorded step of median step time (the upper one of an even count)."""
    return sorted(timelines, key=lambda t: t.step_time)[len(timelines) // 2]


def predicted(schedule, measured):
    """(simulated Timeline, formula bubble or None) for a measured step: the
    simulator replays ``schedule`` with the step's measured per-stage F and B
    times and free links; the formula is the schedule's closed form."""
    from conveyor.sim import CostModel, formula_bubble, simulate

    costs = measured.stage_costs()
    sim = simulate(schedule, CostModel(forward=costs["F"], backward=costs["B"]), unit="s")
    f = formula_bubble(schedule.name, schedule.P, schedule.M)
    return sim, None if f is None else float(f)


def _row_text(row: dict) -> str:
    formula = "n/a" if row["formula"] is None else f"{100 * row['formula']:5.1f}%"
    return (f"  {row['M']:>3}   {100 * row['measured']:5.1f}%     {100 * row['simulated']:5.1f}%"
            f"     {formula}   {row['step_s']:7.3f} s")


HEADER = "    M   measured   simulated   formula   step time"


def check_sweep(cfg: SweepConfig) -> None:
    """PipelineError naming the value when ``cfg`` cannot run."""
    from conveyor.errors import PipelineError

    for name in ("batch", "width", "steps", "steps_short"):
        if getattr(cfg, name) < 1:
            raise PipelineError(f"sweep {name}={getattr(cfg, name)} must be at least 1")
    if cfg.warmup < 0:
        raise PipelineError(f"sweep warmup={cfg.warmup} must be at least 0")
    bad = [M for M in cfg.microbatches if M < 1 or cfg.batch % M]
    if bad or not cfg.microbatches:
        raise PipelineError(f"sweep M values {list(cfg.microbatches)} must be >= 1 and divide "
                            f"the batch of {cfg.batch} (equal micro-batches); e.g. 1,2,4,8,16,32")
    if not 0 < cfg.forward_s <= 60:
        raise PipelineError(f"sweep device time {1000 * cfg.forward_s:g} ms (one stage's "
                            f"forward of the whole batch) must be above 0 and at most 60000 ms; "
                            f"e.g. 300")


def sweep_rank(ctx, cfg: SweepConfig) -> dict:
    """One rank's sweep (collective: every rank calls it). Rank 0 returns
    ``{"started": time.time() at the start, "per_m": [{"row", "timeline"}, ...]}``
    for ``finish``; the others return {}."""
    import torch
    from torch import nn

    from conveyor.runtime import Pipeline, PipelineConfig
    from conveyor.measure.emulated import EmulatedLayer, EmulatedTimes, emulated_stages
    from conveyor.schedule import build_schedule

    started = time.time()
    per_sample = EmulatedTimes(cfg.forward_s / cfg.batch, cfg.backward_s / cfg.batch)
    off = EmulatedTimes(0.0, 0.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(cfg.batch, cfg.width, generator=g)  # (batch, width)
    y = torch.randn(cfg.batch, cfg.width, generator=g)
    bar = (progress_bar(sum(cfg.warmup + cfg.recorded(M) for M in cfg.microbatches))
           if ctx.rank == 0 and cfg.progress else None)
    say = bar.write if bar is not None else (print if ctx.rank == 0 and cfg.progress else None)
    if say:
        say(HEADER)
    rows = []
    for M in cfg.microbatches:
        sched = build_schedule(cfg.schedule, ctx.world_size, M)
        # A rank holding several stages (chunks) splits its device time among them.
        times = per_sample.scaled(sched.P / sched.S)
        stages = emulated_stages(sched.S, width=cfg.width, times=times, per_sample=True)
        # No optimizer: its update lies outside the measured step anyway. No
        # memory tracking: it would add host work to every forward.
        pipe = Pipeline.from_stages(stages, loss_fn=nn.functional.mse_loss, optimizer=None,
                                    schedule=sched, ctx=ctx,
                                    config=PipelineConfig(track_memory=False))
        layers = [m for st in pipe.stages.values() for m in st.modules()
                  if isinstance(m, EmulatedLayer)]
        recorded = []
        for k in range(cfg.warmup + cfg.recorded(M)):
            for layer in layers:  # the warm-up needs no device time
                layer.times = off if k < cfg.warmup else times
            res = pipe.step(x, y, record=k >= cfg.warmup)
            if res.timeline is not None:
                recorded.append(res.timeline)
            if bar is not None:
                bar.advance(f"M={M}")
        if ctx.rank != 0:
            continue
        step = median_step(recorded)
        sim, formula = predicted(pipe.schedule, step)
        step.meta["emulated"] = _device_time(cfg)
        step.meta["recorded_step_times"] = [t.step_time for t in recorded]
        row = {"M": M, "measured": step.bubble_overall, "simulated": sim.bubble_overall,
               "formula": formula, "step_s": step.step_time, "timeline": f"M{M:02d}.json"}
        if say:
            say(_row_text(row))
        rows.append({"row": row, "timeline": step.to_dict()})
    if bar is not None:
        bar.close()
    return {"started": started, "per_m": rows} if ctx.rank == 0 else {}


def progress_bar(total: int):
    """A bar of ``total`` steps on stdout that rows can be written above, when
    stdout is a terminal; None otherwise (a log gets the rows alone)."""
    if not sys.stdout.isatty():
        return None
    from conveyor.progress import ProgressBar

    return ProgressBar(total, stream=sys.stdout)


def _device_time(cfg: SweepConfig) -> dict:
    return {"forward_s_per_sample": cfg.forward_s / cfg.batch,
            "backward_s_per_sample": cfg.backward_s / cfg.batch,
            "forward_s_per_batch": cfg.forward_s, "backward_s_per_batch": cfg.backward_s,
            "what": "each stage sleeps (no CPU) this long per sample of a micro-batch, "
                    "as an accelerator kernel holds its device, not a core"}


def sweep_summary(rows: list[dict]) -> str:
    """One line on what the rows show, computed from them: the first and last
    M's measured bubble and the change in step time."""
    a, b = rows[0], rows[-1]
    verb = "fell" if b["measured"] < a["measured"] else "rose"
    ratio = a["step_s"] / b["step_s"] if b["step_s"] > 0 else float("inf")
    how = f"fell by {ratio:.1f}x" if ratio >= 1 else f"rose by {1 / ratio:.1f}x"
    formula = ("" if a["formula"] is None or b["formula"] is None else
               f" (formula {100 * a['formula']:.1f}% to {100 * b['formula']:.1f}%)")
    return (f"the measured bubble {verb} from {100 * a['measured']:.1f}% to "
            f"{100 * b['measured']:.1f}% as M went from {a['M']} to {b['M']}{formula}; "
            f"step time {how} ({a['step_s']:.2f} s to {b['step_s']:.2f} s)")


def announce(cfg: SweepConfig) -> None:
    """Print what the sweep runs, in two lines (before it starts)."""
    ms = cfg.forward_s * 1000
    print(f"measured sweep: {cfg.stages} processes, schedule {cfg.schedule}, batch {cfg.batch} "
          f"at M = {', '.join(map(str, cfg.microbatches))}; each stage holds an emulated device "
          f"{ms:g} ms per batch forward, {2 * ms:g} ms backward "
          f"(per micro-batch: its share of that)", flush=True)
    cores = os.cpu_count() or 1
    print(f"  emulated device time: a stage sleeps for it without using the CPU, as a GPU "
          f"kernel does, so {cfg.stages} ranks on {cores} CPU cores behave like {cfg.stages} "
          f"devices", flush=True)


def finish(cfg: SweepConfig, result: dict, launched: float | None = None) -> dict:
    """Write what rank 0's ``sweep_rank`` returned (timelines, sweep.json), print
    the closing lines and return sweep.json's content plus ``sweep_s``, the
    seconds since the sweep started on rank 0, and ``wall_s``, since
    ``launched`` (a ``time.time()`` before the processes started; default: the
    same as ``sweep_s``)."""
    from conveyor.sim.timeline import Timeline

    per_m = result["per_m"]
    rows = [r["row"] for r in per_m]
    doc = {"P": cfg.stages, "schedule": cfg.schedule, "batch": cfg.batch,
           "device_time": _device_time(cfg), "warmup_steps": cfg.warmup,
           "recorded_steps": {str(M): cfg.recorded(M) for M in cfg.microbatches}, "rows": rows}
    if cfg.out is not None:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        for r in per_m:
            Timeline.from_dict(r["timeline"]).save(out / r["row"]["timeline"])
        (out / "sweep.json").write_text(json.dumps(doc, indent=1))
    if cfg.json_path is not None:
        path = Path(cfg.json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1))
    now = time.time()
    sweep_s = now - result["started"]
    wall = now - (result["started"] if launched is None else launched)
    if not cfg.progress:  # the rows were not printed as they came
        print(HEADER)
        for row in rows:
            print(_row_text(row))
    print(sweep_summary(rows))
    if cfg.out is not None:
        out = Path(cfg.out)
        print(f"sweep timelines: {out / rows[0]['timeline']} ... {rows[-1]['timeline']} and "
              f"{out / 'sweep.json'} (see them, one chart per M: conveyor viz --timeline "
              f"{out})")
    if cfg.json_path is not None:
        print(f"sweep table: {cfg.json_path}")
    print(f"sweep done in {sweep_s:.1f} s" + (f" ({wall:.1f} s with the launch)"
                                              if launched is not None else ""))
    return {**doc, "sweep_s": sweep_s, "wall_s": wall}


def run_sweep(cfg: SweepConfig) -> dict:
    """Launch the sweep on ``cfg.stages`` local processes, print its table and
    write the timelines and sweep.json. Returns sweep.json's content plus
    ``sweep_s`` and ``wall_s`` (launch included). Raises PipelineError on bad M values or
    device time, RankFailedError when a rank fails."""
    from conveyor.runtime import LaunchOptions, launch
    check_sweep(cfg)
    started = time.time()
    announce(cfg)
    results = launch(sweep_rank, nprocs=cfg.stages, args=(cfg,),
                     options=LaunchOptions(backend=cfg.backend))
    return finish(cfg, results[0], started)
