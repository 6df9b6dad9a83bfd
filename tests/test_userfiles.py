"""Bounded input: every file a user names is read through conveyor.userfiles,
which refuses what is not a regular file before reading a byte, checks the
size before reading, and names JSON nested too deep for the parser.

Each refusal must come fast: a device or a FIFO read "until it ends" would
take all memory or block forever. The bound asserted (10 s) is generous on a
loaded machine; the refusals take microseconds.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from conveyor.errors import PlanError, ScheduleError, TimelineError
from conveyor.plan import load_plan, load_profile
from conveyor.schedule import load_schedule
from conveyor.sim import load_timeline
from conveyor.userfiles import parse_json, read_bytes, read_json

LOADERS = [(load_schedule, ScheduleError, "schedule file"), (load_timeline, TimelineError,
                                                              "timeline"),
           (load_plan, PlanError, "plan"), (load_profile, PlanError, "profile")]


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe.json"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("load, error, what", LOADERS, ids=[w for _, _, w in LOADERS])
@pytest.mark.parametrize("device, kind", [("/dev/zero", "a character device"),
                                          ("/dev/urandom", "a character device")])
def test_devices_are_refused_before_reading(load, error, what, device, kind):
    t0 = time.monotonic()
    with pytest.raises(error, match=f"{what} '{device}' is {kind}, not a file"):
        load(device)
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("load, error, what", LOADERS, ids=[w for _, _, w in LOADERS])
def test_a_fifo_is_refused_without_waiting_for_a_writer(load, error, what, fifo):
    # Opened with O_NONBLOCK: a FIFO with no writer does not block the open.
    done = threading.Event()
    box = {}

    def call():
        try:
            load(fifo)
        except Exception as e:  # noqa: BLE001 - examined below
            box["e"] = e
        done.set()

    threading.Thread(target=call, daemon=True).start()
    assert done.wait(10), "reading a FIFO blocked"
    assert isinstance(box.get("e"), error) and "a FIFO (named pipe), not a file" in str(box["e"])


def test_folders_and_sockets_are_refused(tmp_path):
    with pytest.raises(ScheduleError, match="is a folder, not a file"):
        load_schedule(tmp_path)
    sock = socket.socket(socket.AF_UNIX)
    path = tmp_path / "s.json"
    sock.bind(str(path))
    try:
        with pytest.raises(TimelineError, match="is a socket, not a file"):
            load_timeline(path)
    finally:
        sock.close()


def test_size_is_checked_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "big.json"
    with open(path, "wb") as f:  # sparse: 300 MiB that take no disk
        f.truncate(300 * 2 ** 20)
    reads = []
    real = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: reads.append(n) or real(fd, n))
    with pytest.raises(TimelineError, match=r"is 300.0 MiB, beyond the bound of 256.0 MiB"):
        load_timeline(path)
    assert reads == []  # refused on its size, not after reading it


def test_a_file_larger_than_it_says_is_cut_at_the_bound(tmp_path):
    # /proc files report size 0 and hold more: the read stops one byte past the bound.
    with pytest.raises(ScheduleError, match="holds more than the bound of 16 bytes"):
        read_bytes("/proc/self/status", what="x", error=ScheduleError, limit=16)
    assert read_bytes("/proc/self/status", what="x", limit=1 << 20).startswith(b"Name:")


@pytest.mark.parametrize("load, error, what", LOADERS, ids=[w for _, _, w in LOADERS])
def test_deep_json_is_named_not_a_recursion_error(tmp_path, load, error, what):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(error, match=f"{what} '.*deep.json' nests JSON deeper than the parser"):
        load(path)


def test_parse_json_names_the_source_and_the_cause():
    with pytest.raises(PlanError, match=r"^x\.json is not valid JSON \(Expecting value at line 1 "
                                        r"column 1\); fix it$"):
        parse_json("", source="x.json", error=PlanError, fix="fix it")
    with pytest.raises(PlanError, match="x.json is not valid JSON .*4300"):
        parse_json("1" * 5000, source="x.json", error=PlanError)  # too many digits for int()
    assert parse_json('{"a": [1]}', source="x", error=PlanError) == {"a": [1]}


def test_a_missing_file_names_the_path(tmp_path):
    with pytest.raises(PlanError, match=r"cannot read plan '.*nope.json': No such file"):
        read_json(tmp_path / "nope.json", what="plan", error=PlanError)
