"""Record the measured steps the view tests and docs read (``tests/views/data/steps``).

Real runs, not typed numbers: P = 4 processes over gloo (conveyor.runtime),
1F1B with M = 8 micro-batches, each stage an emulated device
(conveyor.measure.emulated) that takes a set time per micro-batch; stage 2
takes 1.5 times as long as the others, a straggler. One warm-up step, then
five recorded steps, one timeline file each (``step1.json``...).

    .venv/bin/python -m tests.views.record_steps [OUT_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

P, M, WIDTH, SCHEDULE, STEPS = 4, 8, 8, "1f1b", 5
FORWARD, BACKWARD, SLOW_STAGE, SLOW = 0.004, 0.008, 2, 1.5  # seconds per micro-batch


def make_model():
    import torch
    from conveyor.measure.emulated import EmulatedTimes, emulated_stages
    torch.set_num_threads(1)
    times = [EmulatedTimes(FORWARD * (SLOW if s == SLOW_STAGE else 1),
                           BACKWARD * (SLOW if s == SLOW_STAGE else 1)) for s in range(P)]
    return [m for stage in emulated_stages(P, width=WIDTH, times=times) for m in stage]


def make_batch(step: int):
    import torch
    g = torch.Generator().manual_seed(step)
    return torch.randn(4 * M, WIDTH, generator=g), torch.randn(4 * M, WIDTH, generator=g)


def mse(out, target):
    from torch.nn.functional import mse_loss
    return mse_loss(out, target)


def record(out: Path) -> list[Path]:
    from conveyor.runtime import measure

    out.mkdir(parents=True, exist_ok=True)
    tls = measure(make_model, make_batch, P=P, M=M, schedule=SCHEDULE, loss_fn=mse,
                  steps=STEPS, warmup=1)
    for tl in tls:  # emulated devices sleep: the views need not warn of shared cores
        tl.meta["device_time"] = {"forward": FORWARD, "backward": BACKWARD, "per": "micro-batch",
                                  "slow_stage": SLOW_STAGE, "slow": SLOW}
    return [tl.save(out / f"step{k + 1}.json") for k, tl in enumerate(tls)]


if __name__ == "__main__":
    dest = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "data" / "steps"
    for path in record(dest):
        print(path)
