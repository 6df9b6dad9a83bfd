"""The sweep's pieces that need no processes: per-sample device time and the
closing line, which is computed from the rows."""

from types import SimpleNamespace

import pytest
import torch

from conveyor.measure import emulated
from conveyor.measure.emulated import EmulatedLayer, EmulatedTimes, emulated_stages
from conveyor.demo.sweep import sweep_summary


def test_scaled_times_multiply_every_part():
    t = EmulatedTimes(forward=0.001, backward=0.003, input_grad=0.002).scaled(4)
    assert (t.forward, t.backward, *t.split) == pytest.approx((0.004, 0.012, 0.008, 0.004))


@pytest.mark.parametrize("per_sample, rows, expected", [
    (True, 5, (0.010, 0.020)), (True, 1, (0.002, 0.004)), (False, 5, (0.002, 0.004))])
def test_per_sample_time_grows_with_the_micro_batch(monkeypatch, per_sample, rows, expected):
    # Record each sleep's deadline against the clock read just before the call
    # (no real sleeping, no timing asserted): the target the layer sets.
    asked = []
    monkeypatch.setattr(emulated, "time", SimpleNamespace(perf_counter=lambda: 0.0))
    monkeypatch.setattr(emulated, "_sleep_until", lambda deadline: asked.append(deadline))
    (stage,) = emulated_stages(1, width=3, times=EmulatedTimes(0.002, 0.004),
                               per_sample=per_sample)
    layer = stage[0]
    assert isinstance(layer, EmulatedLayer) and layer.per_sample is per_sample
    x = torch.randn(rows, 3, requires_grad=True)
    layer(x).sum().backward()
    assert asked == pytest.approx(list(expected))


def test_summary_line_is_computed_from_the_rows():
    rows = [{"M": 1, "measured": 0.7512, "formula": 0.75, "step_s": 3.6},
            {"M": 32, "measured": 0.1234, "formula": 3 / 35, "step_s": 1.2}]
    assert sweep_summary(rows) == ("the measured bubble fell from 75.1% to 12.3% as M went "
                                   "from 1 to 32 (formula 75.0% to 8.6%); step time fell by "
                                   "3.0x (3.60 s to 1.20 s)")
    up = [dict(rows[1], M=2), dict(rows[0], M=4, formula=None)]
    assert sweep_summary(up) == ("the measured bubble rose from 12.3% to 75.1% as M went from "
                                 "2 to 4; step time rose by 3.0x (1.20 s to 3.60 s)")
