"""Every registered schedule, lowered, is valid, deadlock-free and order-safe
(the validator's rules 1-6) over P in 1..16, M in 1..64: exhaustively where
the families change shape (M up to 2P+2, where warm-ups are cut short and
DualPipeV drops micro-batches) for P <= 8, and by hypothesis over the whole
grid."""

import pytest
from hypothesis import given, settings, strategies as st

from conveyor.schedule import add_comms, build_schedule, schedule_names, validate

NAMES = [n for n in schedule_names() if n != "naive"]


@pytest.mark.parametrize("name", NAMES)
def test_small_corner_exhaustively(name):
    for P in range(1, 9):
        for M in range(1, 2 * P + 3):
            s = validate(add_comms(build_schedule(name, P, M)))
            assert s.M == M


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=12, deadline=None, derandomize=True)
@given(P=st.integers(1, 16), M=st.integers(1, 64))
def test_whole_grid(name, P, M):
    validate(add_comms(build_schedule(name, P, M)))
