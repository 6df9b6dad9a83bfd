"""The every-schedule grid (issue 9, "Measured") as markdown, with its targets.

Input is what ``driver.run_benchmark`` returns for the emulated workload with
a split backward, over every schedule of both frameworks. Targets are checked
as measured: nothing here adjusts an ideal or grants a schedule slack.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

from .report import RATIO_TARGET, _ms, _ok

__all__ = ["by_case", "targets_schedules", "markdown_schedules", "headline",
           "VS_TORCH_TARGET", "VS_TORCH_MEDIAN_P8", "HEADLINE_TARGET"]

VS_TORCH_TARGET = 1.0      # conveyor / torch per shared schedule, everywhere
VS_TORCH_MEDIAN_P8 = 0.90  # ... and its median at P = 8
HEADLINE_TARGET = 0.80     # best conveyor schedule / conveyor's 1F1B at P = 4, M = 8


def by_case(rows: list[dict]) -> dict:
    """{(P, M): {schedule: {framework: row}}}, rows that ran or were refused."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        out[(r["P"], r["M"])][r["schedule"]][r["framework"]] = r
    return out


def _held(row: dict | None) -> int | None:
    """Micro-batches held at once on stage 0's rank: conveyor's own count
    (its recorder, to the W of a split backward) where it has one, else the
    probe's (to the input gradient)."""
    if not _ok(row):
        return None
    own = row.get("own") or {}
    held = own.get("peak_activations") or row.get("peak_activations")
    return held[0] if held else None


def targets_schedules(rows: list[dict]) -> dict:
    """Each target with the cases checked: lists of (label, value, met)."""
    ratio, vs_torch, memory = [], [], []
    p8 = []
    for (P, M), scheds in sorted(by_case(rows).items()):
        for s, fws in sorted(scheds.items()):
            conv, tor = fws.get("conveyor"), fws.get("torch")
            label = f"{s} P={P} M={M}"
            if _ok(conv) and conv.get("ratio") is not None:
                ratio.append((label, conv["ratio"], conv["ratio"] <= RATIO_TARGET))
            if _ok(conv) and _ok(tor):
                rel = conv["step_s"] / tor["step_s"]
                vs_torch.append((label, rel, rel <= VS_TORCH_TARGET))
                if P == 8:
                    p8.append(rel)
            held, bound = _held(conv), (conv or {}).get("ideal_peak_activations")
            if held is not None and bound:
                memory.append((label, held, held <= bound[0], bound[0]))
    median_p8 = statistics.median(p8) if p8 else None
    return {"ratio": ratio, "vs_torch": vs_torch, "memory": memory,
            "median_p8": median_p8,
            "median_p8_met": None if median_p8 is None else median_p8 <= VS_TORCH_MEDIAN_P8}


def headline(rows: list[dict], P: int = 4, M: int = 8) -> dict | None:
    """At (P, M): conveyor's fastest schedule against its 1F1B and against
    torch's fastest; None when the grid has no such case.

    ``naive`` is left out: it runs the batch as one micro-batch, and the
    emulated layers take the same time per call whatever its size, so its step
    covers 1/M of the others' data and is no rival."""
    scheds = by_case(rows).get((P, M))
    if not scheds:
        return None

    def best(fw):
        ran = [(fws[fw]["step_s"], s) for s, fws in scheds.items()
               if s != "naive" and _ok(fws.get(fw))]
        return min(ran) if ran else None

    conv, tor = best("conveyor"), best("torch")
    one = scheds.get("1f1b", {}).get("conveyor")
    out = {"P": P, "M": M, "conveyor_best": conv, "torch_best": tor}
    if conv and _ok(one):
        out["vs_1f1b"] = conv[0] / one["step_s"]
    if conv and tor:
        out["vs_torch_best"] = conv[0] / tor[0]
    return out


def markdown_schedules(rows: list[dict]) -> list[str]:
    """One table per (P, M): every schedule, both frameworks."""
    lines = []
    for (P, M), scheds in sorted(by_case(rows).items()):
        lines += [f"### P = {P}, M = {M}", "",
                  "| schedule | ideal ms | conveyor ms | conv/ideal | torch ms | torch/ideal "
                  "| conv/torch | held s0 conv (bound) | held s0 torch (probe) "
                  "| RSS growth s0 MiB conv / torch |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for s, fws in sorted(scheds.items(), key=lambda kv: _order(kv[1])):
            conv, tor = fws.get("conveyor"), fws.get("torch")
            ideal = next((r.get("ideal_s") for r in (conv, tor) if r and r.get("ideal_s")), None)
            bound = (conv or {}).get("ideal_peak_activations")

            def cell(row, key, fmt):
                if not _ok(row):
                    return "n/s" if row else "-"
                return fmt(row[key]) if row.get(key) is not None else "n/a"

            rel = f"{conv['step_s'] / tor['step_s']:.3f}" if _ok(conv) and _ok(tor) else "-"
            ratio_c = cell(conv, "ratio", lambda v: f"**{v:.3f}**" if v > RATIO_TARGET
                           else f"{v:.3f}")
            held_c = "-" if _held(conv) is None else (
                f"{_held(conv)} ({bound[0] if bound else 'n/a'})")
            held_t = "-" if not _ok(tor) else str(tor["peak_activations"][0])
            rss = (f"{cell(conv, 'rss_step_mib', lambda v: f'{v[0]:.1f}')} / "
                   f"{cell(tor, 'rss_step_mib', lambda v: f'{v[0]:.1f}')}")
            lines.append(f"| {s} | {_ms(ideal)} | {cell(conv, 'step_s', _ms)} | {ratio_c} "
                         f"| {cell(tor, 'step_s', _ms)} | {cell(tor, 'ratio', _fmt3)} | {rel} "
                         f"| {held_c} | {held_t} | {rss} |")
        lines.append("")
    return lines


def _fmt3(v: float) -> str:
    return f"{v:.3f}"


def _order(fws: dict) -> float:
    """Fastest first, schedules that ran nowhere last."""
    times = [r["step_s"] for r in fws.values() if _ok(r)]
    return min(times) if times else float("inf")
