"""The planner's table: the best plans, their bytes against the budget, and
why the others lost."""

from __future__ import annotations

from conveyor.plan.search import PlanResult, fmt_bytes, fmt_time

__all__ = ["plan_table", "memory_line"]


def plan_table(result: PlanResult, *, top: int = 8) -> str:
    """Rows: rank, schedule (with its options), M, v, balance, checkpoint,
    optimizer sharded, predicted step, bubble, peak memory per rank, the
    fullest rank's share of the budget, and the note (best / +x% step / over
    budget). After the top rows, one line per schedule whose best did not
    make the table; then what the best's fullest rank holds."""
    head = ["#", "schedule", "M", "v", "balance", "ckpt", "shard", "step", "bubble",
            "peak/rank", "of budget", "why"]
    rows = []
    shown = set()
    for k, c in enumerate(result.candidates[:top]):
        shown.add(c.label)
        rows.append(_row(k + 1, c, result.peaks(c), result.budget))
    for k, c in enumerate(result.candidates[top:], start=top):
        if c.label not in shown:
            shown.add(c.label)
            rows.append(_row(k + 1, c, result.peaks(c), result.budget))
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(head, widths))]
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(r, widths)) for r in rows]
    budget = "unlimited" if result.budget is None else fmt_bytes(result.budget)
    b = result.best
    lines.append(f"best: {b.label}, M={b.M} (micro-batches of {min(b.sizes)}"
                 f"{'' if min(b.sizes) == max(b.sizes) else '-' + str(max(b.sizes))}), "
                 f"v={b.v}, balance {b.balance}, checkpoint {b.checkpoint_text}"
                 f"{', optimizer sharded over the replicas' if b.shard else ''}: predicted "
                 f"step {fmt_time(b.step)}, bubble {b.bubble:.1%}; budget {budget}; "
                 f"{len(result.candidates)} plans considered, "
                 f"{sum(1 for c in result.candidates if c.bubble == c.bubble and c.fits)} "
                 f"simulated")
    line = memory_line(b, result.peaks(b), result.budget)
    if line:
        lines.append(line)
    return "\n".join(lines)


def memory_line(c, peak_bytes: list[float], budget: float | None) -> str | None:
    """What the fullest rank of ``c`` holds: parameters, gradients, optimizer
    state (sharded or not) and activations, against the budget."""
    sc = c._costs
    if not peak_bytes or sc is None or not sc.param_bytes:
        return None
    r = max(range(len(peak_bytes)), key=peak_bytes.__getitem__)
    mine = [s for s, rr in enumerate(c.placement) if rr == r]
    params = sum(sc.param_bytes[s] for s in mine)
    optim = sum(sc.optim_bytes[s] for s in mine)
    act = peak_bytes[r] - 2 * params - optim
    against = "" if budget is None else f" of {fmt_bytes(budget)}"
    return (f"rank {r} holds {fmt_bytes(peak_bytes[r])}{against}: parameters "
            f"{fmt_bytes(params)}, gradients {fmt_bytes(params)}, optimizer state "
            f"{fmt_bytes(optim)}{' (sharded)' if c.shard else ''}, activations {fmt_bytes(act)}")


def _row(k: int, c, peak_bytes: list[float], budget: float | None) -> list:
    bal = ",".join(map(str, c.balance))
    if len(bal) > 24:
        bal = bal[:21] + "..."
    peaks = " ".join(fmt_bytes(x).replace(" ", "") for x in peak_bytes[:4]) or "-"
    if len(peak_bytes) > 4:
        peaks += f" ..max {fmt_bytes(max(peak_bytes)).replace(' ', '')}"
    share = f"{max(peak_bytes) / budget:.0%}" if budget and peak_bytes else "-"
    simulated = bool(c.fits) and c.bubble == c.bubble  # NaN: not simulated
    return [k, c.label, c.M, c.v, bal, c.checkpoint_text, "yes" if c.shard else "no",
            fmt_time(c.step) if simulated else "-", f"{c.bubble:.1%}" if simulated else "-",
            peaks, share, c.note]
