"""The planner's words: checks of a request, why candidates lost, sizes and times."""

from __future__ import annotations

from conveyor.errors import PlanError

__all__ = ["check_request", "over_budget", "explain", "fmt_bytes", "fmt_time",
           "checkpoint_text"]


def check_request(profile, P, batch, memory, microbatches) -> None:
    for name, x in (("P", P), ("batch", batch)):
        if isinstance(x, bool) or not isinstance(x, int) or x < 1:
            raise PlanError(f"{name}={x!r} must be a positive integer")
    if microbatches:
        big = [m for m in microbatches if m > batch]
        if big:
            raise PlanError(f"batch {batch} is smaller than M={big[0]}: every micro-batch needs "
                            f"at least one sample; use M <= {batch} or a batch of at least "
                            f"{big[0]}")
    if memory is not None:
        j = max(range(profile.L), key=lambda j: profile.layers[j].static_bytes)
        most = profile.layers[j].static_bytes
        if memory < most:
            raise PlanError(
                f"memory budget {fmt_bytes(memory)} is below what layer {j} "
                f"({profile.layers[j].kind}) alone needs: {fmt_bytes(most)} of parameters, "
                f"gradients and optimizer state; no split can fit. Raise the budget to at least "
                f"{fmt_bytes(most)} (plus activations)")


def over_budget(best, memory: float, P: int) -> str:
    need = max(best.peak_bytes)
    return (f"no plan fits {fmt_bytes(memory)} per rank on P={P}: the leanest, "
            f"{best.name} M={best.M} v={best.v} checkpoint={best.checkpoint_text}, "
            f"needs {fmt_bytes(need)} on its fullest rank, {fmt_bytes(need - memory)} over. "
            f"What would fit: --memory {fmt_bytes(need)}, or more ranks")


def explain(cands, best, memory: float | None) -> None:
    for c in cands:
        if c is best:
            c.note = "best"
        elif c.fits is False:
            r = max(range(len(c.peak_bytes)), key=lambda r: c.peak_bytes[r])
            c.note = f"over budget on rank {r} by {fmt_bytes(c.peak_bytes[r] - memory)}"
        elif c.step == float("inf"):
            c.note = (f"cannot win: no step under {fmt_time(c.bound)}, "
                      f"{(c.bound / best.step - 1) * 100:+.1f}% over the best (not simulated)")
        else:
            c.note = f"{(c.step / best.step - 1) * 100:+.1f}% step"


def fmt_time(t: float) -> str:
    return f"{t * 1e3:.1f} ms" if t < 10 else f"{t:.2f} s"


def fmt_bytes(n: float) -> str:
    for unit, k in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if abs(n) >= k:
            return f"{n / k:.2f} {unit}"
    return f"{n:.0f} B"


def checkpoint_text(flags) -> str:
    """"none", "full", or the checkpointed stages: ``[True, False, True] -> "0,2"``."""
    if not any(flags):
        return "none"
    if all(flags):
        return "full"
    return ",".join(str(s) for s, c in enumerate(flags) if c)
