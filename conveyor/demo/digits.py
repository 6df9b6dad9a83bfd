"""The demo job: a deep MLP trained on scikit-learn's digits across P processes.

The data set ships with scikit-learn (1797 8x8 images of digits, 10 classes), so
nothing is downloaded. Every rank loads it and draws the same shuffled batches
(same seed), feeds what its stages need, and the pipeline does the rest. The
last epoch's full-size steps are recorded; rank 0 picks the median one and
puts its measured bubble next to the simulator's (same schedule, measured
per-stage costs) and the closed-form one. Then, unless ``sweep`` is off, the
same processes run the measured sweep (``conveyor.demo.sweep``), which shows
the bubble shrinking with M under the same schedule.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from conveyor.demo.sweep import (
    SweepConfig, announce, check_sweep, finish, median_step, predicted, progress_bar,
    sweep_rank,
)

__all__ = ["DemoConfig", "run_demo", "build_model"]


@dataclass(frozen=True)
class DemoConfig:
    """What ``conveyor demo`` runs; the defaults are the README's demo.

    stages:        pipeline ranks P (one process each, one stage each).
    microbatches:  M, micro-batches per step.
    schedule:      a registered schedule name.
    epochs:        passes over the 1437 training images.
    batch_size:    images per step (the last step of an epoch is smaller).
    blocks:        hidden residual blocks (one Linear each); the model has
                   blocks + 2 layers: an input Linear, the blocks, a head.
    width:         hidden features.
    lr:            Adam learning rate.
    seed:          seed of the weights, the split and the batch order.
    out:           folder for timeline.json and summary.json.
    progress:      show a progress bar (rank 0's).
    backend:       "gloo", "nccl" or None (NCCL when CUDA is present).
    sweep:         after training, run the measured M sweep (SweepConfig;
                   its stages, schedule and out are taken from this config);
                   None: no sweep.
    """

    stages: int = 4
    microbatches: int = 8
    schedule: str = "1f1b"
    epochs: int = 8
    batch_size: int = 64
    blocks: int = 16
    width: int = 128
    lr: float = 2e-3
    seed: int = 0
    out: str = "runs/demo"
    progress: bool = True
    backend: str | None = None
    sweep: SweepConfig | None = field(default_factory=SweepConfig)


def build_model(cfg: DemoConfig):
    """Linear(64, width), ``blocks`` residual blocks, a LayerNorm+Linear head."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, width: int):
            super().__init__()
            self.norm = nn.LayerNorm(width)
            self.fc = nn.Linear(width, width)

        def forward(self, x):  # (n, width) -> (n, width)
            return x + self.fc(torch.relu(self.norm(x)))

    torch.manual_seed(cfg.seed)
    head = nn.Sequential(nn.LayerNorm(cfg.width), nn.Linear(cfg.width, 10))
    return nn.Sequential(nn.Linear(64, cfg.width), *[Block(cfg.width) for _ in range(cfg.blocks)],
                         head)


def _data(seed: int):
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X / 16.0, y, test_size=0.2, random_state=seed,
                                          stratify=y)
    f = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return f(Xtr), torch.tensor(ytr), f(Xte), torch.tensor(yte)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def predict_step(cfg: DemoConfig, balance: list[int], out: Path) -> dict:
    """The planner's prediction of one training step, before the launch.

    Profiles the demo's model here, on one thread as a rank runs, at twice
    the micro-batch size and below (``conveyor.profile``), writes
    ``profile.json`` into ``out``, and simulates the schedule with those
    per-layer costs for ``balance`` (links free: not measured here). Returns
    {"step_s", "bubble", "profile", "sizes", "profile_s"}."""
    import torch

    from conveyor.plan import stage_costs
    from conveyor.plan.search import microbatch_sizes
    from conveyor.measure.profile import profile
    from conveyor.schedule import build_schedule
    from conveyor.sim import simulate

    t0 = time.time()
    Xtr = _data(cfg.seed)[0]
    sizes = microbatch_sizes(cfg.batch_size, cfg.microbatches)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank here: 1 thread (cores / ranks, at least 1)
    try:
        prof = profile(build_model(cfg), Xtr[:max(2, 2 * max(sizes))], repeats=5, warmup=2,
                       name="demo-mlp", progress=False)
    finally:
        torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    path = prof.save(out / "profile.json")
    sched = build_schedule(cfg.schedule, cfg.stages, cfg.microbatches)
    costs = stage_costs(prof, balance, sizes, [False] * sched.S, sched.placement)
    tl = simulate(sched, costs.cost_model(prof.latency, prof.bandwidth), check=False, unit="s")
    return {"step_s": tl.step_time, "bubble": tl.bubble_overall, "profile": str(path),
            "sizes": sizes, "balance": list(balance), "profile_s": time.time() - t0}


def with_runtime(cfg: DemoConfig, plan: dict, tiny: dict) -> dict:
    """``plan`` (from ``predict_step``) with the runtime's own work added:
    the overhead per action and latency per transfer fitted to ``tiny``
    (``conveyor.measure.profile.tiny_steps`` on the demo's own ranks, so on
    its shared cores too), stored into the profile file, and the step
    simulated again with them. Adds "compute_step_s" (the prediction
    without them), "overhead_s" and "latency_s"."""
    from conveyor.plan import load_profile, stage_costs
    from conveyor.measure.profile import fit_tiny
    from conveyor.schedule import build_schedule
    from conveyor.sim import simulate

    overhead, latency = fit_tiny(tiny, cfg.stages)
    prof = load_profile(plan["profile"])
    prof.overhead = overhead
    prof.links = {"latency": latency, "bandwidth": None, "overhead": overhead,
                  "tiny_steps": tiny, "method": f"fitted to tiny pipelines on the demo's "
                                                f"{cfg.stages} ranks"}
    prof.save(plan["profile"])
    sched = build_schedule(cfg.schedule, cfg.stages, cfg.microbatches)
    costs = stage_costs(prof, plan["balance"], plan["sizes"], [False] * sched.S, sched.placement)
    tl = simulate(sched, costs.cost_model(prof.latency, prof.bandwidth), check=False, unit="s")
    return dict(plan, step_s=tl.step_time, bubble=tl.bubble_overall,
                compute_step_s=plan["step_s"], overhead_s=overhead, latency_s=latency)


def _train_rank(ctx, cfg: DemoConfig, sweep: SweepConfig | None, started: float,
                plan: dict | None = None) -> dict:
    """One rank's work: train, test, then (``sweep`` not None) the measured
    sweep in the same processes, which spares a second launch. Rank 0 prints
    the training report before the sweep starts, and returns the summary and
    the sweep's rows; the others return {}."""
    import torch
    import torch.distributed as dist
    from torch import nn

    from conveyor.runtime import Pipeline
    from conveyor.measure.profile import tiny_steps

    # The runtime's own time per action and per transfer, on these ranks, for
    # the prediction (about a second: a few steps of two tiny pipelines).
    tiny = tiny_steps(ctx) if plan is not None and cfg.stages > 1 else None
    Xtr, ytr, Xte, yte = _data(cfg.seed)
    pipe = Pipeline(build_model(cfg), loss_fn=nn.functional.cross_entropy,
                    optimizer=lambda ps: torch.optim.Adam(ps, lr=cfg.lr),
                    schedule=cfg.schedule, microbatches=cfg.microbatches, ctx=ctx)
    n = len(Xtr)
    steps_per_epoch = -(-n // cfg.batch_size)
    gen = torch.Generator().manual_seed(cfg.seed)
    bar = None
    if ctx.rank == 0 and cfg.progress:
        bar = progress_bar(cfg.epochs * steps_per_epoch)
    say = bar.write if bar is not None else print
    losses, timelines = [], []
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(steps_per_epoch):
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            # Record the last epoch's full-size steps for the bubble report.
            record = epoch == cfg.epochs - 1 and len(idx) == cfg.batch_size
            res = pipe.step(Xtr[idx], ytr[idx], record=record)
            total += res.loss * len(idx)
            if res.timeline is not None:
                timelines.append(res.timeline)
            if bar is not None:
                bar.advance(f"epoch {epoch + 1} loss {res.loss:.3f}")
        losses.append(total / n)
        if ctx.rank == 0:
            say(f"epoch {epoch + 1:>2}/{cfg.epochs}  loss {losses[-1]:.4f}")
    if bar is not None:
        bar.close()
    out = pipe.predict(Xte)
    # (correct, tested), known on the last stage's rank; rank 0 reports it.
    score = torch.zeros(2, dtype=torch.int64, device=ctx.device)
    if out is not None:
        score[0], score[1] = int((out.argmax(dim=1).cpu() == yte).sum()), len(yte)
    if ctx.world_size > 1:
        from conveyor.runtime.procs.deadline import bounded

        with bounded("the demo's score broadcast", pipe.ctx.pp_group):
            dist.broadcast(score, group=pipe.ctx.pp_group, group_src=pipe.last_rank)
    if ctx.rank != 0:
        if sweep is not None:
            sweep_rank(ctx, sweep)
        return {}
    if tiny:
        plan = with_runtime(cfg, plan, tiny)
    summary = _report(cfg, losses, timelines, int(score[0]), int(score[1]), started, plan)
    if sweep is None:
        return {"summary": summary}
    announce(sweep)
    return {"summary": summary, "sweep": sweep_rank(ctx, sweep)}


def run_demo(cfg: DemoConfig) -> dict:
    """Launch the demo on ``cfg.stages`` local processes (one launch for the
    training and the sweep), print the report and write ``timeline.json``,
    ``summary.json`` and the sweep's files into ``cfg.out``. Returns the
    summary. Raises PipelineError on a bad sweep, RankFailedError when a rank
    fails."""
    from conveyor.partition import uniform_balance
    from conveyor.runtime import LaunchOptions, launch
    from conveyor.runtime.transport.group import default_backend
    from conveyor.schedule import build_schedule

    started = time.time()
    L = cfg.blocks + 2
    balance = uniform_balance(L, cfg.stages)
    M = build_schedule(cfg.schedule, cfg.stages, cfg.microbatches).M  # bad names fail here
    backend = cfg.backend or default_backend(cfg.stages)
    sweep = None
    if cfg.sweep is not None and cfg.schedule != "naive" and cfg.stages > 1:
        sweep = replace(cfg.sweep, stages=cfg.stages, schedule=cfg.schedule, backend=backend,
                        progress=cfg.progress, out=str(Path(cfg.out) / "sweep"))
        check_sweep(sweep)
    where = "one GPU each" if backend == "nccl" else "CPU"
    print(f"conveyor demo: an MLP of {L} layers ({cfg.blocks + 2} Linear) on scikit-learn's "
          f"digits, {cfg.stages} processes ({backend}, {where}), schedule {cfg.schedule}, "
          f"M={M}, layers per stage {'/'.join(map(str, balance))}", flush=True)
    S = build_schedule(cfg.schedule, cfg.stages, cfg.microbatches).S
    plan = predict_step(cfg, uniform_balance(L, S), Path(cfg.out))
    first = launch(_train_rank, nprocs=cfg.stages, args=(cfg, sweep, started, plan),
                   options=LaunchOptions(backend=backend))[0]
    summary = first["summary"]
    summary["balance"] = balance
    if cfg.sweep is not None and sweep is None:
        why = ("schedule 'naive' always runs M=1" if cfg.schedule == "naive"
               else "one stage has no bubble")
        print(f"measured sweep: skipped, {why}")
    if sweep is not None:
        doc = finish(sweep, first["sweep"])
        summary["sweep"] = {"rows": doc["rows"], "sweep_s": doc["sweep_s"], "dir": sweep.out}
    summary["total_s"] = time.time() - started
    out = Path(cfg.out)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"done in {summary['total_s']:.1f} s")
    return summary


def _report(cfg: DemoConfig, losses: list, timelines: list, correct: int, tested: int,
            started: float, plan: dict | None = None) -> dict:
    """Rank 0, after training: print the accuracy, the planner's predicted
    step (``plan``, from ``predict_step``) beside the measured one, and the
    bubble of the median recorded step beside the simulator's and the
    formula's, write ``timeline.json``; return the summary so far."""
    from conveyor.schedule import build_schedule

    sched = build_schedule(cfg.schedule, cfg.stages, cfg.microbatches)
    acc = correct / tested
    summary = {"config": asdict(cfg), "epoch_loss": losses, "accuracy": acc}
    print(f"test accuracy: {100 * acc:.1f}% ({correct}/{tested} images)")
    cores = usable_cores()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if timelines:
        measured = median_step(timelines)
        sim, formula = predicted(sched, measured)
        path = measured.save(out / "timeline.json")
        bubbles = measured.bubbles()
        fstr = f"{100 * formula:.1f}%" if formula is not None else "n/a"
        spec_formula = _formula_text(cfg.schedule)
        print(f"bubble: measured {100 * measured.bubble_overall:.1f}%  |  simulated "
              f"{100 * sim.bubble_overall:.1f}% (measured per-stage costs, free links)  |  "
              f"formula {spec_formula} = {fstr}")
        print("  measured per rank: " + "  ".join(f"rank {r} {100 * b:.1f}%"
                                                  for r, b in enumerate(bubbles)))
        print(f"  median of {len(timelines)} recorded steps: step time "
              f"{1000 * measured.step_time:.2f} ms measured, "
              f"{1000 * sim.step_time:.2f} ms simulated")
        if plan is not None:
            _print_prediction(cfg, plan, timelines)
            summary.update(predicted_step_s=plan["step_s"], predicted_bubble=plan["bubble"],
                           profile=plan["profile"],
                           predicted_compute_step_s=plan.get("compute_step_s", plan["step_s"]),
                           runtime_overhead_s=plan.get("overhead_s"),
                           runtime_latency_s=plan.get("latency_s"))
        if cores < cfg.stages:
            print(f"  note: {cfg.stages} processes share {cores} CPU cores here, so at most "
                  f"{cores} compute at once and the measured bubble cannot fall below "
                  f"1 - {cores}/{cfg.stages} = {100 * (1 - cores / cfg.stages):.0f}%"
                  + ("; the sweep below emulates device time to measure the schedule itself"
                     if cfg.sweep is not None and cfg.schedule != "naive" else ""))
        print(f"measured timeline: {path}")
        summary.update(bubble_measured=measured.bubble_overall,
                       bubble_per_rank=bubbles, bubble_simulated=sim.bubble_overall,
                       bubble_formula=formula,
                       step_time_s=measured.step_time, timeline=str(path))
    summary["wall_s"] = time.time() - started
    print(f"training done in {summary['wall_s']:.1f} s", flush=True)
    return summary


def _print_prediction(cfg: DemoConfig, plan: dict, timelines: list) -> None:
    """The planner's step beside the measured median; what the prediction
    holds; and, where ranks outnumber cores, a plain word that it does not
    model the compute sharing its core."""
    import statistics

    med = statistics.median(t.step_time for t in timelines)
    ratio = med / plan["step_s"]
    print(f"step: predicted {1000 * plan['step_s']:.2f} ms (simulated, profiled costs, "
          f"bubble {100 * plan['bubble']:.1f}%)  |  measured {1000 * med:.2f} ms (median of "
          f"{len(timelines)} steps; {ratio:.2f}x the prediction)")
    if "overhead_s" in plan:
        print(f"  the prediction holds the layers' compute ({1000 * plan['compute_step_s']:.2f} "
              f"ms alone) and the runtime's own work measured on these ranks: "
              f"{1e6 * plan['overhead_s']:.0f} us per action, {1e6 * plan['latency_s']:.0f} us "
              f"per transfer")
    cores = usable_cores()
    if cfg.stages > cores:
        print(f"  the prediction cannot model this machine: it assumes a core per rank, but "
              f"{cfg.stages} ranks share {cores} cores here; it does not model compute "
              f"waiting for a core, so the measured step is longer")


def _formula_text(name: str) -> str:
    from conveyor.schedule import get_spec

    return get_spec(name).formula or "?"
