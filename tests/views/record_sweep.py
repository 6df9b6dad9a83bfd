"""Record the measured M sweep the view tests read (``tests/views/data/sweep``).

Real runs, not typed numbers: P = 4 processes over gloo (conveyor.runtime),
GPipe, a fixed batch of 32 samples split into M micro-batches, each stage an
emulated device (conveyor.measure.emulated) whose time per micro-batch is
proportional to its size. Writes the directory in the demo's sweep format:
one measured timeline per M (``M01.json``...) and ``sweep.json``.

    .venv/bin/python -m tests.views.record_sweep [OUT_DIR]
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

P, BATCH, WIDTH, SCHEDULE = 4, 32, 8, "gpipe"
MS = (1, 2, 4, 8, 16)
FORWARD, BACKWARD = 0.024, 0.048  # seconds of the whole batch on one stage


def make_model(M: int):
    import torch
    from conveyor.measure.emulated import EmulatedTimes, emulated_stages
    torch.set_num_threads(1)
    times = EmulatedTimes(FORWARD / M, BACKWARD / M)
    return [m for stage in emulated_stages(P, width=WIDTH, times=times) for m in stage]


def make_batch(step: int):
    import torch
    g = torch.Generator().manual_seed(step)
    return torch.randn(BATCH, WIDTH, generator=g), torch.randn(BATCH, WIDTH, generator=g)


def mse(out, target):
    from torch.nn.functional import mse_loss
    return mse_loss(out, target)


def record(out: Path) -> dict:
    from conveyor.runtime import measure
    from conveyor.schedule import build_schedule
    from conveyor.sim import CostModel, formula_bubble, simulate

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for M in MS:
        tl = measure(functools.partial(make_model, M), make_batch, P=P, microbatches=M, schedule=SCHEDULE,
                     loss_fn=mse, steps=1, warmup=1)[0]
        name = f"M{M:02d}.json"
        tl.save(out / name)
        sim = simulate(build_schedule(SCHEDULE, P, M),
                       CostModel(forward=FORWARD / M, backward=BACKWARD / M), unit="s")
        rows.append({"M": M, "measured": tl.bubble_overall, "simulated": sim.bubble_overall,
                     "formula": float(formula_bubble(SCHEDULE, P, M)),
                     "step_s": tl.step_time, "timeline": name})
    doc = {"P": P, "schedule": SCHEDULE, "batch": BATCH,
           "device_time": {"forward": FORWARD, "backward": BACKWARD, "per": "batch"},
           "rows": rows}
    (out / "sweep.json").write_text(json.dumps(doc, indent=1))
    return doc


if __name__ == "__main__":
    dest = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "data" / "sweep"
    for row in record(dest)["rows"]:
        print(row)
