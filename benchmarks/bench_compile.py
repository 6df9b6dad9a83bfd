"""Compiled vs eager stages on CPU at P = 2 (real compute): 1f1b and zbv.

    .venv/bin/python benchmarks/bench_compile.py [--steps 10] [--out benchmarks/compile.md]

(also writes the raw figures to the same name with .json)

Per schedule, one launch (2 ranks, one thread each, gloo) builds three
pipelines on identical copies of a stack of 8 transformer blocks (float32,
width 128, 4 heads, GELU, sequence 64, batch 16 in M = 4 micro-batches):

    eager     PipelineConfig() (compile off)
    conveyor  PipelineConfig(compile=True): inductor, every backward split
              into I and W (conveyor/runtime/execute/compilesplit.py)
    by hand   each stage wrapped in torch.compile by hand and given to
              Pipeline.from_stages: stock inductor, one backward node per
              graph (under zbv its I and W each run the whole backward)

Each pipeline's first step compiles; its wall time and the compile seconds
the ranks report (``StepResult.stats["compile_s"]``, conveyor only) are
recorded apart. Then the three run in turns, step by step (eager, conveyor,
by hand, eager, ...), so a noisy moment on the shared machine hits all
three alike; every step is recorded. Reported: medians over ``--steps``
steps of the step's wall time and of each rank's compute (the sum of its F,
B, I and W actions: CPU time of its thread, and wall time from the
measured timeline), and the speedups over eager.
Before the launches, one stage's backward alone (``stage_backward``):
what the split costs against torch's one-node compiled backward, and what
eager splitgrad costs against an eager B.
The load average before and after is stated: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from conveyor.runtime import Pipeline, PipelineConfig, launch
from conveyor.runtime.execute.stages import split_model
from conveyor.schedule import build_schedule

WIDTH, HEADS, SEQ, BATCH, M, BLOCKS = 128, 4, 64, 16, 4, 8
VARIANTS = ("eager", "conveyor", "by hand")


def model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.TransformerEncoderLayer(WIDTH, HEADS, 4 * WIDTH, dropout=0.0,
                                                      activation="gelu", batch_first=True)
                           for _ in range(BLOCKS)])


def mse(out, y):
    return ((out - y) ** 2).mean()


def batch(k: int):
    g = torch.Generator().manual_seed(k)
    return torch.randn(BATCH, SEQ, WIDTH, generator=g), torch.randn(BATCH, SEQ, WIDTH, generator=g)


def _build(ctx, variant: str, schedule: str) -> Pipeline:
    opt = lambda ps: torch.optim.SGD(ps, lr=1e-3)  # noqa: E731
    if variant == "by hand":
        S = build_schedule(schedule, ctx.world_size, M).S
        stages = [torch.compile(st) for st in split_model(model(), S)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the hand-compiled stage warning, expected
            return Pipeline.from_stages(stages, loss_fn=mse, optimizer=opt, schedule=schedule,
                                        microbatches=M, ctx=ctx,
                                        config=PipelineConfig(timeout_s=600))
    return Pipeline(model(), loss_fn=mse, optimizer=opt, schedule=schedule, microbatches=M,
                    ctx=ctx, config=PipelineConfig(compile=variant == "conveyor", timeout_s=600))


def _cpu_clock(pipe: Pipeline) -> list:
    """Count the CPU seconds of this rank's thread in F, B, I and W actions
    (through the interpreter's ``wrap_actions``): one thread per rank runs
    the forward, autograd's backward and inductor's kernels, and CPU time is
    steadier than wall time on a loaded machine. Returns the running total."""
    total = [0.0]

    def wrap(handler):
        def run(a):
            if a.kind not in "FBIW":
                return handler(a)
            t0 = time.thread_time()
            handler(a)
            total[0] += time.thread_time() - t0
        return run

    pipe.interp.wrap_actions(wrap)
    return total


def rank_job(ctx, schedule: str, steps: int) -> dict:
    torch.set_num_threads(1)
    pipes, first, cpu = {}, {}, {}
    for v in VARIANTS:
        pipes[v] = _build(ctx, v, schedule)
        cpu[v] = _cpu_clock(pipes[v])
        x, y = batch(0)
        t0 = time.perf_counter()
        res = pipes[v].step(x, y)
        first[v] = {"wall_s": time.perf_counter() - t0,
                    "compile_s": res.stats.get("compile_s"),
                    "graphs": res.stats.get("compiled_graphs")}
    rows = {v: {"step_s": [], "busy_s": [], "cpu_s": []} for v in VARIANTS}
    for k in range(1, steps + 1):
        for v in VARIANTS:
            x, y = batch(k)
            c0 = cpu[v][0]
            res = pipes[v].step(x, y, record=True)
            rows[v]["cpu_s"].append(cpu[v][0] - c0)
            if res.timeline is not None:  # rank 0 gathers every rank's timeline
                rows[v]["step_s"].append(res.timeline.step_time)
                rows[v]["busy_s"].append([res.timeline.busy(r) for r in range(ctx.world_size)])
    return {"first": first, "rows": rows, "rank": ctx.rank}


def stage_backward(repeats: int) -> dict:
    """One stage (4 of the blocks, one micro-batch), in this process, one
    thread: median CPU milliseconds of the backward alone, as a full B and
    as I then W, eager, compiled by torch (stock: one backward node) and by
    conveyor (split: dI and dW, B running both). The variants run in turns."""
    from conveyor.runtime.execute.compiled import compile_stages
    from conveyor.runtime.execute.splitgrad import backward_input

    torch.set_num_threads(1)
    blocks = model()[:BLOCKS // 2]
    x0 = torch.randn(BATCH // M, SEQ, WIDTH)
    g = torch.randn(BATCH // M, SEQ, WIDTH)
    stock = torch.compile(blocks)
    split = compile_stages({0: blocks}, {}, rank=0, split=True)[0]

    def run(fn, how):
        x = x0.clone().requires_grad_()
        y = fn(x)
        t0 = time.thread_time()
        if how == "B":
            y.backward(g)
        else:
            _, pending = backward_input([y], [g], [x], list(blocks.parameters()))
            pending.run()
        t = time.thread_time() - t0
        blocks.zero_grad(set_to_none=True)
        return t

    cases = {"eager B": (blocks, "B"), "eager I+W": (blocks, "IW"),
             "compiled, stock: B": (stock, "B"), "compiled, split: B": (split, "B"),
             "compiled, split: I+W": (split, "IW")}
    times: dict[str, list] = {k: [] for k in cases}
    for k in range(repeats + 2):
        for name, (fn, how) in cases.items():
            t = run(fn, how)
            if k >= 2:  # two warm-up rounds (the first compiles)
                times[name].append(t)
    return {name: 1e3 * statistics.median(ts) for name, ts in times.items()}


def _median(xs):
    return statistics.median(xs) if xs else float("nan")


def summarise(per_rank: list[dict]) -> dict:
    rows = per_rank[0]["rows"]
    out = {"first": {v: [r["first"][v] for r in per_rank] for v in VARIANTS}, "variants": {}}
    for v in VARIANTS:
        busy = rows[v]["busy_s"]
        out["variants"][v] = {
            "step_s": _median(rows[v]["step_s"]),
            "busy_s": [_median([b[r] for b in busy]) for r in range(len(busy[0]))],
            "cpu_s": [_median(r["rows"][v]["cpu_s"]) for r in per_rank],
            "steps": len(rows[v]["step_s"])}
    eager = out["variants"]["eager"]
    for v in VARIANTS:
        d = out["variants"][v]
        d["step_speedup"] = eager["step_s"] / d["step_s"]
        d["compute_speedup"] = [e / c for e, c in zip(eager["busy_s"], d["busy_s"])]
        d["cpu_speedup"] = [e / c for e, c in zip(eager["cpu_s"], d["cpu_s"])]
    return out


def table(results: dict, load: tuple) -> str:
    lines = [
        "# Compiled stages vs eager (CPU, P = 2)", "",
        "Produced by `benchmarks/bench_compile.py` (see its docstring for the method). "
        f"Machine: {os.cpu_count()} cores, shared with other jobs: load average "
        f"{load[0]:.1f} before, {load[1]:.1f} after (1-minute). torch {torch.__version__}, "
        f"one thread per rank, gloo. Model: {BLOCKS} transformer blocks, width {WIDTH}, "
        f"{HEADS} heads, GELU, sequence {SEQ}, float32; batch {BATCH} in M = {M} "
        f"micro-batches. Medians over {results['steps']} steps per variant, run in turns.", "",
        "| schedule | variant | step (ms) | step speedup | compute CPU r0 / r1 (ms) | "
        "compute CPU speedup r0 / r1 | compute wall r0 / r1 (ms) | compute wall speedup "
        "r0 / r1 | first step (s) | compile r0 / r1 (s) |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for sched, res in results["schedules"].items():
        for v in VARIANTS:
            d, f = res["variants"][v], res["first"][v]
            comp = " / ".join(f"{1e3 * b:.0f}" for b in d["busy_s"])
            sp = " / ".join(f"{s:.2f}" for s in d["compute_speedup"])
            ccomp = " / ".join(f"{1e3 * b:.0f}" for b in d["cpu_s"])
            csp = " / ".join(f"{s:.2f}" for s in d["cpu_speedup"])
            cs = " / ".join("-" if r["compile_s"] is None else f"{r['compile_s']:.1f}" for r in f)
            lines.append(f"| {sched} | {v} | {1e3 * d['step_s']:.0f} | {d['step_speedup']:.2f} "
                         f"| {ccomp} | {csp} | {comp} | {sp} | "
                         f"{max(r['wall_s'] for r in f):.1f} | {cs} |")
    sb = results.get("stage_backward")
    if sb:
        lines += ["", f"One stage ({BLOCKS // 2} blocks, one micro-batch of {BATCH // M}), "
                  "in one process: median CPU time of the backward alone over "
                  f"{results['repeats']} runs in turns.", "",
                  "| backward | CPU (ms) | / eager B |", "|---|---|---|"]
        for name, ms in sb.items():
            lines.append(f"| {name} | {ms:.1f} | {ms / sb['eager B']:.2f} |")
    lines += ["", "compute CPU: the CPU seconds of the rank's thread inside its F, B, I "
              "and W actions (one thread per rank does all of their work; steadier than "
              "wall time on a loaded machine); compute wall: the sum of those actions' "
              "spans in the measured timeline (the rank's busy time); step: the recorded "
              "step's span. first step: the "
              "slower rank's wall time of the step that compiled (eager: the first step's "
              "own start-up). compile: seconds the rank spent in dynamo and inductor "
              "(conveyor's stats; the hand-compiled stages report none).", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--schedules", default="1f1b,zbv")
    ap.add_argument("--repeats", type=int, default=30, help="runs of the one-stage backward")
    ap.add_argument("--out", default=str(Path(__file__).with_name("compile.md")))
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    results = {"steps": args.steps, "repeats": args.repeats, "schedules": {}}
    results["stage_backward"] = stage_backward(args.repeats)
    for sched in args.schedules.split(","):
        per_rank = launch(rank_job, nprocs=2, args=(sched, args.steps))
        results["schedules"][sched] = summarise(per_rank)
    load = (load0, os.getloadavg()[0])
    results["load_average"] = list(load)
    text = table(results, load)
    Path(args.out).write_text(text)
    Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1))
    print(text)


if __name__ == "__main__":
    main()
