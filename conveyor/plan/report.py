"""The planner's table: the best plans and why the others lost."""

from __future__ import annotations

from conveyor.plan.search import PlanResult, fmt_bytes, fmt_time

__all__ = ["plan_table"]


def plan_table(result: PlanResult, *, top: int = 8) -> str:
    """Rows: rank, schedule, M, v, balance, checkpoint, predicted step, bubble,
    peak memory per rank, and the note (best / +x% step / over budget). After
    the top rows, one line per schedule whose best did not make the table."""
    head = ["#", "schedule", "M", "v", "balance", "ckpt", "step", "bubble", "peak/rank", "why"]
    rows = []
    shown = set()
    for k, c in enumerate(result.candidates[:top]):
        shown.add(c.name)
        rows.append(_row(k + 1, c, result.peaks(c)))
    for k, c in enumerate(result.candidates[top:], start=top):
        if c.name not in shown:
            shown.add(c.name)
            rows.append(_row(k + 1, c, result.peaks(c)))
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(head, widths))]
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(r, widths)) for r in rows]
    budget = "unlimited" if result.budget is None else fmt_bytes(result.budget)
    b = result.best
    lines.append(f"best: {b.name}, M={b.M} (micro-batches of {min(b.sizes)}"
                 f"{'' if min(b.sizes) == max(b.sizes) else '-' + str(max(b.sizes))}), "
                 f"v={b.v}, balance {b.balance}, checkpoint {b.checkpoint_text}: predicted "
                 f"step {fmt_time(b.step)}, bubble {b.bubble:.1%}; budget {budget}; "
                 f"{len(result.candidates)} plans considered, "
                 f"{sum(1 for c in result.candidates if c.bubble == c.bubble and c.fits)} "
                 f"simulated")
    return "\n".join(lines)


def _row(k: int, c, peak_bytes: list[float]) -> list:
    bal = ",".join(map(str, c.balance))
    if len(bal) > 24:
        bal = bal[:21] + "..."
    peaks = " ".join(fmt_bytes(x).replace(" ", "") for x in peak_bytes[:4]) or "-"
    if len(peak_bytes) > 4:
        peaks += f" ..max {fmt_bytes(max(peak_bytes)).replace(' ', '')}"
    simulated = bool(c.fits) and c.bubble == c.bubble  # NaN: not simulated
    return [k, c.name, c.M, c.v, bal, c.checkpoint_text,
            fmt_time(c.step) if simulated else "-", f"{c.bubble:.1%}" if simulated else "-",
            peaks, c.note]
