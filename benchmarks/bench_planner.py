"""The planner on a model with deliberately unequal layers (issue #10).

    python benchmarks/bench_planner.py               # measured comparison, P = 4 (~2 min)
    python benchmarks/bench_planner.py --speed       # planner search time, P <= 64, L <= 1024
    python benchmarks/bench_planner.py --split --every   # I/W layers; every schedule's best plan
    conveyor profile --model conveyor.models.examples:unbalanced      # the model, by hand

The model: an embedding-heavy first layer (8 units), 8 narrow blocks (1 unit),
4 wide blocks (2 units) and a head 3x a narrow block (3 units), 14 layers.
Every layer is an emulated device layer (``conveyor.measure.emulated``): it
sleeps, holding no core, for units x (FIXED + PER_SAMPLE x n) seconds forward
and twice that backward, n the micro-batch's samples, as a GPU kernel's time
grows with its batch.

Steps: profile the model (median of repeats, after warm-up) and the links
(gloo ping-pong); plan for P = 4, a batch of 64 and a memory budget equal to
what the seed's configuration needs (equal layer counts, 1F1B, M = 8); find
the best configuration a torch.distributed.pipelining user could hand-pick
with an equal-count split (torch's schedules, as conveyor's orders of the same
names, over the same M values, simulated on the same profile); then run the
seed's, the planner's and the hand-pick's configurations on 4 real processes
and time their steps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

# The model lives in the package (conveyor.models.examples), so that the
# planner's walk-through works after pip install; its constants are these.
from conveyor.models.examples import (  # noqa: E402
    BATCH, FIXED, PER_SAMPLE, UNITS, WIDTH, mse as _loss, unbalanced, unbalanced_split,
)

P, SEED_M = 4, 8
# torch.distributed.pipelining's schedules, by the names of conveyor's same orders
TORCH_SCHEDULES = {"gpipe": "ScheduleGPipe", "1f1b": "Schedule1F1B",
                   "interleaved-1f1b": "ScheduleInterleaved1F1B",
                   "looped-bfs": "ScheduleLoopedBFS", "zb-h1": "ScheduleInterleavedZeroBubble",
                   "zbv": "ScheduleZBVZeroBubble", "dualpipev": "ScheduleDualPipeV"}
__all__ = ["unbalanced", "unbalanced_split", "UNITS", "FIXED", "PER_SAMPLE", "WIDTH", "BATCH"]


def _run_rank(ctx, configs, steps, warmup, split):
    """Builds every config's pipeline, then runs their steps in turns (a noisy
    moment on the machine hits all alike): ``warmup`` steps, then ``steps``
    recorded ones each. Rank 0 returns the measured step times; every rank its
    peak activation bytes."""
    import torch

    from conveyor.runtime import Pipeline, PipelineConfig
    torch.set_num_threads(1)
    pipes = []
    for cfg in configs:
        model, x = unbalanced(split=split)
        pipes.append(Pipeline(model, loss_fn=_loss,
                              optimizer=lambda ps: torch.optim.Adam(ps, 1e-3), ctx=ctx,
                              config=PipelineConfig(track_memory=True), **cfg["kw"]))
    y = torch.randn_like(x)
    times = [[] for _ in configs]
    peaks = [0] * len(configs)
    for k in range(warmup + steps):
        for c, pipe in enumerate(pipes):
            res = pipe.step(x, y, record=k >= warmup)
            peaks[c] = max(peaks[c], res.stats.get("peak_activation_bytes", 0))
            if res.timeline is not None:
                times[c].append(res.timeline.step_time)
    return [{"name": cfg["name"], "rank": ctx.rank, "times": times[c], "peak": peaks[c]}
            for c, cfg in enumerate(configs)]


def _predict(prof, name, M, balance, ckpt=None):
    from conveyor.plan import rank_memory, stage_costs
    from conveyor.plan.search import microbatch_sizes
    from conveyor.schedule import build_schedule
    from conveyor.sim import simulate

    sched = build_schedule(name, P, M)
    sc = stage_costs(prof, balance, microbatch_sizes(BATCH, M), ckpt or [False] * sched.S,
                     sched.placement)
    tl = simulate(sched, sc.cost_model(prof.latency, prof.bandwidth), check=False, unit="s")
    return {"schedule": name, "M": M, "balance": list(balance), "step": tl.step_time,
            "bubble": tl.bubble_overall, "peak_bytes": rank_memory(sched, sc)}


def _every(prof, budget) -> tuple[list, dict]:
    """Per registered schedule (naive aside), the planner's best plan of that
    schedule alone under the budget: (configs, predictions)."""
    from conveyor.errors import PlanError
    from conveyor.plan import plan_to_dict, search
    from conveyor.schedule import schedule_names

    configs, predicted = [], {}
    for name in schedule_names():
        if name == "naive":
            continue
        try:
            best = search(prof, P=P, batch_size=BATCH, memory=budget, schedules=[name]).best
        except PlanError as e:
            print(f"every: {name} has no plan within the budget ({e})")
            continue
        key = f"every:{name}"
        configs.append({"name": key, "kw": {"plan": plan_to_dict(best, prof, batch_size=BATCH,
                                                                  budget=budget)}})
        predicted[key] = {"schedule": name, "M": best.M, "v": best.v, "balance": best.balance,
                          "checkpoint": best.checkpoint, "step": best.step,
                          "bubble": best.bubble, "peak_bytes": best.peak_bytes}
    return configs, predicted


def comparison(steps: int, warmup: int, repeats: int, split: bool, every: bool = False) -> dict:
    import torch

    from conveyor.partition import uniform_balance
    from conveyor.plan import plan_to_dict, search
    from conveyor.plan.search import default_microbatches
    from conveyor.runtime import launch
    from conveyor.measure.profile import measure_links, profile
    from conveyor.schedule import schedule_names

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    links = measure_links()
    model, x = unbalanced(split=split)
    prof = profile(model, x[:16], repeats=repeats, warmup=2, links=links, name="unbalanced")
    t_prof = time.perf_counter() - t0
    seed = _predict(prof, "1f1b", SEED_M, uniform_balance(prof.L, P))
    budget = max(seed["peak_bytes"])
    t0 = time.perf_counter()
    result = search(prof, P=P, batch_size=BATCH, memory=budget)
    t_plan = time.perf_counter() - t0
    best = result.best
    plan = plan_to_dict(best, prof, batch_size=BATCH, budget=budget)
    picks = []
    for name in [n for n in TORCH_SCHEDULES if n in schedule_names()]:
        for M in default_microbatches(P, BATCH):
            try:
                from conveyor.schedule import build_schedule
                S = build_schedule(name, P, M).S
                got = _predict(prof, name, M, uniform_balance(prof.L, S))
            except Exception:
                continue
            if max(got["peak_bytes"]) <= budget:
                picks.append(got)
    pick = min(picks, key=lambda c: c["step"])
    configs = [
        {"name": "seed", "kw": {"schedule": "1f1b", "microbatches": SEED_M}},
        {"name": "planner", "kw": {"plan": plan}},
        {"name": "torch-pick", "kw": {"schedule": pick["schedule"], "microbatches": pick["M"]}},
    ]
    extra, extra_pred = _every(prof, budget) if every else ([], {})
    configs += extra
    rows = launch(_run_rank, nprocs=P, args=(configs, steps, warmup, split))
    measured = {}
    for cfg in configs:
        mine = [r for rank_rows in rows for r in rank_rows if r["name"] == cfg["name"]]
        times = next(r["times"] for r in mine if r["rank"] == 0)
        measured[cfg["name"]] = {"median_step": statistics.median(times), "steps": times,
                                 "peak_activation_bytes": [r["peak"] for r in
                                                           sorted(mine, key=lambda r: r["rank"])]}
    predicted = {"seed": seed, "torch-pick": pick,
                 "planner": {"schedule": best.name, "M": best.M, "v": best.v,
                             "balance": best.balance, "checkpoint": best.checkpoint,
                             "step": best.step, "bubble": best.bubble,
                             "peak_bytes": best.peak_bytes}, **extra_pred}
    return {"machine": _machine(), "profile_s": t_prof, "plan_s": t_plan,
            "candidates": len(result.candidates), "budget_bytes": budget, "links": links,
            "predicted": predicted, "measured": measured, "steps": steps, "warmup": warmup,
            "profile_repeats": repeats, "split_backward": split, "profile": prof.to_dict()}


def _machine() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "load_avg_1_5_15": load, "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def speed(cases) -> list[dict]:
    """Planner search time on synthetic profiles (every registered schedule,
    the default M set, chunks 1 and 2, refinement on)."""
    from conveyor.plan import Affine, LayerProfile, Profile, search

    out = []
    for P_, L in cases:
        layers = [LayerProfile(str(j), "Block", Affine(1e-4, 1e-5 * (1 + j % 3)),
                               Affine(2e-4, 2e-5 * (1 + j % 3)), Affine(1e-4, 1e-5),
                               Affine(1e-4, 1e-5 * (1 + 2 * (j % 3))), 1024, 1024, False,
                               4096, 8192) for j in range(L)]
        prof = Profile({"name": "synthetic", "layers": L, "fingerprint": "s"}, layers, 1024)
        t = time.perf_counter()
        res = search(prof, P=P_, batch_size=max(256, 4 * P_))
        out.append({"P": P_, "L": L, "seconds": time.perf_counter() - t,
                    "candidates": len(res.candidates),
                    "simulated": sum(1 for c in res.candidates if c.bubble == c.bubble),
                    "best": f"{res.best.name} "
                    f"M={res.best.M} v={res.best.v}"})
        print(f"P={P_:3d} L={L:5d}: {out[-1]['seconds']:.2f} s, {out[-1]['candidates']} plans considered, "
              f"{out[-1]['simulated']} simulated, best {out[-1]['best']}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speed", action="store_true", help="time the planner's search only")
    ap.add_argument("--steps", type=int, default=7, help="recorded steps per config (7)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7, help="profile: timed calls per layer")
    ap.add_argument("--split", action="store_true",
                    help="layers with separate I and W backward (zero-bubble schedules gain)")
    ap.add_argument("--every", action="store_true",
                    help="also run the planner's best plan of every registered schedule "
                         "(predicted vs measured per schedule)")
    ap.add_argument("--out", default=str(HERE / "planner.json"))
    args = ap.parse_args()
    if args.speed:
        res = {"machine": _machine(), "speed": speed([(4, 16), (8, 64), (16, 256), (32, 512),
                                                      (64, 1024)])}
    else:
        res = comparison(args.steps, args.warmup, args.repeats, args.split, args.every)
        m, p = res["measured"], res["predicted"]
        for name in m:
            err = m[name]["median_step"] / p[name]["step"] - 1
            print(f"{name:16s} {p[name]['schedule']:>16s} M={p[name]['M']:<3d} balance "
                  f"{p[name]['balance']}: predicted {p[name]['step'] * 1e3:7.1f} ms, measured "
                  f"{m[name]['median_step'] * 1e3:7.1f} ms ({err:+.1%})")
        print(f"planner vs seed: {m['seed']['median_step'] / m['planner']['median_step']:.2f}x "
              f"measured; vs torch-pick: "
              f"{m['torch-pick']['median_step'] / m['planner']['median_step']:.2f}x")
    old = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
    key = "comparison" + ("_split" if args.split else "") + ("_every" if args.every else "")
    old.update(res if args.speed else {key: res})
    Path(args.out).write_text(json.dumps(old, indent=1))
    print(f"results in {args.out}")


if __name__ == "__main__":
    main()
