"""Results as a markdown table, with each target checked, and as plain text.

Input is what ``driver.run_benchmark`` returns; one call per workload. The
targets are the issue's, checked as measured: nothing here adjusts an ideal.
"""

from __future__ import annotations

from collections import defaultdict

__all__ = ["pair_rows", "targets_emulated", "targets_mlp", "markdown_emulated",
           "markdown_breakdown", "markdown_mlp", "markdown_conditions", "text_table",
           "RATIO_TARGET", "SPEEDUP_TARGET"]

RATIO_TARGET = 1.05   # conveyor step <= 1.05 x the simulator's ideal
SPEEDUP_TARGET = 0.9  # speedup >= 0.9 x P*M/(M+P-1)


def pair_rows(rows: list[dict]) -> list[dict]:
    """One record per case: {"case": shared fields, "conveyor": row, "torch": row}."""
    by = defaultdict(dict)
    for r in rows:
        by[(r["schedule"], r["P"], r["M"])][r["framework"]] = r
    out = []
    for key in sorted(by, key=lambda k: (k[1], k[0] != "gpipe", k[0], k[2])):
        fws = by[key]
        case = next(iter(fws.values()))
        out.append({"case": case, **fws})
    return out


def _ok(row: dict | None) -> bool:
    return bool(row) and "step_s" in row


def targets_emulated(rows: list[dict]) -> dict:
    """Each emulated-workload target: cases checked, and the misses with margins."""
    ratio, vs_torch, memory = [], [], []
    for p in pair_rows(rows):
        c, conv, tor = p["case"], p.get("conveyor"), p.get("torch")
        label = f"{c['schedule']} P={c['P']} M={c['M']}"
        if _ok(conv) and "ratio" in conv:
            ratio.append((label, conv["ratio"], conv["ratio"] <= RATIO_TARGET))
        if _ok(conv) and _ok(tor):
            rel = conv["step_s"] / tor["step_s"]
            vs_torch.append((label, rel, rel <= 1.0))
        for fw, row in (("conveyor", conv), ("torch", tor)):
            if not _ok(row):
                continue
            held = row["peak_activations"][0]
            limit = min(c["P"], c["M"]) if c["schedule"] == "1f1b" else c["M"]
            ok = held <= limit if c["schedule"] == "1f1b" else held == limit
            memory.append((f"{label} {fw}", held, ok, limit))
    return {"ratio": ratio, "vs_torch": vs_torch, "memory": memory}


def targets_mlp(rows: list[dict]) -> list[tuple]:
    """(label, speedup, ideal, met) per framework and case of the MLP."""
    out = []
    for r in rows:
        if _ok(r) and "speedup" in r:
            out.append((f"{r['schedule']} P={r['P']} M={r['M']} {r['framework']}",
                        r["speedup"], r["speedup_ideal"],
                        r["speedup"] >= SPEEDUP_TARGET * r["speedup_ideal"]))
    return out


def _ms(x: float | None) -> str:
    return "n/a" if x is None else f"{round(1000 * x, 1) + 0.0:.1f}"  # + 0.0: no "-0.0"


def _bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _get(row: dict | None, key: str, fmt=lambda v: v, missing: str = "n/a") -> str:
    if not _ok(row) or row.get(key) is None:
        return "n/s" if row and row.get("unsupported") else missing
    return fmt(row[key])


def markdown_emulated(rows: list[dict]) -> list[str]:
    """The emulated workload's table: times, ratios, bubble, memory and bytes."""
    lines = [
        "| schedule | P | M | ideal ms | conveyor ms | conv/ideal | torch ms | torch/ideal "
        "| conv/torch | bubble formula / conv / torch | act. held stage 0 conv / torch "
        "| RSS growth stage 0 MiB conv / torch | bytes/step conv / torch (expected) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in pair_rows(rows):
        c, conv, tor = p["case"], p.get("conveyor"), p.get("torch")
        rel = (f"{conv['step_s'] / tor['step_s']:.3f}" if _ok(conv) and _ok(tor) else "n/a")
        ratio_c = _get(conv, "ratio", lambda v: f"**{v:.3f}**" if v > RATIO_TARGET else f"{v:.3f}")
        pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
        lines.append(
            f"| {c['schedule']} | {c['P']} | {c['M']} | {_ms(c.get('ideal_s'))} "
            f"| {_get(conv, 'step_s', _ms)} | {ratio_c} | {_get(tor, 'step_s', _ms)} "
            f"| {_get(tor, 'ratio', lambda v: f'{v:.3f}')} | {rel} "
            f"| {pct(c['bubble_formula'])} / {_get(conv, 'bubble', pct)} / "
            f"{_get(tor, 'bubble', pct)} "
            f"| {_get(conv, 'peak_activations', lambda v: v[0])} / "
            f"{_get(tor, 'peak_activations', lambda v: v[0])} "
            f"| {_get(conv, 'rss_step_mib', lambda v: f'{v[0]:.1f}')} / "
            f"{_get(tor, 'rss_step_mib', lambda v: f'{v[0]:.1f}')} "
            f"| {_get(conv, 'bytes', _bytes)} / {_get(tor, 'bytes', _bytes)} "
            f"({_bytes(c['bytes_expected'])}) |")
    return lines


def markdown_breakdown(rows: list[dict]) -> list[str]:
    """Where each step's time beyond the ideal went, per framework (ms).

    overrun: the simulator with each stage's measured F and B, minus the ideal
    (slower actions: emulation wake-ups, contention, the probe); latency: adding
    the measured one-way link latency; residual: the rest, the framework's own
    cost between actions (dispatch, synchronisation, waiting on sends).
    """
    lines = [
        "| schedule | P | M | ideal ms | conv: overrun + latency + residual = over | "
        "torch: overrun + latency + residual = over | link latency ms |",
        "|---|---|---|---|---|---|---|",
    ]

    def parts(row):
        if not _ok(row) or "sim_measured_s" not in row or row.get("ideal_s") is None:
            return "n/a"
        over = row["sim_costs_s"] - row["ideal_s"]
        lat = row["sim_measured_s"] - row["sim_costs_s"]
        rest = row["step_s"] - row["sim_measured_s"]
        return (f"{_ms(over)} + {_ms(lat)} + {_ms(rest)} = "
                f"{_ms(row['step_s'] - row['ideal_s'])}")

    for p in pair_rows(rows):
        c, conv, tor = p["case"], p.get("conveyor"), p.get("torch")
        lat = next((r.get("latency_s") for r in (conv, tor) if _ok(r) and r.get("latency_s")),
                   None)
        lat_text = "n/a" if not lat else "/".join(f"{1000 * x:.2f}" for x in lat)
        lines.append(f"| {c['schedule']} | {c['P']} | {c['M']} | {_ms(c.get('ideal_s'))} "
                     f"| {parts(conv)} | {parts(tor)} | {lat_text} |")
    return lines


def markdown_mlp(result: dict) -> list[str]:
    """The real-compute table: speedup over one process against the ideal."""
    lines = [
        "| schedule | P | M | framework | step ms | one process ms | speedup "
        "| ideal P·M/(M+P-1) | target (0.9 × ideal) | met | one process, M micro-batches ms "
        "| simulated ideal ms | step/ideal | sim. with in-run F/B ms | CPU share | bubble "
        "| act. held stage 0 | bytes/step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(result["rows"], key=lambda r: (r["P"], r["M"], r["schedule"],
                                                    r["framework"])):
        if not _ok(r) or "speedup" not in r:
            lines.append(f"| {r['schedule']} | {r['P']} | {r['M']} | {r['framework']} | "
                         f"not measured: {r.get('unsupported', '')} |||||||||||||")
            continue
        ideal = r["speedup_ideal"]
        met = r["speedup"] >= SPEEDUP_TARGET * ideal
        ratio = f"{r['ratio']:.3f}" if "ratio" in r else "n/a"
        lines.append(
            f"| {r['schedule']} | {r['P']} | {r['M']} | {r['framework']} | {_ms(r['step_s'])} "
            f"| {_ms(r['one_process_s'])} | {r['speedup']:.2f} | {ideal:.2f} "
            f"| {SPEEDUP_TARGET * ideal:.2f} | {'yes' if met else '**no**'} "
            f"| {_ms(r.get('one_process_mb_s'))} "
            f"| {_ms(r.get('ideal_s'))} | {ratio} | {_ms(r.get('sim_costs_s'))} "
            f"| {r.get('cpu_share', float('nan')):.2f} | {100 * r['bubble']:.1f}% "
            f"| {r['peak_activations'][0]} | {_bytes(r['bytes'])} |")
    return lines


def markdown_conditions(meta: dict) -> str:
    """One paragraph: when, where, under which load, with which settings."""
    s, w = meta["settings"], meta["workload"]
    wl = ", ".join(f"{k}={v}" for k, v in w.items() if k != "kind")
    return (f"{w['kind']} workload ({wl}); P in {meta['Ps']}, M in {meta['Ms']}, schedules "
            f"{', '.join(meta['schedules'])}; {s['warmup']} warm-up + {s['repeats']} timed "
            f"steps per framework, alternating, medians. {meta['started']} to "
            f"{meta.get('finished', '?')}; {meta['cpus']} CPUs ({meta['machine']}), "
            f"torch {meta['torch']}, Python {meta['python']}, device {meta['device']}; "
            f"load average {meta['load_before']} before, {meta.get('load_after')} after.")


def text_table(rows: list[dict]) -> str:
    """A compact plain-text table for the terminal (``conveyor bench``)."""
    head = (f"{'schedule':8} {'P':>2} {'M':>3} {'ideal ms':>9} {'conveyor':>9} {'ratio':>6} "
            f"{'torch':>9} {'ratio':>6} {'bubble f/c/t':>17} {'held s0 c/t':>11}")
    out = [head, "-" * len(head)]
    for p in pair_rows(rows):
        c, conv, tor = p["case"], p.get("conveyor"), p.get("torch")
        pct = lambda v: f"{100 * v:.0f}%"  # noqa: E731
        bub = (f"{pct(c['bubble_formula'])}/{_get(conv, 'bubble', pct, '-')}/"
               f"{_get(tor, 'bubble', pct, '-')}")
        held = (f"{_get(conv, 'peak_activations', lambda v: v[0], '-')}/"
                f"{_get(tor, 'peak_activations', lambda v: v[0], '-')}")
        out.append(
            f"{c['schedule']:8} {c['P']:>2} {c['M']:>3} {_ms(c.get('ideal_s')):>9} "
            f"{_get(conv, 'step_s', _ms, '-'):>9} {_get(conv, 'ratio', lambda v: f'{v:.3f}', '-'):>6} "
            f"{_get(tor, 'step_s', _ms, '-'):>9} {_get(tor, 'ratio', lambda v: f'{v:.3f}', '-'):>6} "
            f"{bub:>17} {held:>11}")
    return "\n".join(out)
