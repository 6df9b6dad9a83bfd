"""The probe stamps every forward and backward without changing the math."""

import torch
from torch import nn

from benchmarks.harness.metrics import build_timeline
from benchmarks.harness.probe import Probe, StageStamps, rss_bytes


def stage(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3))


def run(module, xs, order):
    """Forward/backward micro-batches in ``order`` (a list of ("F"|"B", mb))."""
    outs = {}
    for kind, mb in order:
        if kind == "F":
            outs[mb] = module(xs[mb])
        else:
            outs.pop(mb).square().sum().backward()


GPIPE = [("F", 0), ("F", 1), ("F", 2), ("B", 0), ("B", 1), ("B", 2)]
ONE_F_ONE_B = [("F", 0), ("B", 0), ("F", 1), ("B", 1), ("F", 2), ("B", 2)]


def test_values_and_gradients_are_unchanged():
    xs = [torch.randn(2, 4) for _ in range(3)]
    plain, probed = stage(), Probe(stage(), StageStamps(), 0)
    run(plain, xs, GPIPE)
    run(probed, xs, GPIPE)
    for a, b in zip(plain.parameters(), probed.inner.parameters()):
        assert torch.equal(a.grad, b.grad)
    assert list(probed.parameters()) == list(probed.inner.parameters())  # anchor is hidden


def test_first_stage_backward_is_stamped_although_its_input_needs_no_grad():
    rec = StageStamps()
    xs = [torch.randn(2, 4) for _ in range(3)]  # requires_grad False, as on stage 0
    run(Probe(stage(), rec, 0), xs, GPIPE)
    assert [(k, mb) for _, k, mb, _, _ in rec.events] == GPIPE
    for _, kind, mb, start, end in rec.events:
        assert start <= end
    f_end = {mb: end for _, k, mb, _, end in rec.events if k == "F"}
    assert all(start >= f_end[mb] for _, k, mb, start, _ in rec.events if k == "B")


def test_timeline_counts_micro_batches_held():
    xs = [torch.randn(2, 4, requires_grad=True) for _ in range(3)]
    peaks = {}
    for name, order in (("gpipe", GPIPE), ("1f1b", ONE_F_ONE_B)):
        rec = StageStamps()
        run(Probe(stage(), rec, 0), xs, order)
        t = build_timeline([rec.events], P=1, M=3, schedule=name)
        assert t.source == "measured" and t.unit == "s" and len(t.events) == 6
        peaks[name] = t.peak_activations()
    assert peaks == {"gpipe": [3], "1f1b": [1]}


def test_reset_starts_a_new_step_and_rss_is_read():
    rec = StageStamps()
    run(Probe(stage(), rec, 0), [torch.randn(2, 4)], [("F", 0), ("B", 0)])
    assert len(rec.events) == 2
    rec.reset()
    assert rec.events == [] and rec.rss_peak == rec.rss_start
    assert rss_bytes() > 0  # Linux /proc; the benchmark machines are Linux


def test_stages_sharing_a_rank_are_stamped_apart():
    """Two chunks on one rank (as in interleaved and V schedules): each stage
    numbers its own micro-batches, and the timeline places them on their stage."""
    rec = StageStamps()
    first, second = Probe(stage(0), rec, 0), Probe(nn.Sequential(nn.Linear(3, 4)), rec, 1)
    xs = [torch.randn(2, 4) for _ in range(2)]
    outs = [second(first(x)) for x in xs]
    for out in reversed(outs):
        out.square().sum().backward()
    got = sorted((s, k, mb) for s, k, mb, _, _ in rec.events)
    assert got == sorted((s, k, mb) for s in (0, 1) for k in ("F", "B") for mb in (0, 1))
    t = build_timeline([rec.events], P=1, M=2, schedule="two chunks")
    assert t.S == 2 and {e.action.stage for e in t.events} == {0, 1}
