"""``conveyor viz --serve``: the explorer page with Python simulating on request.

The server binds 127.0.0.1 only, and answers only requests whose ``Host`` is
a loopback name (127.0.0.1, localhost, [::1]), given once: a web page
elsewhere that re-points its own host name at 127.0.0.1 (DNS rebinding), or a
request with two Host headers, gets 403. ``/`` is the page (without the bulk data);
``/api/timeline?schedule=gpipe&P=4&M=8&view=step&ratio=2`` runs the engine and
simulator for that one configuration and returns its events and metrics, so
any cost ratio can be shown exactly as Python computes it.
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from conveyor.errors import ConveyorError
from conveyor.schedule import build_schedule, get_spec, schedule_names
from conveyor.sim import CostModel, formula_bubble, simulate
from conveyor.views.data import ALPHABET, PAGE_SOLVED, spec_info
from conveyor.views.errors import ViewError
from conveyor.views.metrics import bubble_code, stage_peaks
from conveyor.views.page import render_page

__all__ = ["SERVE_RATIOS", "timeline_response", "make_server", "loopback_host"]

# The server simulates any ratio; these are the stops of the page's slider.
SERVE_RATIOS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0)


def _int(query: dict, key: str, top: int) -> int:
    raw = query.get(key, [""])[0]
    try:
        value = int(raw)
    except ValueError:
        raise ViewError(f"{key}={raw!r} is not an integer; use 1..{top}") from None
    if not 1 <= value <= top:
        raise ViewError(f"{key}={value} is out of range; use 1..{top}")
    return value


def timeline_response(query: dict[str, list[str]], *, P_max: int = 16, M_max: int = 64) -> dict:
    """Simulate one configuration for the page. ``query`` is a parsed query
    string (schedule, P, M, view "fwd" or "step", ratio). Raises ViewError or
    ScheduleError on bad values."""
    name = query.get("schedule", ["gpipe"])[0]
    get_spec(name)
    P, M = _int(query, "P", P_max), _int(query, "M", M_max)
    view = query.get("view", ["step"])[0]
    if view not in ("fwd", "step"):
        raise ViewError(f"view={view!r}; use 'fwd' (forward only) or 'step' (training step)")
    raw = query.get("ratio", ["2"])[0]
    try:
        ratio = float(raw)
    except ValueError:
        raise ViewError(f"ratio={raw!r} is not a number; give the backward/forward cost, "
                        f"e.g. 2") from None
    sched = build_schedule(name, P, M).compute_only()
    if view == "fwd":
        sched = sched.without_backward()
    tl = simulate(sched, CostModel(forward=1.0, backward=ratio))
    fb = formula_bubble(name, P, M)
    fwd = view == "fwd"
    return {
        "P": P, "S": sched.S, "M": sched.M, "placement": list(sched.placement),
        "events": [[e.rank, str(e.action), e.start, e.end] for e in tl.events],
        "python": {"T": tl.step_time, "bubble": bubble_code(tl),
                   "formula": None if fb is None else f"{fb.numerator}/{fb.denominator}",
                   "peaks": None if fwd else stage_peaks(tl),
                   "rankPeaks": None if fwd or sched.S == P else tl.peak_activations()},
    }


_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def loopback_host(host: str | None) -> bool:
    """True for a Host header that names this machine's loopback (any port)."""
    if not host:
        return False
    try:
        name = urlsplit(f"//{host.strip()}").hostname or ""
    except ValueError:  # a malformed name, e.g. "[::1"
        return False
    return name.lower() in _LOOPBACK


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def _send(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, obj) -> None:
        self._send(code, "application/json", json.dumps(obj).encode())

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        # Exactly one Host header: with two, a proxy or browser in front could
        # act on the second while this check passed the first.
        hosts = self.headers.get_all("Host") or []
        if len(hosts) != 1 or not loopback_host(hosts[0]):
            self._json(403, {"error": "this server answers only requests with one Host "
                                      "header naming 127.0.0.1 or localhost"})
            return
        url = urlsplit(self.path)
        if url.path in ("/", "/index.html"):
            self._send(200, "text/html; charset=utf-8", self.server.page)
        elif url.path == "/api/timeline":
            try:
                body = timeline_response(parse_qs(url.query), P_max=self.server.P_max,
                                         M_max=self.server.M_max)
            except ConveyorError as e:
                self._json(400, {"error": str(e)})
                return
            self._json(200, body)
        else:
            self._json(404, {"error": f"no such path {url.path!r}; the explorer is at /"})

    def log_message(self, format, *args) -> None:  # noqa: A002 - keep the terminal quiet
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    page: bytes
    P_max: int
    M_max: int


def make_server(*, port: int = 0, P_max: int = 16, M_max: int = 64,
                ratios=SERVE_RATIOS, initial: dict | None = None,
                measured: dict | None = None, sweep: dict | None = None,
                steps: dict | None = None) -> ThreadingHTTPServer:
    """An HTTP server on 127.0.0.1:``port`` (0: any free port) serving the page
    in served mode. Call ``serve_forever()`` on it; ``server_address`` has the
    port."""
    data = {"alphabet": ALPHABET, "P_max": P_max, "M_max": M_max,
            "ratios": [int(x) if float(x).is_integer() else x for x in ratios],
            "schedules": [dict(spec_info(n), **({"solver": PAGE_SOLVED[n]}
                                                 if n in PAGE_SOLVED else {}))
                          for n in schedule_names()]}
    server = _Server(("127.0.0.1", port), _Handler)
    server.page = render_page(data, mode="serve", initial=initial,
                              measured=None if sweep or steps else measured, sweep=sweep,
                              steps=steps).encode()
    server.P_max, server.M_max = P_max, M_max
    return server
