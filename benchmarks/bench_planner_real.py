"""The planner's prediction on real compute, P = 2, a core per rank (issue #10).

    python benchmarks/bench_planner_real.py            # profile, plan, run every schedule (~2 min)
    python benchmarks/bench_planner_real.py --steps 9  # more recorded steps per schedule
    python benchmarks/bench_planner_real.py --transport dist   # transfers over gloo
    conveyor profile --model conveyor.models.examples:real_mlp_with_loss --links   # by hand

The model: real float32 layers of unequal cost (``real_mlp``): an embedding
of token ids (64 ids of 16 dims each per sample, 8192-row table: heavy in
parameters, light in time), an MLP of narrow (256) and wide (1024) blocks,
and a head 4x wider than a narrow block (256 -> 1024 -> 256 outputs). A batch
of 512: on a CPU each backward writes whole weight gradients whatever the
micro-batch, a fixed cost worth tens of samples, so micro-batches must be
large for a pipeline to pay. Loss: mean squared error against fixed random
targets (the profile times it too, on the last stage); Adam.

Steps: profile the model here on one thread (median of repeats after
warm-up, each layer timed in context: ``conveyor.measure.profile``; beside
one other process running the model on the other core, ``alongside=1``,
with the heap kept as the ranks keep it) and measure the links and the
runtime's per-action overhead over the run's transport
(``conveyor.measure.profile.measure_links``, one launch of 2 ranks); for
every schedule that places on P = 2, the planner's best plan of that
schedule alone (``search(..., schedules=[name])``, no memory limit); then
all of them in one launch of 2 processes, each pinned to its own core
(``LaunchOptions(pin=True)``: every thread of the process) with one torch
thread, transfers over shared memory (``--transport shm``, the default) or
gloo (``--transport dist``), steps in turns; the figure per schedule is the
median of the recorded step times on rank 0's measured timeline (the
optimizer step is outside it, as in the simulator).

Also printed, as diagnostics: the prediction with the runtime's overhead
fitted again inside the run's launch; each rank's core share (its CPU time
over its compute actions' wall time: below 1, it waited for its core); and
the plan re-simulated with each rank's compute divided by that share (after
the fact, not a prediction). Each run is appended to ``real_p2_runs`` in
``--out`` (benchmarks/planner.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

# The model lives in the package (conveyor.models.examples), so that the
# docs' profile commands work after pip install.
from conveyor.models.examples import (  # noqa: E402
    REAL_BATCH as BATCH, mse as _loss, real_mlp, real_mlp_with_loss,
    real_targets as _targets,
)

P = 2
SAMPLE = 256            # the profile's batch: sizes 256, 128, 64 (the plans use 64-256)
__all__ = ["real_mlp", "real_mlp_with_loss"]


def _run_rank(ctx, configs, steps, warmup, transport):
    """Every config's pipeline, steps in turns; rank 0 returns step times."""
    import torch

    from conveyor.runtime import Pipeline, PipelineConfig
    from conveyor.measure.profile import tiny_steps

    pinned = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    torch.set_num_threads(1)
    tiny = tiny_steps(ctx, transport)  # the runtime's own work again, pinned, in this launch
    pipes = []
    for cfg in configs:
        model, x = real_mlp()
        pipes.append(Pipeline(model, loss_fn=_loss, ctx=ctx, plan=cfg["plan"],
                              config=PipelineConfig(transport=transport),
                              optimizer=lambda ps: torch.optim.Adam(ps, 1e-3)))
    y = _targets()
    times = [[] for _ in configs]
    costs = [None] * len(configs)
    busy = [0.0] * P          # rank 0: each rank's compute wall time, recorded steps
    cpu = 0.0                 # this rank's main-thread CPU time in recorded steps
    for k in range(warmup + steps):
        for c, pipe in enumerate(pipes):
            c0 = time.thread_time()
            res = pipe.step(x, y, record=k >= warmup)
            if k >= warmup:
                cpu += time.thread_time() - c0
            if res.timeline is not None:
                times[c].append(res.timeline.step_time)
                costs[c] = res.timeline.stage_costs()  # the last recorded step's
                busy = [b + res.timeline.busy(r) for r, b in enumerate(busy)]
    return {"rank": ctx.rank, "pinned": pinned, "times": times, "stage_costs": costs,
            "busy": busy, "cpu": cpu, "tiny": tiny}


def comparison(steps: int, warmup: int, repeats: int, transport: str = "shm") -> dict:
    import torch

    from conveyor.errors import PlanError
    from conveyor.plan import Profile, plan_to_dict, search, stage_costs
    from conveyor.runtime import LaunchOptions, launch
    from conveyor.runtime.procs.heap import keep_freed_memory
    from conveyor.measure.profile import fit_tiny, measure_links, profile
    from conveyor.schedule import schedule_names
    from conveyor.sim import simulate

    torch.set_num_threads(1)
    keep_freed_memory()  # as the ranks do (LaunchOptions.keep_heap)
    t0 = time.perf_counter()
    links = measure_links(transport=transport)
    model, x = real_mlp()
    prof = profile(model, x[:SAMPLE], repeats=repeats, warmup=2, links=links, name="real_mlp",
                   alongside=P - 1, loss_fn=_loss, targets=_targets()[:SAMPLE])
    t_prof = time.perf_counter() - t0
    configs, predicted, bests = [], {}, {}
    for name in schedule_names():
        if name == "naive":
            continue
        try:
            best = search(prof, P=P, batch_size=BATCH, schedules=[name]).best
        except PlanError as e:
            print(f"{name}: no plan at P={P} ({e})")
            continue
        configs.append({"name": name, "plan": plan_to_dict(best, prof, batch_size=BATCH, budget=None)})
        bests[name] = best
        predicted[name] = {"schedule": name, "M": best.M, "v": best.v, "balance": best.balance,
                           "checkpoint": best.checkpoint, "step": best.step,
                           "bubble": best.bubble}
    load_before = os.getloadavg()
    rows = launch(_run_rank, nprocs=P, args=(configs, steps, warmup, transport),
                  options=LaunchOptions(pin=True, threads=1))
    r0 = next(r for r in rows if r["rank"] == 0)
    # How much of its core each rank had: its CPU time over its compute actions'
    # wall time (1: its own core; about 0.5: it shared one with another process;
    # above 1 where the runtime's own work outside the actions counts too).
    share = [r["cpu"] / r0["busy"][r["rank"]] for r in sorted(rows, key=lambda r: r["rank"])]
    measured = {cfg["name"]: {"median_step": statistics.median(r0["times"][c]),
                              "steps": r0["times"][c],
                              "stage_costs_last_step": r0["stage_costs"][c],
                              "predicted_stage_costs": {k: cfg["plan"]["costs"][k] for k in
                                                        ("sizes", "F", "B", "I", "W")}}
                for c, cfg in enumerate(configs)}
    # the same plans, predicted with the runtime's work fitted in the run's launch
    o2, lat2 = fit_tiny(r0["tiny"], P, prof.bandwidth, prof.host_transfers)
    again = Profile(**{**vars(prof), "overhead": o2, "links": dict(prof.links, latency=lat2)})
    for name, best in bests.items():
        sc = stage_costs(again, best.balance, best.sizes, best.checkpoint, best.placement)
        predicted[name]["step_in_run"] = simulate(
            best.schedule, sc.cost_model(again.latency, again.bandwidth), check=False,
            unit="s").step_time
        # Not a prediction: the plan's own costs with each rank's compute
        # stretched by the core share it was measured to get (how much of the
        # gap the shared cores explain).
        sc = stage_costs(_stretched(prof, best, share), best.balance, best.sizes, best.checkpoint,
                         best.placement)
        predicted[name]["step_core_share"] = simulate(
            best.schedule, sc.cost_model(prof.latency, prof.bandwidth), check=False,
            unit="s").step_time
    return {"machine": _machine(load_before), "transport": transport, "in_run": {"overhead_s": o2, "latency_s": lat2,
                                                        "tiny_steps": r0["tiny"]}, "profile_s": t_prof, "links": links,
            "overhead_s": prof.overhead, "pinned": [r["pinned"] for r in rows],
            "core_share": share,
            "predicted": predicted, "measured": measured, "steps": steps, "warmup": warmup,
            "profile_repeats": repeats, "profile": prof.to_dict()}


def _stretched(prof, best, share):
    """``prof`` with every layer's times divided by the core share of the rank
    its stage runs on in ``best`` (the runtime's overhead left as it is)."""
    from dataclasses import replace

    from conveyor.partition import stage_ranges
    from conveyor.plan import Affine

    layers = list(prof.layers)
    for s, r in enumerate(stage_ranges(best.balance)):
        k = 1 / min(share[best.placement[s]], 1.0)
        for j in r:
            lay = layers[j]
            layers[j] = replace(lay, **{f: Affine(getattr(lay, f).fixed * k,
                                                  getattr(lay, f).per_sample * k)
                                        for f in ("forward", "backward", "input_grad",
                                                  "weight_grad")})
    return replace(prof, layers=layers)


def _machine(load_before) -> dict:
    import platform

    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "load_avg_1_5_15_before_run": load_before, "load_avg_1_5_15_after": os.getloadavg(),
            "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=7, help="recorded steps per schedule (7)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7, help="profile: timed calls per layer")
    ap.add_argument("--transport", choices=("shm", "dist"), default="shm",
                    help="what transfers go over, in the links' measurement and the run: "
                         "shm (shared memory) or dist (gloo) (shm)")
    ap.add_argument("--out", default=str(HERE / "planner.json"))
    args = ap.parse_args()
    res = comparison(args.steps, args.warmup, args.repeats, args.transport)
    m, p = res["measured"], res["predicted"]
    run = res["in_run"]
    print(f"transport: {res['transport']}; profile: latency {res['links']['latency'] * 1e6:.0f} us per transfer, overhead "
          f"{res['overhead_s'] * 1e6:.0f} us per action; in the run's launch: "
          f"{run['latency_s'] * 1e6:.0f} us, {run['overhead_s'] * 1e6:.0f} us; ranks pinned to "
          f"cores {res['pinned']}")
    for name in m:
        t, fast = m[name]["median_step"], min(m[name]["steps"])
        print(f"{name:16s} M={p[name]['M']:<3d} balance {p[name]['balance']}: predicted "
              f"{p[name]['step'] * 1e3:7.2f} ms, measured {t * 1e3:7.2f} ms "
              f"({t / p[name]['step'] - 1:+.1%}), fastest {fast * 1e3:7.2f} ms "
              f"({fast / p[name]['step'] - 1:+.1%}); with the run's overhead "
              f"{p[name]['step_in_run'] * 1e3:7.2f} ms ({t / p[name]['step_in_run'] - 1:+.1%}); "
              f"stretched by the core share {p[name]['step_core_share'] * 1e3:7.2f} ms "
              f"({t / p[name]['step_core_share'] - 1:+.1%})")
    print("core share (a rank's CPU time / its compute actions' wall time): "
          + ", ".join(f"rank {r} {x:.2f}" for r, x in enumerate(res["core_share"])))
    print(f"load average before / after: {res['machine']['load_avg_1_5_15_before_run']} / "
          f"{res['machine']['load_avg_1_5_15_after']}")
    old = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
    old.setdefault("real_p2_runs", []).append(res)  # every run, the latest last
    Path(args.out).write_text(json.dumps(old, indent=1))
    print(f"results in {args.out}")


if __name__ == "__main__":
    main()
