"""The progress bars: a bar weighted by expected time with an ETA and the
phase (torch-free), and the profiler's estimate of each step's time."""

from __future__ import annotations

import io
import re

from conveyor.progress import WeightedProgress


def test_weighted_bar_moves_by_expected_time_and_names_the_phase():
    out = io.StringIO()
    bar = WeightedProgress(title="profile ", stream=out)
    bar.phase("warm-up")
    bar.expect(10.0)
    bar.expect(5.0, key="links")
    bar.expect(5.0, key="links")  # the same work, named twice, counts once
    bar.phase("layers", "layer 0")
    bar.advance("layer 1", 3.0)   # 3 of 15 expected seconds
    bar.advance("layer 2", 4.5)
    lines = out.getvalue().splitlines()  # off a terminal: one line per update
    assert re.fullmatch(r"profile \[\.{24}\]   0%  +\d+s  eta    \?  warm-up", lines[1])
    assert re.fullmatch(r"profile \[#{5}\.{19}\]  20%  +\d+s  eta +\d+s  layers: layer 1",
                        lines[-2])
    assert re.fullmatch(r"profile \[#{12}\.{12}\]  50%  +\d+s  eta +\d+s  layers: layer 2",
                        lines[-1])
    assert bar.expected == 15.0 and bar.done == 7.5


def test_eta_is_the_expected_work_left_at_the_rate_so_far():
    bar = WeightedProgress(stream=io.StringIO())
    bar.expect(10.0)
    assert bar.eta() is None  # nothing done: no rate yet
    bar.start -= 4.0          # 4 s went by ...
    bar.advance("x", 2.0)     # ... on 2 expected seconds: 2 s per expected second
    assert 15.9 < bar.eta() < 16.5  # 8 expected seconds left
    bar.advance("y", 100.0)
    assert bar.done == 10.0 and bar.eta() == 0.0  # never past the end


def test_the_profilers_steps_are_weighted_by_their_layers_time():
    from conveyor.measure.chain import expected_work

    work = expected_work([1.0, 3.0], 8.0, [8, 4], calls=2, in_context=True, names=["A", "B"])
    assert [(p, label) for p, label, _ in work] == [
        ("layers alone, n=8", "layer 0 A"), ("layers alone, n=8", "layer 1 B"),
        ("every layer in order, n=8", "2 layers"),
        ("layers alone, n=4", "layer 0 A"), ("layers alone, n=4", "layer 1 B"),
        ("every layer in order, n=4", "2 layers")]
    s = [w for _, _, w in work]
    # backward split by forward share: layer 0's b = 2, layer 1's b = 6
    assert s[0] == 3 * 1 + 3 * 2 * 3 + 3 and s[1] == 3 * 3 + 3 * 2 * 9 + 9
    assert s[2] == 2 * 2 * (4 + 8)
    assert s[3:] == [x / 2 for x in s[:3]]  # half the batch, half the time
    alone = expected_work([1.0], 2.0, [8], calls=2, in_context=False, names=["A"])
    assert [p for p, _, _ in alone] == ["layers alone, n=8"]
