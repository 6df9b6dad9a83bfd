"""Memory you can dial: activation bytes, RSS and step time of 1f1b, v-half,
v-min, zbv and zb-h2 at P = 4, and the optimizer state per rank with and
without sharding at dp 2.

    .venv/bin/python benchmarks/bench_memory.py [--steps 5] [--Ms 8,16] [--out FILE]

(default FILE: benchmarks/memory.md, with the numbers in benchmarks/memory.json)

Per (workload, M), one launch of four processes (gloo on loopback) builds
every schedule's pipeline and steps them in turns, so the machine's load
drifts over all alike; each schedule also runs alone in a launch of its own
for its processes' peak RSS. Two workloads:

- emulated: 16 elementwise layers (``conveyor.measure.emulated``) that sleep
  for a set time (forward 1.5 ms, I 1.5 ms, W 1.5 ms per layer and
  micro-batch), as a GPU kernel holds the device, not the host CPU; 8192
  float32 features, 8 rows per micro-batch (256 KiB per activation);
- real: 8 blocks of Linear(256, 1024), GELU, Linear(1024, 256) in float32,
  16 rows per micro-batch, every rank one thread.

Per schedule: two warm-up steps, ``--steps`` timed steps (the slowest rank's
wall time of ``Pipeline.step``, median over the steps), then one recorded
step whose activation counter gives each rank's peak bytes (what autograd
saved, the stage inputs and outputs, what I keeps for W, send and receive
buffers; ``ActivationMemory``). RSS, from the schedule's own launch: the
rank process's peak resident set (``ru_maxrss``) after three steps, and its
growth over them (from after the pipeline was built).

Optimizer state: dp 2 x pp 2 of the real workload with Adam, sharded
(``PipelineConfig(shard_optimizer=True)``) and not, in launches of their own:
the bytes of the optimizer's state tensors per rank and the RSS growth over
the steps.

The machine is shared: the load average before and after is recorded; step
times move with it, bytes do not.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from conveyor.runtime import Pipeline, PipelineConfig, launch  # noqa: E402

P = 4
SCHEDULES = ["1f1b", "v-half", "v-min", "zbv", "zb-h2"]
EMU = {"layers": 16, "width": 8192, "rows": 8, "ms": 1.5}
REAL = {"blocks": 8, "width": 256, "rows": 16}


def _model(kind: str, ms: float = EMU["ms"]) -> nn.Sequential:
    torch.manual_seed(0)
    if kind == "emulated":
        from conveyor.measure.emulated import EmulatedLayer, EmulatedTimes

        t = ms / 1e3
        times = EmulatedTimes(forward=t, backward=2 * t, input_grad=t, weight_grad=t)
        return nn.Sequential(*[EmulatedLayer(EMU["width"], times, split_backward=True)
                               for _ in range(EMU["layers"])])
    d = REAL["width"]
    layers: list[nn.Module] = []
    for _ in range(REAL["blocks"]):
        layers += [nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)]
    return nn.Sequential(*layers)


def _batch(kind: str, M: int):
    rows = (EMU if kind == "emulated" else REAL)["rows"] * M
    width = EMU["width"] if kind == "emulated" else REAL["width"]
    g = torch.Generator().manual_seed(1)
    return torch.randn(rows, width, generator=g), torch.randn(rows, width, generator=g)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _loss(y, t):
    return ((y - t) ** 2).mean()


def compare_job(ctx, kind: str, M: int, steps: int, ms: float) -> dict:
    """Every schedule's pipeline, stepped in turns (one step of each, ``steps``
    rounds after two warm-up rounds) so the machine's load drifts over all
    alike; then one recorded step each for the activation counter. Returns
    per schedule this rank's step walls and peak bytes."""
    torch.set_num_threads(1)
    pipes = {name: Pipeline(_model(kind, ms), loss_fn=_loss,
                            optimizer=lambda ps: torch.optim.SGD(ps, lr=1e-3), schedule=name,
                            microbatches=M, ctx=ctx, config=PipelineConfig(timeout_s=300.0))
             for name in SCHEDULES}
    x, y = _batch(kind, M)
    walls: dict = {name: [] for name in SCHEDULES}
    for k in range(2 + steps):
        for name, pipe in pipes.items():
            res = pipe.step(x, y)
            if k >= 2:
                walls[name].append(res.wall_s)
    peaks = {name: pipe.step(x, y, record=True).stats["peak_activation_bytes"]
             for name, pipe in pipes.items()}
    return {"rank": ctx.rank, "walls": walls, "peak_bytes": peaks}


def rss_job(ctx, kind: str, name: str, M: int, ms: float) -> dict:
    """One schedule alone in its processes: the peak RSS, and its growth over
    three steps from after the pipeline was built."""
    torch.set_num_threads(1)
    pipe = Pipeline(_model(kind, ms), loss_fn=_loss,
                    optimizer=lambda ps: torch.optim.SGD(ps, lr=1e-3), schedule=name,
                    microbatches=M, ctx=ctx, config=PipelineConfig(timeout_s=300.0))
    x, y = _batch(kind, M)
    rss0 = _rss_mib()
    for _ in range(3):
        pipe.step(x, y)
    return {"rank": ctx.rank, "rss_mib": _rss_mib(), "rss_growth_mib": _rss_mib() - rss0}


def _optim_pipe(ctx, shard: bool):
    return Pipeline(_model("real"), loss_fn=_loss,
                    optimizer=lambda ps: torch.optim.Adam(ps, lr=1e-3), schedule="1f1b",
                    microbatches=4, ctx=ctx, dp=2,
                    config=PipelineConfig(timeout_s=300.0, shard_optimizer=shard))


def optim_job(ctx, steps: int) -> dict:
    """dp 2 x pp 2, sharded and not, stepped in turns: each rank's optimizer
    state bytes and step walls per mode."""
    from conveyor.runtime.train.sharding import optimizer_state_bytes

    torch.set_num_threads(1)
    pipes = {shard: _optim_pipe(ctx, shard) for shard in (False, True)}
    x, y = _batch("real", 8)
    walls: dict = {False: [], True: []}
    for k in range(1 + steps):
        for shard, pipe in pipes.items():
            wall = pipe.step(x, y).wall_s
            if k:
                walls[shard].append(wall)
    pipes[True].shards.wait()
    return {"rank": ctx.rank,
            "state_bytes": {s: optimizer_state_bytes(p.optimizer) for s, p in pipes.items()},
            "param_bytes": sum(p.numel() * p.element_size() for p in pipes[False].params),
            "walls": walls}


def optim_rss_job(ctx, shard: bool) -> dict:
    """One mode alone in its processes: RSS growth over three steps."""
    torch.set_num_threads(1)
    pipe = _optim_pipe(ctx, shard)
    x, y = _batch("real", 8)
    rss0 = _rss_mib()
    for _ in range(3):
        pipe.step(x, y)
    return {"rank": ctx.rank, "rss_mib": _rss_mib(), "rss_growth_mib": _rss_mib() - rss0}


def _predicted_chunks(name: str, M: int) -> list[int]:
    from conveyor.schedule import build_schedule
    from conveyor.sim import simulate

    return simulate(build_schedule(name, P, M)).peak_activations()


def run(steps: int, Ms: list[int], kinds: list[str]) -> dict:
    out = {"load_before": os.getloadavg(), "P": P, "steps": steps, "emulated": dict(EMU),
           "real": REAL, "runs": [], "optimizer": []}
    for kind in [k for k in ("emulated", "real") if k in kinds]:
        for M in Ms:
            ranks = launch(compare_job, nprocs=P, args=(kind, M, steps, EMU["ms"]))
            for name in SCHEDULES:
                walls = [max(r["walls"][name][k] for r in ranks) for k in range(steps)]
                rss = launch(rss_job, nprocs=P, args=(kind, name, M, EMU["ms"]))
                row = {"kind": kind, "M": M, "schedule": name,
                       "step_s": statistics.median(walls),
                       "peak_bytes": [r["peak_bytes"][name] for r in ranks],
                       "rss_mib": [round(r["rss_mib"], 1) for r in rss],
                       "rss_growth_mib": [round(r["rss_growth_mib"], 1) for r in rss],
                       "chunk_peaks": _predicted_chunks(name, M)}
                out["runs"].append(row)
                print(kind, M, name, f"{row['step_s'] * 1e3:.1f} ms", row["peak_bytes"],
                      flush=True)
    if "optimizer" in kinds:
        ranks = launch(optim_job, nprocs=4, args=(max(steps, 3),))
        for shard in (False, True):
            rss = launch(optim_rss_job, nprocs=4, args=(shard,))
            rk = sorted(ranks, key=lambda r: r["rank"])
            out["optimizer"].append({
                "shard": shard, "state_bytes": [r["state_bytes"][shard] for r in rk],
                "param_bytes": [r["param_bytes"] for r in rk],
                "step_s": statistics.median(max(r["walls"][shard][k] for r in rk)
                                            for k in range(max(steps, 3))),
                "rss_growth_mib": [round(r["rss_growth_mib"], 1)
                                   for r in sorted(rss, key=lambda r: r["rank"])]})
            print("optimizer", shard, out["optimizer"][-1]["state_bytes"], flush=True)
    out["load_after"] = os.getloadavg()
    return out


# The paper's figures (Qi et al., NeurIPS 2024, Table 2, F = B = W): bubble
# rates ~P/M (1F1B), ~2P/3M (V-Min), ~P/2M (V-Half), so a step of
# (1 + rate) units of work: the relative step against 1F1B each is held to.
def paper_ratio(name: str, M: int) -> float | None:
    rate = {"v-min": 2 * P / (3 * M), "v-half": P / (2 * M)}.get(name)
    return None if rate is None else (1 + rate) / (1 + P / M)


TARGET = {"v-half": 0.55, "v-min": 0.40}  # of 1F1B's stage-0 activation peak


def report(data: dict) -> str:
    def kib(n):
        return f"{n / 1024:.0f}"

    lines = ["# Memory you can dial: V-Min, V-Half and a sharded optimizer", "",
             "`benchmarks/bench_memory.py` (one command: `.venv/bin/python "
             "benchmarks/bench_memory.py`). P = 4 ranks on this 2-core machine, gloo on "
             "loopback. The machine was shared with other jobs: load "
             f"average {data['load_before'][0]:.1f} / {data['load_before'][1]:.1f} / "
             f"{data['load_before'][2]:.1f} (1 / 5 / 15 min) before, "
             f"{data['load_after'][0]:.1f} / {data['load_after'][1]:.1f} / "
             f"{data['load_after'][2]:.1f} after; step times move with it, bytes do not.",
             "", "Workloads (see the script's docstring): *emulated*, 16 elementwise "
             f"layers that sleep {data['emulated']['ms']:g} ms per forward, I and W (256 KiB "
             "activations); *real*, "
             "8 MLP blocks (256 -> 1024 -> 256, float32, 16 rows per micro-batch).", "",
             "Peak activation bytes: the runtime's counter (`ActivationMemory`) on each "
             "rank, in KiB: autograd's saved tensors, stage inputs and outputs, what I keeps "
             "for W, send and receive buffers. *vs 1F1B r0*: the rank's most against "
             "1F1B's rank-0 (stage-0) peak. *chunks*: the order's most chunk-activations "
             "per rank (two make one micro-batch of a rank's layers). Step: median of "
             f"{data['steps']} steps of the slowest rank, after two warm-up steps, the "
             "schedules stepped in turns in one launch. RSS: the rank process's peak "
             "resident set (MiB; torch itself is most of it) and its growth over three "
             "steps, each schedule alone in its own launch.", ""]
    for kind in ("emulated", "real"):
        for M in sorted({r["M"] for r in data["runs"] if r["kind"] == kind}):
            rows = [r for r in data["runs"] if r["kind"] == kind and r["M"] == M]
            base = next(r for r in rows if r["schedule"] == "1f1b")
            lines += [f"## {kind}, M = {M}", "",
                      "| schedule | peak KiB per rank | max vs 1F1B r0 | chunks | step ms | "
                      "vs 1F1B | paper's | RSS MiB (growth) |",
                      "|---|---|---|---|---|---|---|---|"]
            for r in rows:
                ratio = max(r["peak_bytes"]) / base["peak_bytes"][0]
                paper = paper_ratio(r["schedule"], M)
                target = TARGET.get(r["schedule"])
                mark = "" if target is None else (f" (target <= {target}: "
                                                  f"{'met' if ratio <= target else 'missed'})")
                step_ratio = r["step_s"] / base["step_s"]
                pmark = "" if paper is None else (f"{paper:.2f} "
                                                  f"({'met' if step_ratio <= paper else 'missed'})")
                lines.append(
                    f"| {r['schedule']} | {' '.join(kib(b) for b in r['peak_bytes'])} | "
                    f"{ratio:.2f}{mark} | {' '.join(map(str, r['chunk_peaks']))} | "
                    f"{r['step_s'] * 1e3:.1f} | {step_ratio:.2f} | {pmark} | "
                    f"{max(r['rss_mib']):.0f} ({max(r['rss_growth_mib']):.1f}) |")
            lines.append("")
    if data["optimizer"]:
        lines += ["## Optimizer state per rank, dp 2 x pp 2 (real workload, Adam)", "",
                  "State bytes: the optimizer's state tensors on each rank (each storage "
                  "once), stepped in turns in one launch; step: the slowest rank's, median. "
                  "RSS growth over three steps, each mode alone in its own launch.", "",
                  "| sharded | state bytes per rank | parameter bytes per rank | "
                  "state / parameters | step ms | RSS growth MiB |",
                  "|---|---|---|---|---|---|"]
        for o in data["optimizer"]:
            share = " ".join(f"{a / b:.2f}" for a, b in zip(o["state_bytes"], o["param_bytes"]))
            lines.append(f"| {'yes' if o['shard'] else 'no'} | "
                         f"{' '.join(map(str, o['state_bytes']))} | "
                         f"{' '.join(map(str, o['param_bytes']))} | {share} | "
                         f"{o['step_s'] * 1e3:.0f} | "
                         f"{' '.join(f'{g:.1f}' for g in o['rss_growth_mib'])} |")
    return "\n".join(lines) + "\n"


NOTES = "<!-- notes: kept when the script rewrites the tables above -->"


def keep_notes(path: Path) -> str:
    """The hand-written notes at the end of an existing results file."""
    if not path.exists():
        return ""
    text = path.read_text()
    return text[text.index(NOTES):] if NOTES in text else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--Ms", default="8,16")
    ap.add_argument("--only", default="emulated,real,optimizer",
                    help="parts to run: emulated, real, optimizer (comma-separated)")
    ap.add_argument("--emu-ms", type=float, default=EMU["ms"],
                    help="emulated time per layer and pass, ms (1.5)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "memory.md"))
    ap.add_argument("--from-json", action="store_true",
                    help="rewrite the tables of --out from its .json, running nothing")
    args = ap.parse_args()
    out = Path(args.out)
    if args.from_json:
        data = json.loads(out.with_suffix(".json").read_text())
    else:
        EMU["ms"] = args.emu_ms
        data = run(args.steps, [int(m) for m in args.Ms.split(",")], args.only.split(","))
        out.with_suffix(".json").write_text(json.dumps(data, indent=1))
    text = report(data)
    notes = keep_notes(out)
    out.write_text(text + ("\n" + notes if notes else ""))
    print(text)


if __name__ == "__main__":
    main()
