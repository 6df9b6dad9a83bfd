import json

import pytest

from conveyor.schedule import build_schedule, schedule_names
from conveyor.schedule.decode import decode_schedule
from conveyor.sim import CostModel, simulate
from conveyor.views import decodedata
from conveyor.views.data import PAGE_SOLVED, build_data, cache_dir, checked_M, config_record
from conveyor.views.encode import decode_rows
from conveyor.views.errors import ViewError
from conveyor.views.metrics import bubble_code, exact_bubble, fraction_text

from tests.views.helpers import registered_picky, registered_vshape


def test_gpipe_record_holds_the_seeds_numbers():
    rec = config_record("gpipe", 4, 32, [1.0, 2.0])
    assert rec["o"] == ["F32B32"] * 4 and "pl" not in rec and "M" not in rec
    assert rec["fb"] == "3/35"
    assert rec["fw"] == [35, "3/35"]             # forward only: 35 slots, 3/35 idle
    assert rec["r"] == [[70, "3/35"], [105, "3/35"]]
    # without metrics (M not a power of two), only the order and the formula
    assert config_record("gpipe", 4, 31, [2.0], metrics=False) == {"o": ["F31B31"] * 4,
                                                                     "fb": "3/34"}


def test_naive_runs_one_batch_whatever_m():
    rec = config_record("naive", 4, 9, [2.0])
    assert rec["M"] == 1 and rec["fb"] == "3/4" and rec["r"] == [[12, "3/4"]]


def _build(name, P, M):
    if name == decodedata.NAME:
        return decode_schedule(P, M, new_tokens=decodedata.TOKENS)
    return build_schedule(name, P, M)


def _check_against_python(data):
    ratios = data["ratios"]
    for sc in data["schedules"]:
        if sc["name"] in PAGE_SOLVED:                # solved in the page: no orders here
            assert "configs" not in sc and sc["solver"] == PAGE_SOLVED[sc["name"]]
            continue
        for P, row in enumerate(sc["configs"], start=1):
            for M, rec in enumerate(row, start=1):
                sched = _build(sc["name"], P, M)
                placement = rec.get("pl", list(range(P)))
                assert list(sched.placement) == placement
                decoded = decode_rows(rec["o"], placement)
                assert [tuple(r) for r in decoded] == list(sched.actions)
                assert ("r" in rec) == ("fw" in rec) == checked_M(M)
                if not checked_M(M):
                    continue
                for ratio, (T, bubble) in zip(ratios, rec["r"]):
                    tl = simulate(sched, CostModel(forward=1, backward=ratio))
                    assert (T, bubble) == (tl.step_time, bubble_code(tl))
                fw = simulate(sched.without_backward(), CostModel(forward=1))
                assert rec["fw"] == [fw.step_time, bubble_code(fw)]


def test_small_grid_equals_python_simulation():
    data = build_data(P_max=5, M_max=6, ratios=(1, 1.5, 3), jobs=1, cache=False)
    assert [s["name"] for s in data["schedules"]] == schedule_names() + ["decode"]
    _check_against_python(data)


def test_the_decode_entry_holds_its_closed_form():
    data = build_data(names=["decode"], P_max=4, M_max=8, ratios=(2,), jobs=1, cache=False)
    sc = data["schedules"][0]
    assert sc["rounds"] == decodedata.TOKENS and "lanes" in sc["summary"]
    for P, row in enumerate(sc["configs"], start=1):
        for M, rec in enumerate(row, start=1):
            # One lane: (P-1)/P idle; the simulated bubble equals the closed form.
            assert rec["fb"] == ("0/1" if P == 1 else f"{P - 1}/{P}") or M > 1
            if "fw" in rec:
                assert rec["fw"][1] == rec["fb"] or rec["fw"][1] == "0/1" == rec["fb"]
    assert sc["configs"][3][7]["fb"] == "3/67"  # P = 4, M = 8: 1 - 64/(8*8 + 3)


def test_generic_schedule_with_chunks_and_split_backward():
    with registered_vshape() as name:
        data = build_data(names=[name], P_max=3, M_max=4, ratios=(2,), jobs=2, cache=False)
        _check_against_python(data)
    rec = data["schedules"][0]["configs"][2][3]      # P=3, M=4
    assert rec["pl"] == [0, 1, 2, 2, 1, 0] and rec["fb"] is None
    assert data["schedules"][0]["formula"] is None


def test_configurations_a_generator_refuses_carry_its_reason():
    with registered_picky() as name:
        data = build_data(names=[name], P_max=3, M_max=4, ratios=(2,), jobs=1, cache=False)
    row = data["schedules"][0]["configs"][1]                 # P = 2
    assert row[0] == {"err": "test-picky needs M to be a multiple of P (P=2, M=1); use M=2"}
    assert row[1]["o"] == ["F2B2", "F2B2"] and "err" not in row[3]


def test_progress_names_each_schedule_once():
    seen = []
    build_data(names=["gpipe", "1f1b", "zb-auto"], P_max=3, M_max=4, jobs=1, cache=False,
               on_progress=lambda name, done, total, s: seen.append((name, done, total)))
    assert seen == [("gpipe", 1, 2), ("1f1b", 2, 2)]          # zb-auto is solved in the page


def test_cache_is_used_and_keyed_by_options(monkeypatch, tmp_path):
    monkeypatch.setenv("CONVEYOR_CACHE_DIR", str(tmp_path))
    built = []
    first = build_data(P_max=2, M_max=3, jobs=1, on_build=lambda: built.append(1))
    again = build_data(P_max=2, M_max=3, jobs=1, on_build=lambda: built.append(2))
    assert built == [1] and again == first and cache_dir() == tmp_path
    build_data(P_max=2, M_max=3, ratios=(1,), jobs=1, on_build=lambda: built.append(3))
    assert built == [1, 3]
    for f in tmp_path.glob("viz-*.json"):
        f.write_text("{broken")                    # a damaged cache entry is rebuilt
    assert build_data(P_max=2, M_max=3, jobs=1, on_build=lambda: built.append(4)) == first
    assert built == [1, 3, 4]
    newest = max(tmp_path.glob("viz-*.json"), key=lambda f: f.stat().st_mtime_ns)
    assert json.loads(newest.read_text()) == first


@pytest.mark.parametrize("kwargs, match", [
    (dict(P_max=0), "P_max=0 is out of range"),
    (dict(M_max=1000), "M_max=1000 is out of range"),
    (dict(ratios=()), "no backward/forward cost ratios"),
    (dict(ratios=(2, -1)), "ratio -1 is not valid"),
])
def test_bad_options_name_the_value(kwargs, match):
    with pytest.raises(ViewError, match=match):
        build_data(cache=False, **kwargs)


def test_exact_bubble_and_text():
    tl = simulate(build_schedule("gpipe", 4, 32), CostModel(forward=1, backward=1.5))
    assert str(exact_bubble(tl)) == "3/35"
    assert fraction_text(exact_bubble(tl)) == "3/35 = 8.6%"
    odd = simulate(build_schedule("gpipe", 3, 5), CostModel(forward=[0.1, 0.37, 0.2]))
    assert exact_bubble(odd) is None                 # not a small fraction: percent only
    assert fraction_text(None, odd.bubble_overall).endswith("%")


def test_spec_info_shows_whatever_plain_fields_a_spec_has():
    import dataclasses

    from conveyor.schedule.generators import _REGISTRY, ScheduleSpec, get_spec
    from conveyor.views.data import spec_info

    Rich = dataclasses.make_dataclass("Rich", [("memory_bound", str, ""), ("tags", tuple, ())],
                                      bases=(ScheduleSpec,), frozen=True)
    base = get_spec("1f1b")
    _REGISTRY["test-rich"] = Rich("test-rich", base.build, "rich", base.bubble, "(P-1)/(M+P-1)",
                                  memory_bound="P micro-batches on rank 0", tags=("v", "zb"))
    try:
        info = spec_info("test-rich")
    finally:
        _REGISTRY.pop("test-rich")
    assert info == {"name": "test-rich", "summary": "rich", "formula": "(P-1)/(M+P-1)",
                    "memory_bound": "P micro-batches on rank 0", "tags": ["v", "zb"]}
