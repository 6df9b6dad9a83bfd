import json
import os
import re
import stat
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conveyor.schedule import build_schedule
from conveyor.sim import CostModel, simulate
from conveyor.views.files import atomic_write
from conveyor.views.page import page_data, render_page
from conveyor.views.serve import make_server

from tests.views.helpers import measured_like
from conveyor.views.measured import measured_section

MB = 1_000_000


def _embedded(html: str) -> dict:
    return page_data(html)


def test_default_page_is_at_most_3_mb(default_page, default_data):
    size = default_page.stat().st_size
    assert size <= 3 * MB, f"page is {size / MB:.2f} MB"
    data = _embedded(default_page.read_text())
    # it covers P 1..16 x M 1..64 x every registered schedule
    assert data["P_max"] == 16 and data["M_max"] == 64
    for sc in data["schedules"]:
        if "solver" in sc:                           # zb-auto: solved in the page
            continue
        assert len(sc["configs"]) == 16 and {len(row) for row in sc["configs"]} == {64}


def test_page_refers_to_nothing_outside_itself(default_page):
    html = default_page.read_text()
    assert not re.search(r"<link|<script[^>]*\bsrc=|<img|<iframe|@import|url\(\s*['\"]?http",
                         html)
    # the only URL is the SVG namespace, a name rather than something fetched
    assert set(re.findall(r"https?://[^\s\"'<>]+", html)) == {"http://www.w3.org/2000/svg"}


def test_data_cannot_close_the_script_block():
    sec = measured_section(measured_like("gpipe", 2, 2), source="</script><b>x.json")
    html = render_page({"schedules": [], "ratios": [2]}, measured=sec,
                       initial={"schedule": "</script><script>alert(1)"})
    assert html.count("</script>") == 3              # the data block and the two scripts
    data = _embedded(html)
    assert data["initial"]["schedule"] == "</script><script>alert(1)"
    assert data["measured"]["file"] == "script><b>x.json"


def test_failed_write_leaves_no_file(tmp_path):
    def write(tmp):
        Path(tmp).write_text("partial")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "page.html", write)
    assert list(tmp_path.iterdir()) == []


def test_written_file_has_the_umask_mode_without_touching_the_umask(tmp_path, monkeypatch):
    # The mode a plain open() would give (0666 less the umask), obtained
    # without umask(0)-and-back, which races with other threads' files.
    old = os.umask(0o027)
    try:
        def no_umask(*a):
            raise AssertionError("atomic_write must not call os.umask")
        monkeypatch.setattr(os, "umask", no_umask)
        out = atomic_write(tmp_path / "page.html", lambda tmp: Path(tmp).write_text("x"))
        monkeypatch.undo()
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["page.html"]  # no temporary left


@pytest.fixture
def server():
    srv = make_server(port=0, P_max=8, M_max=32)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=10) as res:
            return res.status, res.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_served_timeline_is_python_simulation(server):
    assert server.startswith("http://127.0.0.1:")
    status, html = _get(server + "/")
    assert status == 200 and _embedded(html)["mode"] == "serve"
    status, body = _get(server + "/api/timeline?schedule=gpipe&P=4&M=32&view=step&ratio=1")
    body = json.loads(body)
    tl = simulate(build_schedule("gpipe", 4, 32), CostModel(forward=1, backward=1))
    assert body["python"]["T"] == 70 and body["python"]["bubble"] == "3/35"
    assert body["python"]["formula"] == "3/35" and body["python"]["peaks"] == [32] * 4
    assert sorted(map(tuple, body["events"])) == sorted(
        (e.rank, str(e.action), e.start, e.end) for e in tl.events)
    status, body = _get(server + "/api/timeline?schedule=1f1b&P=3&M=4&view=fwd&ratio=2.5")
    assert status == 200 and {e[1][1] for e in json.loads(body)["events"]} == {"F"}


@pytest.mark.parametrize("query, message", [
    ("schedule=gpipe&P=9&M=4", "P=9 is out of range; use 1..8"),
    ("schedule=nope&P=2&M=4", "unknown schedule 'nope'"),
    ("schedule=gpipe&P=2&M=x", "M='x' is not an integer"),
    ("schedule=gpipe&P=2&M=2&view=back", "view='back'"),
    ("schedule=gpipe&P=2&M=2&ratio=-1", "backward=-1.0 is not valid"),
])
def test_served_bad_requests_say_why(server, query, message):
    status, body = _get(server + "/api/timeline?" + query)
    assert status == 400 and message in json.loads(body)["error"]


def test_served_unknown_path_is_404(server):
    status, body = _get(server + "/favicon.ico")
    assert status == 404 and "the explorer is at /" in json.loads(body)["error"]


def test_browser_tests_skip_outside_ci_and_fail_inside(monkeypatch):
    import tests.views.conftest as cf
    monkeypatch.setattr(cf, "CHROMIUM", "/nonexistent/chromium")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="/nonexistent/chromium is missing"):
        cf._need_chromium()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="cannot run in CI"):
        cf._need_chromium()
