"""Short actions (issue 32): conveyor against torch.distributed.pipelining
when each action lasts a few milliseconds, and where conveyor's per-step
overhead comes from.

The workload is the issue's: 16 emulated layers (``conveyor.measure.emulated``:
fixed wall time, almost no CPU, as a GPU kernel), a forward of ``layer_ms``
and a backward of twice that per layer and micro-batch, 16 / P layers per
stage, the backward split in I and W halves as in the schedules grid. A
stage's forward thus lasts 16 / P x ``layer_ms``: at 0.5 ms per layer 2 ms at
P = 4 and 1 ms at P = 8.

``run_short`` times 1F1B, GPipe and interleaved 1F1B in both frameworks, in
turns; ``run_breakdown`` times conveyor's 1F1B with each source of per-step
overhead switched off in turn (``switches``), in the same turns as plain
conveyor and torch, so that each source's share is the difference of two
steps taken a moment apart. ``markdown_short`` and ``markdown_breakdown``
render them.
"""

from __future__ import annotations

import statistics
from typing import Callable

from .config import EmulatedWorkload, RunSettings
from .driver import run_benchmark
from .switches import PREFIX, SOURCES

__all__ = ["LAYERS", "LENGTHS_MS", "SCHEDULES", "workload", "run_short", "run_breakdown",
           "markdown_short", "markdown_breakdown", "short_targets", "BREAKDOWN_FRAMEWORKS"]

LAYERS = 16
LENGTHS_MS = (0.5, 2.0)                        # forward per layer; backward twice that
SCHEDULES = ("1f1b", "gpipe", "interleaved-1f1b")
BREAKDOWN_FRAMEWORKS = (("conveyor", "torch") + tuple(PREFIX + s for s in SOURCES)
                        + (PREFIX + "all",))


def workload(P: int, layer_ms: float, *, width: int = 4096, mb_size: int = 8) -> EmulatedWorkload:
    """The issue's 16 emulated layers over P stages (P must divide 16)."""
    k = LAYERS // P
    f = layer_ms / 1000 * k
    return EmulatedWorkload(forward=f, backward=2 * f, width=width, mb_size=mb_size,
                            layers_per_stage=k, split_backward=True)


def _runs(Ps, Ms, lengths, schedules, settings, on_progress, **small) -> list[dict]:
    out = []
    for layer_ms in lengths:
        for P in Ps:
            res = run_benchmark(workload=workload(P, layer_ms, **small), Ps=[P], Ms=list(Ms),
                                schedules=list(schedules), settings=settings,
                                on_progress=on_progress)
            out.append({"P": P, "layer_ms": layer_ms, "result": res})
    return out


def run_short(*, Ps=(4, 8), Ms=(8, 16), lengths=LENGTHS_MS, schedules=SCHEDULES,
              repeats: int = 9, warmup: int = 2,
              on_progress: Callable[[str], None] | None = None, **small) -> dict:
    """Both frameworks, in turns, on every (layer time, P, M, schedule)."""
    settings = RunSettings(repeats=repeats, warmup=warmup, memory=False)
    return {"kind": "short", "runs": _runs(Ps, Ms, lengths, schedules, settings, on_progress,
                                           **small)}


def run_breakdown(*, Ps=(4, 8), Ms=(8,), lengths=LENGTHS_MS, repeats: int = 15,
                  warmup: int = 2, on_progress: Callable[[str], None] | None = None,
                  **small) -> dict:
    """conveyor's 1F1B with each source off in turn, plain conveyor and torch,
    all in the same rounds."""
    settings = RunSettings(repeats=repeats, warmup=warmup, memory=False,
                           frameworks=BREAKDOWN_FRAMEWORKS)
    return {"kind": "breakdown", "runs": _runs(Ps, Ms, lengths, ["1f1b"], settings,
                                               on_progress, **small)}


# -- report -------------------------------------------------------------------------

def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def _cases(data: dict):
    """(layer_ms, P, M, schedule, {framework: row}) for every case that ran."""
    for run in data["runs"]:
        by: dict = {}
        for r in run["result"]["rows"]:
            by.setdefault((r["M"], r["schedule"]), {})[r["framework"]] = r
        for (M, s), fws in sorted(by.items()):
            yield run["layer_ms"], run["P"], M, s, fws


def _vs_torch(fws: dict) -> dict | None:
    """conveyor / torch: the ratio of the two medians, and the quartiles of
    the ratios round by round (each round times both, a moment apart)."""
    c, t = fws.get("conveyor"), fws.get("torch")
    if not c or not t or "step_s" not in c or "step_s" not in t:
        return None
    rounds = [a / b for a, b in zip(c["steps_s"], t["steps_s"])]
    lo, hi = _quartiles(rounds)
    return {"ratio": c["step_s"] / t["step_s"], "q1": lo, "q3": hi, "n": len(rounds)}


def short_targets(data: dict) -> list[tuple[str, float, bool]]:
    """The issue's target, 1F1B conveyor / torch <= 1.00, per case."""
    out = []
    for layer_ms, P, M, s, fws in _cases(data):
        v = _vs_torch(fws)
        if s == "1f1b" and v is not None:
            out.append((f"{layer_ms:g} ms/layer P={P} M={M}", v["ratio"], v["ratio"] <= 1.0))
    return out


def _loads(data: dict) -> str:
    loads = [x for run in data["runs"] for x in (run["result"]["meta"]["load_before"][:1]
                                                  + run["result"]["meta"]["load_after"][:1])]
    return f"{min(loads):.1f}-{max(loads):.1f}" if loads else "?"


def _ms(v) -> str:
    return "-" if v is None else f"{1000 * v:.1f}"


def markdown_short(data: dict, before: dict | None = None) -> list[str]:
    """The short-action tables, with the target and (if given) the same
    cases measured before this issue's changes."""
    meta = data["runs"][0]["result"]["meta"]
    s = meta["settings"]
    old = {(lm, P, M, sc): _vs_torch(f) for lm, P, M, sc, f in _cases(before)} if before \
        else {}
    t = short_targets(data)
    missed = [(lb, v) for lb, v, ok in t if not ok]
    lines = [f"{LAYERS} emulated layers, forward {', '.join(f'{x:g}' for x in LENGTHS_MS)} ms "
             f"per layer and micro-batch (backward twice that; a stage's forward is 16 / P "
             f"times it), {s['warmup']} warm-up + {s['repeats']} timed steps per framework in "
             f"turns; {meta['cpus']} CPUs, load average {_loads(data)} during the runs "
             f"({meta['started']} to {data['runs'][-1]['result']['meta'].get('finished')}).",
             "",
             f"- 1F1B conveyor / torch <= 1.00: **{len(t) - len(missed)}/{len(t)} met**"
             + (": missed " + ", ".join(f"{lb} ({v:.3f})" for lb, v in missed) if missed
                else "") + ".", "",
             "conv/torch: the ratio of the two medians; q1-q3: the quartiles of the ratio "
             "round by round (each round times both a moment apart), the spread. Head: from "
             "the first rank starting the step to the first forward; tail: from the last "
             "stage work to the last rank's update done (medians, ms)."
             + (" Before: the same case measured on the code before issue 32's changes." if
                before else ""), "",
             "| ms/layer | P | M | schedule | ideal ms | conveyor ms | torch ms | conv/torch "
             "| q1-q3 | head c/t | tail c/t |" + (" before |" if before else ""),
             "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if before else "")]
    for layer_ms, P, M, sc, fws in _cases(data):
        c, tr, v = fws.get("conveyor") or {}, fws.get("torch") or {}, _vs_torch(fws)
        rel = "n/s" if v is None else (f"**{v['ratio']:.3f}**" if v["ratio"] > 1 and
                                         sc == "1f1b" else f"{v['ratio']:.3f}")
        spread = "-" if v is None else f"{v['q1']:.3f}-{v['q3']:.3f}"
        row = (f"| {layer_ms:g} | {P} | {M} | {sc} | {_ms(c.get('ideal_s'))} "
               f"| {_ms(c.get('step_s'))} | {_ms(tr.get('step_s'))} | {rel} | {spread} "
               f"| {_ms(c.get('head_s'))} / {_ms(tr.get('head_s'))} "
               f"| {_ms(c.get('tail_s'))} / {_ms(tr.get('tail_s'))} |")
        if before:
            b = old.get((layer_ms, P, M, sc))
            row += f" {b['ratio']:.3f} |" if b else " - |"
        lines.append(row)
    return lines + [""]


def markdown_breakdown(data: dict, before: dict | None = None) -> list[str]:
    """Per source, conveyor's step minus the step with that source off,
    round by round: median and quartiles (ms), and the median as a share
    of conveyor's step."""
    meta = data["runs"][0]["result"]["meta"]
    s = meta["settings"]
    lines = [f"1F1B, {s['repeats']} rounds; in each round plain conveyor, torch and conveyor "
             f"with one source off take a step each, in rotating order. A source's cost: "
             f"conveyor's step minus the step without it, round by round: median in ms (as a "
             f"share of conveyor's step) [quartiles]; negative: within the noise. Load average "
             f"{_loads(data)}.", ""]
    for name, d in (("after", data), ("before", before)):
        if d is None:
            continue
        lines += [f"**{name.capitalize()}** (" + ("this branch" if name == "after" else
                                                  "the code before issue 32's changes") + ")",
                  "", "| ms/layer | P | M | conveyor ms | torch ms | "
                  + " | ".join(SOURCES + ("all",)) + " |",
                  "|---|---|---|---|---|" + "---|" * (len(SOURCES) + 1)]
        for layer_ms, P, M, sc, fws in _cases(d):
            c = fws.get("conveyor")
            if not c or "step_s" not in c:
                continue
            cells = []
            for src in SOURCES + ("all",):
                off = fws.get(PREFIX + src)
                if not off or "step_s" not in off:
                    cells.append("-")
                    continue
                diff = [a - b for a, b in zip(c["steps_s"], off["steps_s"])]
                med, (q1, q3) = statistics.median(diff), _quartiles(diff)
                cells.append(f"{1000 * med:+.1f} ({100 * med / c['step_s']:+.1f}%) "
                             f"[{1000 * q1:+.1f}, {1000 * q3:+.1f}]")
            t = fws.get("torch") or {}
            lines.append(f"| {layer_ms:g} | {P} | {M} | {_ms(c['step_s'])} "
                         f"| {_ms(t.get('step_s'))} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines
