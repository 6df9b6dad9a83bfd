"""``conveyor bench``: measure conveyor's pipeline on this machine against its simulator.

Trains a small grid of cases (P, M, schedule) on real processes, one per stage,
and prints for each the measured step time beside the simulator's ideal, the
measured bubble beside the formula's, and the micro-batches held on stage 0
beside the schedule's own bound. The default grid takes about a minute on two
CPU cores. The workload emulates device time (layers that sleep for a set
forward and backward time, holding no core, as a GPU kernel holds none), so
many stages fit on few cores; ``--workload mlp`` runs a real deep MLP instead.

The comparison with torch.distributed.pipelining, and the recorded results,
live in the repository's ``benchmarks/`` folder. torch is imported only when
the benchmark runs, in the rank processes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from functools import partial
from pathlib import Path

from conveyor.cli.argtypes import int_at_least, int_list, milliseconds
from conveyor.cli.names import add_deprecated
from conveyor.errors import ConveyorError

__all__ = ["add_parser", "run"]

EMULATED = {"width": 4096, "mb_size": 8}            # an activation: (8, 4096) float32, 128 KiB
MLP = {"layers": 16, "width": 384, "batch": 4096}   # Linear+ReLU blocks, real compute


def name_list(text: str) -> list[str]:
    values = [x.strip() for x in text.split(",") if x.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r}: give at least one name")
    return values


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="measure conveyor's pipeline on this machine",
                       description="Train a small grid of pipelines, one process per stage, "
                                   "and print each step time against the simulator's ideal, "
                                   "the measured bubble against the formula, and the "
                                   "micro-batches held on stage 0.")
    p.add_argument("--workload", choices=["emulated", "mlp"], default="emulated",
                   help="emulated device time (sleeping layers), or a real deep MLP (emulated)")
    p.add_argument("-P", "--ranks", dest="Ps", type=int_list, default=None, metavar="PS",
                   help="pipeline rank counts, comma-separated (emulated: 2,4; mlp: 2)")
    add_deprecated(p, "--stages", dest="Ps", use="-P/--ranks", type=int_list)
    p.add_argument("-M", "--microbatches", dest="Ms", type=int_list, default=None,
                   help="micro-batch counts, comma-separated (emulated: 4,8,16; mlp: 16)")
    p.add_argument("-s", "--schedules", type=name_list, default=["gpipe", "1f1b"],
                   help="schedule names, comma-separated (gpipe,1f1b)")
    p.add_argument("--forward-ms", type=milliseconds, default=10.0, metavar="MS",
                   help="emulated forward time per stage and micro-batch (10)")
    p.add_argument("--backward-ms", type=milliseconds, default=20.0, metavar="MS",
                   help="emulated backward time per stage and micro-batch (20)")
    p.add_argument("--repeats", type=int_at_least(1), default=3,
                   help="recorded steps per case; medians are printed (3)")
    p.add_argument("--warmup", type=int_at_least(0), default=1, help="untimed steps first (1)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="cuda when there is a GPU per rank (auto), or force one")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    p.set_defaults(func=run)


def run(args) -> int:
    from conveyor.progress import ProgressBar
    from conveyor.schedule import build_schedule

    if args.json:
        _check_output(args.json)
    mlp = args.workload == "mlp"
    Ps = args.Ps or ([2] if mlp else [2, 4])
    Ms = args.Ms or ([16] if mlp else [4, 8, 16])
    spec = dict(MLP, kind="mlp") if mlp else dict(
        EMULATED, kind="emulated", forward=args.forward_ms / 1000,
        backward=args.backward_ms / 1000)
    if mlp:
        for M in Ms:
            if spec["batch"] % M:
                raise ConveyorError(f"the MLP's batch of {spec['batch']} does not split into "
                                    f"M={M} equal micro-batches; pick M dividing it")
    cases = [(s, M) for M in Ms for s in args.schedules]
    for P in Ps:
        for s, M in cases:
            build_schedule(s, P, M)  # ScheduleError (with a suggestion) before any process
    backend = _backend(args.device, max(Ps))

    from conveyor.runtime import LaunchOptions, launch
    from conveyor.progress import progress_channel

    bar = ProgressBar(len(Ps) * len(cases), title="bench ")
    rows = []
    try:
        for P in Ps:
            with progress_channel(bar.advance) as channel:
                measured = launch(_rank, nprocs=P, args=(spec, cases, args.repeats,
                                                         args.warmup, channel),
                                  options=LaunchOptions(backend=backend, threads=1))[0]
            rows += [_row(spec, P, s, M, tls) for (s, M), tls in zip(cases, measured)]
    finally:
        bar.close()
    from conveyor.runtime.transport.group import default_backend

    print(f"{spec['kind']} workload, {backend or default_backend(max(Ps))} backend: medians of "
          f"{args.repeats} recorded steps; a step runs from the first action to the last")
    print(text_table(rows, ideal="the simulator with the configured F and B"
                     if not mlp else "the simulator with each stage's measured F and B"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"workload": spec, "backend": backend, "repeats": args.repeats,
                       "warmup": args.warmup, "rows": rows}, f, indent=1)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def _check_output(path: str) -> None:
    """ConveyorError, before anything runs, when ``path`` cannot be written."""
    p = Path(path)
    folder = p.parent
    if p.is_dir():
        raise ConveyorError(f"--json {path}: is a folder; give a file name, e.g. "
                            f"{p / 'bench.json'}")
    if not folder.is_dir():
        raise ConveyorError(f"--json {path}: folder {folder} does not exist; create it or "
                            f"choose another path")
    if not os.access(folder, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise ConveyorError(f"--json {path}: not writable here; choose another path")


def _backend(choice: str, P: int) -> str | None:
    """gloo, nccl or None (the runtime's choice). NCCL gives each rank its own
    GPU, so cuda needs P of them."""
    if choice == "cpu":
        return "gloo"
    if choice == "auto":
        return None
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus < P:
        raise ConveyorError(f"--device cuda with P={P} needs {P} GPUs (one per rank under "
                            f"NCCL), but torch sees {gpus}; lower -P or use --device cpu")
    return "nccl"


# -- in the rank processes ------------------------------------------------------------

def _rank(ctx, spec: dict, cases, repeats: int, warmup: int, channel) -> list:
    """Every case on this rank, in one process group; rank 0 returns per case
    the recorded timelines (as dicts)."""
    from conveyor.runtime.train.measure import measure_rank
    from conveyor.schedule import build_schedule

    out = []
    for schedule, M in cases:
        S = build_schedule(schedule, ctx.world_size, M).S
        timelines = measure_rank(ctx, partial(_model, spec, ctx.world_size, S),
                                 partial(_batch, spec, M), _mse, _sgd, schedule, M,
                                 None, repeats, warmup)
        out.append(timelines)
        if ctx.rank == 0 and channel is not None:
            channel.put(f"{schedule} P={ctx.world_size} M={M}")
    return out


def _model(spec: dict, P: int, S: int):
    """The workload's model for P ranks and S stages. Emulated: one layer per
    stage, each taking P/S of the configured times, so that a rank's work per
    micro-batch is the same whatever the number of stages per rank."""
    from torch import nn

    if spec["kind"] == "mlp":
        w = spec["width"]
        return nn.Sequential(*[nn.Sequential(nn.Linear(w, w), nn.ReLU())
                               for _ in range(spec["layers"])])
    from conveyor.measure.emulated import EmulatedTimes, emulated_stages

    times = EmulatedTimes(spec["forward"] * P / S, spec["backward"] * P / S)
    return nn.Sequential(*emulated_stages(S, width=spec["width"], times=times))


def _batch(spec: dict, M: int, step: int):
    import torch

    n = spec["batch"] if spec["kind"] == "mlp" else M * spec["mb_size"]
    g = torch.Generator().manual_seed(step)
    return torch.randn(n, spec["width"], generator=g), torch.randn(n, spec["width"], generator=g)


def _mse(output, target):
    from torch.nn.functional import mse_loss

    return mse_loss(output, target)


def _sgd(params):
    import torch

    return torch.optim.SGD(params, lr=1e-3)


# -- the report -----------------------------------------------------------------------

def _row(spec: dict, P: int, schedule: str, M: int, timelines: list[dict]) -> dict:
    """One case's medians, its ideal and the schedule's bounds."""
    from conveyor.schedule import build_schedule
    from conveyor.sim import CostModel, Timeline, formula_bubble, simulate
    from conveyor.views.measured import simulate_like

    tls = [Timeline.from_dict(d) for d in timelines]
    median = sorted(tls, key=lambda t: t.step_time)[len(tls) // 2]
    sched = build_schedule(schedule, P, M)
    if spec["kind"] == "emulated":
        scale = P / sched.S  # per stage, as _model builds it
        ideal = simulate(sched, CostModel(forward=spec["forward"] * scale,
                                          backward=spec["backward"] * scale))
    else:
        ideal = simulate_like(median, sched)
    formula = formula_bubble(schedule, P, M)
    return {"schedule": schedule, "P": P, "M": M,
            "step_s": statistics.median(t.step_time for t in tls),
            "steps_s": [t.step_time for t in tls], "ideal_s": ideal.step_time,
            "bubble": statistics.median(t.bubble_overall for t in tls),
            "bubble_formula": None if formula is None else float(formula),
            "held": median.peak_activations(), "held_bound": ideal.peak_activations(),
            "sent_bytes": sum(r.get("sent_bytes", 0) for r in median.meta.get("ranks", [])),
            "timeline": median.to_dict()}


def text_table(rows: list[dict], *, ideal: str) -> str:
    """The rows as a plain-text table, with a line saying what the ideal is."""
    head = (f"{'schedule':10} {'P':>2} {'M':>3} {'ideal ms':>9} {'step ms':>9} {'ratio':>6} "
            f"{'bubble formula/measured':>23} {'held s0 (bound)':>15} {'sent/step':>10}")
    out = [head, "-" * len(head)]
    for r in rows:
        formula = "n/a" if r["bubble_formula"] is None else f"{100 * r['bubble_formula']:.1f}%"
        ratio = f"{r['step_s'] / r['ideal_s']:.3f}" if r["ideal_s"] > 0 else "n/a"
        out.append(f"{r['schedule']:10} {r['P']:>2} {r['M']:>3} {1000 * r['ideal_s']:>9.1f} "
                   f"{1000 * r['step_s']:>9.1f} {ratio:>6} "
                   f"{formula + ' / ' + format(100 * r['bubble'], '.1f') + '%':>23} "
                   f"{str(r['held'][0]) + ' (' + str(r['held_bound'][0]) + ')':>15} "
                   f"{r['sent_bytes'] / 2**20:>6.2f} MiB")
    out.append(f"ideal: {ideal}, free links; ratio = step / ideal; held s0: micro-batches "
               f"held at once on stage 0, the schedule's own count in brackets")
    return "\n".join(out)
