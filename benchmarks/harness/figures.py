"""Small PNG figures of a benchmark: step time vs M, bubble vs the formula, memory.

matplotlib with the Agg backend (no display needed); one figure per file, one
panel per schedule.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_figures"]

STYLE = {"conveyor": dict(marker="o", linestyle="-"), "torch": dict(marker="x", linestyle="--")}


def _panels(plt, schedules, title):
    fig, axes = plt.subplots(1, len(schedules), figsize=(4.2 * len(schedules), 3.4),
                             squeeze=False, sharey=True)
    fig.suptitle(title, fontsize=10)
    return fig, axes[0]


def _series(rows, schedule, P, fw, key):
    pts = sorted((r["M"], r[key]) for r in rows if r["schedule"] == schedule and r["P"] == P
                 and r["framework"] == fw and r.get(key) is not None)
    return [m for m, _ in pts], [v for _, v in pts]


def write_figures(rows: list[dict], out_dir: str | Path, *, prefix: str = "pipeline") -> list[Path]:
    """Write ``{prefix}_step_time.png``, ``_bubble.png``, ``_memory.png`` and
    ``_rss.png`` into ``out_dir``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [r for r in rows if "step_s" in r]
    schedules = sorted({r["schedule"] for r in rows}, key=lambda s: (s != "gpipe", s))
    Ps = sorted({r["P"] for r in rows})
    fws = [f for f in ("conveyor", "torch") if any(r["framework"] == f for r in rows)]
    colours = {P: f"C{i}" for i, P in enumerate(Ps)}
    paths = []

    fig, axes = _panels(plt, schedules, "Step time vs micro-batches (dotted: simulator ideal)")
    for ax, s in zip(axes, schedules):
        for P in Ps:
            for fw in fws:
                m, t = _series(rows, s, P, fw, "step_s")
                ax.plot(m, [1000 * x for x in t], color=colours[P], label=f"P={P} {fw}",
                        **STYLE[fw])
            m, t = _series(rows, s, P, fws[0], "ideal_s")
            ax.plot(m, [1000 * x for x in t], color=colours[P], linestyle=":", linewidth=1)
        _axis(ax, s, "step time (ms)")
    axes[0].legend(fontsize=7)
    paths.append(_save(fig, out_dir / f"{prefix}_step_time.png"))

    fig, axes = _panels(plt, schedules, "Measured bubble vs (P-1)/(M+P-1) (lines)")
    for ax, s in zip(axes, schedules):
        for P in Ps:
            ms = sorted({r["M"] for r in rows if r["P"] == P})
            grid = [m / 4 for m in range(4, 4 * max(ms) + 1)]
            ax.plot(grid, [(P - 1) / (m + P - 1) for m in grid], color=colours[P], linewidth=1,
                    label=f"formula P={P}")
            for fw in fws:
                m, b = _series(rows, s, P, fw, "bubble")
                ax.plot(m, b, color=colours[P], linestyle="none", marker=STYLE[fw]["marker"],
                        label=f"P={P} {fw}")
        _axis(ax, s, "bubble fraction")
    axes[0].legend(fontsize=6, ncol=2)
    paths.append(_save(fig, out_dir / f"{prefix}_bubble.png"))

    def stage0(key: str, s: str, P: int, fw: str) -> list[tuple[int, float]]:
        return sorted((r["M"], r[key][0]) for r in rows
                      if r["schedule"] == s and r["P"] == P and r["framework"] == fw)

    fig, axes = _panels(plt, schedules, "Micro-batches held on stage 0 (dotted: schedule's bound)")
    for ax, s in zip(axes, schedules):
        for P in Ps:
            for fw in fws:
                pts = stage0("peak_activations", s, P, fw)
                ax.plot([m for m, _ in pts], [h for _, h in pts], color=colours[P],
                        label=f"P={P} {fw}", **STYLE[fw])
                bound = [(m, m if s == "gpipe" else min(P, m)) for m, _ in pts]
                ax.plot([m for m, _ in bound], [b for _, b in bound], color=colours[P],
                        linestyle=":", linewidth=1)
        _axis(ax, s, "activations held (micro-batches)")
    axes[0].legend(fontsize=7)
    paths.append(_save(fig, out_dir / f"{prefix}_memory.png"))

    fig, axes = _panels(plt, schedules, "RSS growth on stage 0 during a step")
    for ax, s in zip(axes, schedules):
        for P in Ps:
            for fw in fws:
                pts = stage0("rss_step_mib", s, P, fw)
                ax.plot([m for m, _ in pts], [v for _, v in pts], color=colours[P],
                        label=f"P={P} {fw}", **STYLE[fw])
        _axis(ax, s, "MiB")
    axes[0].legend(fontsize=7)
    paths.append(_save(fig, out_dir / f"{prefix}_rss.png"))
    return paths


def _axis(ax, schedule, ylabel):
    ax.set_title(schedule, fontsize=9)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("M (micro-batches)")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=8)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
