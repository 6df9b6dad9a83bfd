from hypothesis import given, settings, strategies as st
import pytest

from conveyor.errors import ScheduleError
from conveyor.schedule import Action, build_schedule, schedule_names
from conveyor.views.encode import ALPHABET, decode_row, decode_rows, encode_row, encode_rows

from tests.views.helpers import vshape_split


def test_known_orders_have_short_literal_codes():
    assert encode_rows(build_schedule("gpipe", 4, 64).actions, range(4)) == ["F64B64"] * 4
    assert encode_rows(build_schedule("1f1b", 4, 64).actions, range(4)) == [
        "F4(BF)60B4", "F3(BF)61B3", "F2(BF)62B2", "(FB)64"]
    assert encode_rows(build_schedule("naive", 3, 5).actions, range(3)) == ["FB"] * 3


@pytest.mark.parametrize("name", schedule_names())
def test_every_registered_schedule_round_trips(name):
    for P in (1, 2, 3, 5, 8):
        for M in (1, 2, 7, 16):
            s = build_schedule(name, P, M)
            codes = encode_rows(s.actions, s.placement)
            assert [tuple(r) for r in decode_rows(codes, s.placement)] == list(s.actions)


def test_several_stages_per_rank_and_split_backward_round_trip():
    s = vshape_split(3, 5)
    codes = encode_rows(s.actions, s.placement)
    # rank 0 holds stages 0 and 5: chunk 1's letters are lower case
    assert set(codes[0]) & set("fiw") and set(codes[0]) & set("FIW")
    assert [tuple(r) for r in decode_rows(codes, s.placement)] == list(s.actions)


def test_skipped_and_repeated_micro_batches_use_jumps():
    row = [Action(0, "F", 0), Action(0, "F", 2), Action(0, "F", 1), Action(0, "B", 0)]
    code = encode_row(row, [0])
    assert code == "F@2F@1FB"
    assert decode_row(code, [0]) == row


actions = st.builds(Action, st.sampled_from([2, 5, 9]), st.sampled_from("FBIW"),
                    st.integers(0, 6))


@settings(max_examples=300, deadline=None)
@given(st.lists(actions, max_size=40), st.integers(1, 4))
def test_any_order_round_trips(row, repeat):
    row = row * repeat  # repeats exercise the group coding
    assert decode_row(encode_row(row, [2, 5, 9]), [2, 5, 9]) == row


def test_alphabet_covers_thirteen_chunks():
    assert len(ALPHABET) == 52 and ALPHABET[:4] == "FBIW"
    stages = list(range(13))
    row = [Action(12, "W", 0), Action(0, "F", 0)]
    assert decode_row(encode_row(row, stages), stages) == row
    with pytest.raises(ScheduleError, match="at most 13"):
        encode_row([Action(13, "F", 0)], list(range(14)))


def test_bad_input_is_refused_with_the_reason():
    with pytest.raises(ScheduleError, match="only compute actions"):
        encode_row([Action(0, "SEND_F", 0)], [0])
    with pytest.raises(ScheduleError, match="not one of this rank's stages"):
        encode_row([Action(3, "F", 0)], [0, 1])
    with pytest.raises(ScheduleError, match="unclosed"):
        decode_row("(FB", [0])
    with pytest.raises(ScheduleError, match="names chunk 1"):
        decode_row("f", [0])
    with pytest.raises(ScheduleError, match="bad order code"):
        decode_row("F?", [0])
