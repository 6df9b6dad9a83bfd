"""Tokens per second of ``Pipeline.generate`` against the number of lanes.

    .venv/bin/python benchmarks/bench_generate.py [--repeats 3] [--tokens 32]
        [--per-token-ms 10] [--out benchmarks/generate.json] [--quick]

Emulated device (``conveyor.measure.emulated_decode``): 8 layers, each
taking ``--per-token-ms`` per token of a forward (a prefill of 4 tokens
takes 4 times that; the batch does not matter, as on an accelerator whose
decode step is bound by memory reads), sleeping rather than computing, so
that 4 ranks fit on a 2-core machine. P = 4 ranks (2 layers each) decode M
lanes of one sequence each, M in 1, 2, 4, 8; the baseline is one process
holding all 8 layers (P = 1, the same generate), decoding one lane at a
time. The target: with M >= P lanes, within 10 % of P x the one-process
tokens per second.

Real compute (CPU, float32, one thread per rank): the built-in GPT (8
blocks, width 256, 4 heads, vocabulary 256), P = 2 against one process,
lanes 1, 2, 4 of one sequence each.

Each configuration is launched once (conveyor's launcher, gloo on
loopback), warmed up with one short call, then timed ``--repeats`` times;
one more call at P = 4, M = 8 is recorded (its measured timeline) to say
where each rank's time went: forwards (and how much longer than the
device time they took), waits in receives, sends, and Python between
actions.
the table gives the median tokens per second (new tokens of every
sequence / wall time of the call on rank 0), and the JSON every run. The
machine is shared: the load average before and after is recorded.
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

import torch

from conveyor.runtime import Pipeline, launch

HERE = Path(__file__).resolve().parent
PROMPT = [1, 2, 3, 4]


def _loss(out, target):
    return torch.nn.functional.mse_loss(out, target)


def emulated_job(ctx, M: int, tokens: int, per_token_s: float, repeats: int) -> dict:
    from conveyor.measure.emulated_decode import emulated_decoder

    torch.set_num_threads(1)
    stages = emulated_decoder(ctx.world_size, layers=8, width=64, vocab=32,
                              per_token=per_token_s)
    pipe = Pipeline.from_stages(stages, loss_fn=_loss, optimizer=None, ctx=ctx)
    return _time(pipe, [PROMPT] * M, M, tokens, repeats)


def breakdown_job(ctx, M: int, tokens: int, per_token_s: float) -> dict | None:
    """One recorded call at P ranks, M lanes: where each rank's time went."""
    from conveyor.measure.emulated_decode import emulated_decoder

    torch.set_num_threads(1)
    stages = emulated_decoder(ctx.world_size, layers=8, width=64, vocab=32,
                              per_token=per_token_s)
    pipe = Pipeline.from_stages(stages, loss_fn=_loss, optimizer=None, ctx=ctx)
    pipe.generate([PROMPT] * M, 4, lanes=M)
    g = pipe.generate([PROMPT] * M, tokens, lanes=M, record=True)
    if g.timeline is None:
        return None
    tl, S, layers = g.timeline, ctx.world_size, 8 // ctx.world_size
    out = {"wall_s": g.stats["wall_s"], "tokens_per_s": g.stats["tokens_per_s"], "ranks": []}
    for r in range(tl.P):
        ev = sorted((e for e in tl.events if e.rank == r), key=lambda e: e.start)
        row = {"forward_s": 0.0, "forward_over_device_s": 0.0, "recv_wait_s": 0.0,
               "send_s": 0.0, "between_actions_s": 0.0}
        for e in ev:
            d = e.end - e.start
            if e.action.kind == "F":
                row["forward_s"] += d
                fed = len(PROMPT) if e.action.stage < S else 1  # round 0: the prefill
                row["forward_over_device_s"] += d - layers * per_token_s * fed
            elif e.action.kind == "RECV_F":
                row["recv_wait_s"] += d
            else:
                row["send_s"] += d
        row["between_actions_s"] = sum(b.start - a.end for a, b in zip(ev, ev[1:]))
        out["ranks"].append({k: round(v, 4) for k, v in row.items()})
    return out


def gpt_job(ctx, M: int, tokens: int, repeats: int) -> dict:
    from conveyor.models.gpt import GPT, GPTConfig
    from conveyor.runtime.execute.split import split_by_names

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab=256, context=128, layers=8, heads=4, width=256))
    stages = (split_by_names(model, split_points=["blocks.4"]) if ctx.world_size == 2 else
              split_by_names(model, stages=[_all_pieces(model)]))
    pipe = Pipeline.from_stages(stages, loss_fn=_loss, optimizer=None, ctx=ctx)
    return _time(pipe, [list(range(1, 9))] * M, M, tokens, repeats)


def _all_pieces(model) -> list[str]:
    from conveyor.runtime.execute.split import chain_pieces
    return [n for n, _ in chain_pieces(model)]


def _time(pipe, prompts, M: int, tokens: int, repeats: int) -> dict:
    pipe.generate(prompts, 4, lanes=M)  # warm-up: handshakes, first calls
    runs = []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        g = pipe.generate(prompts, tokens, lanes=M)
        wall = time.perf_counter() - t0
        runs.append({"wall_s": wall, "cpu_s": time.process_time() - c0,
                     "tokens": g.stats["tokens"],
                     "tokens_per_s": g.stats["tokens"] / wall,
                     "kv_cache_bytes": g.stats["kv_cache_bytes"],
                     "kv_cache_predicted": g.stats["kv_cache_predicted"]})
    return {"runs": runs}


def _row(kind: str, P: int, M: int, per_rank: list[dict]) -> dict:
    runs = per_rank[0]["runs"]
    tps = [r["tokens_per_s"] for r in runs]
    # CPU seconds of every rank per token generated, median over the repeats.
    cpu = [sum(rr["runs"][i]["cpu_s"] for rr in per_rank) / runs[i]["tokens"]
           for i in range(len(runs))]
    return {"kind": kind, "P": P, "M": M, "median_tokens_per_s": statistics.median(tps),
            "min_tokens_per_s": min(tps), "max_tokens_per_s": max(tps),
            "median_cpu_ms_per_token": 1000 * statistics.median(cpu), "runs": runs, "kv_cache_bytes": [r["runs"][0]["kv_cache_bytes"] for r in per_rank],
            "kv_cache_predicted": [r["runs"][0]["kv_cache_predicted"] for r in per_rank]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--per-token-ms", type=float, default=10.0)
    ap.add_argument("--out", default=str(HERE / "generate.json"))
    ap.add_argument("--quick", action="store_true", help="1 repeat, 16 tokens")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.tokens = 1, 16
    load0 = os.getloadavg()
    t_start = time.time()
    rows = []
    per_token = args.per_token_ms / 1000
    for P, lanes in ((1, [1]), (4, [1, 2, 4, 8])):
        for M in lanes:
            got = launch(emulated_job, nprocs=P, args=(M, args.tokens, per_token, args.repeats))
            rows.append(_row("emulated", P, M, got))
            print(f"emulated P={P} M={M}: {rows[-1]['median_tokens_per_s']:.1f} tokens/s",
                  flush=True)
    got = launch(breakdown_job, nprocs=4, args=(8, args.tokens, per_token))
    breakdown = got[0]
    for P, lanes in ((1, [1]), (2, [1, 2, 4])):
        for M in lanes:
            got = launch(gpt_job, nprocs=P, args=(M, args.tokens, args.repeats))
            rows.append(_row("gpt-cpu", P, M, got))
            print(f"gpt-cpu P={P} M={M}: {rows[-1]['median_tokens_per_s']:.1f} tokens/s",
                  flush=True)
    out = {"config": {"repeats": args.repeats, "tokens": args.tokens,
                      "per_token_ms": args.per_token_ms, "emulated_layers": 8,
                      "prompt_tokens": len(PROMPT), "gpt": "8 blocks, width 256, 4 heads, "
                      "vocab 256, float32, prompt 8 tokens"},
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                       "python": sys.version.split()[0], "torch": torch.__version__,
                       "load_before": load0, "load_after": os.getloadavg(),
                       "seconds": time.time() - t_start},
           "rows": rows, "breakdown_P4_M8": breakdown}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(table(out))
    return 0


def predicted(cfg: dict, P: int, M: int) -> float:
    """Tokens per second the simulator predicts for the emulated device: the
    decode schedule with each stage's device time per round (its layers x
    the time per token x the round's tokens), free links, no overhead."""
    from conveyor.sim.decode import decode_summary, simulate_decode

    step = cfg["emulated_layers"] // P * cfg["per_token_ms"] / 1000
    tl = simulate_decode(P, M, new_tokens=cfg["tokens"], step=step,
                         prefill=step * cfg["prompt_tokens"])
    return decode_summary(tl)["tokens_per_time"]


def table(out: dict) -> str:
    """The markdown table of ``out`` (the JSON this script writes)."""
    cfg = out["config"]
    lines = ["| device | P | lanes | tokens/s: median (min-max) | x one process | simulated "
             "tokens/s (device time only) | CPU ms per token, all ranks | target: >= 0.9 P x "
             "one process |", "|---|---|---|---|---|---|---|---|"]
    base = {k: next(r["median_tokens_per_s"] for r in out["rows"]
                    if r["kind"] == k and r["P"] == 1) for k in ("emulated", "gpt-cpu")}
    for r in out["rows"]:
        x = r["median_tokens_per_s"] / base[r["kind"]]
        target, sim = "", ""
        if r["kind"] == "emulated":
            sim = f"{predicted(cfg, r['P'], r['M']):.1f}"
            if r["P"] > 1 and r["M"] >= r["P"]:
                target = f"{'met' if x >= 0.9 * r['P'] else 'missed'} ({x / r['P']:.0%} of P x)"
        lines.append(f"| {r['kind']} | {r['P']} | {r['M']} | {r['median_tokens_per_s']:.1f} "
                     f"({r['min_tokens_per_s']:.1f}-{r['max_tokens_per_s']:.1f}) | {x:.2f} | "
                     f"{sim} | {r['median_cpu_ms_per_token']:.1f} | {target} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
