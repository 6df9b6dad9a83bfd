import json

import pytest
from hypothesis import given, strategies as st, settings

from conveyor.errors import ScheduleError
from conveyor.schedule import (
    add_comms, build_schedule, dumps_csv, dumps_json, load_schedule, loads_csv, loads_json,
    save_schedule, validate,
)
from conveyor.schedule.ir import Action, v_placement

NAMES = ["naive", "gpipe", "1f1b"]


@settings(deadline=None)  # the machine is shared: timing is not under test
@given(st.sampled_from(NAMES), st.integers(1, 6), st.integers(1, 10), st.booleans())
def test_json_and_csv_round_trip(name, P, M, comms):
    s = build_schedule(name, P, M)
    if comms:
        s = add_comms(s)
    assert loads_json(dumps_json(s)) == s
    back = loads_csv(dumps_csv(s), name=s.name)
    assert back.actions == s.actions and back.placement == s.placement and back.M == s.M


def test_files_by_suffix(tmp_path):
    s = build_schedule("1f1b", 3, 5)
    for suffix in (".json", ".csv"):
        path = save_schedule(s, tmp_path / f"sched{suffix}")
        assert load_schedule(path).actions == s.actions
    with pytest.raises(ScheduleError, match="name it .json or .csv"):
        save_schedule(s, tmp_path / "sched.txt")


def test_reads_torch_pipelining_csv_layout():
    # The layout torch.distributed.pipelining's _dump_csv writes: one row per rank,
    # empty cells where a rank idles, FSDP bookkeeping actions, an overlapped F/B pair.
    text = ("0UNSHARD,0F0,,0F1,,(0F2;0B0)OVERLAP_F_B,0B1,0B2,0RESHARD\n"
            ",1F0,1B0,1F1,1B1,,1F2,1B2,\n")
    s = loads_csv(text, name="from-torch")
    assert [str(a) for a in s.actions[0]] == ["0F0", "0F1", "0F2", "0B0", "0B1", "0B2"]
    assert s.P == 2 and s.M == 3 and s.placement == (0, 1)
    validate(s)


def test_csv_infers_v_shaped_placement():
    text = "0F0,3F0,3B0,0B0\n1F0,2F0,2B0,1B0\n"
    s = loads_csv(text)
    assert s.placement == v_placement(2)
    validate(s)


@pytest.mark.parametrize("text,pattern", [
    ("{not json", "not valid JSON"),
    ('{"name": "x"}', "expected a JSON object with 'actions'"),
    ('{"actions": [["0F0", 3]]}', "is not an action string"),
    ('{"actions": [["0X0"]]}', "not an action"),
    ('{"P": 3, "actions": [["0F0", "0B0"]]}', "P=3 but 'actions' has 1 rank rows"),
    ('{"actions": [["0F0", "0B0"], ["0F1"]]}', "stage 0 appears on rank 0 and on rank 1"),
])
def test_bad_json_is_rejected(text, pattern):
    with pytest.raises(ScheduleError, match=pattern):
        loads_json(text)


def test_unreadable_file(tmp_path):
    with pytest.raises(ScheduleError, match="cannot read schedule file"):
        load_schedule(tmp_path / "missing.json")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ScheduleError, match=r"bin.csv' is not text \(byte 0 is not UTF-8\)"):
        load_schedule(tmp_path / "bin.csv")


def test_json_is_readable():
    data = json.loads(dumps_json(build_schedule("gpipe", 2, 1)))
    assert data["actions"] == [["0F0", "0B0"], ["1F0", "1B0"]]
    assert data["placement"] == [0, 1] and data["format"] == "conveyor.schedule/1"
    assert Action.parse(data["actions"][1][1]) == Action(1, "B", 0)
