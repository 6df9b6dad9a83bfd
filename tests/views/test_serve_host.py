"""``viz --serve`` answers only requests addressed to loopback (DNS rebinding)."""

from __future__ import annotations

import http.client
import threading

import pytest

from conveyor.views.serve import loopback_host, make_server


@pytest.fixture(scope="module")
def server():
    srv = make_server(port=0, P_max=4, M_max=8)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def _get(port: int, path: str, host: str | None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("GET", path, skip_host=True)
    if host is not None:
        conn.putheader("Host", host)
    conn.endheaders()
    status = conn.getresponse().status
    conn.close()
    return status


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST",
                                  "[::1]:{port}"])
def test_loopback_hosts_are_served(server, host):
    assert _get(server, "/", host.format(port=server)) == 200
    assert _get(server, "/api/timeline?schedule=gpipe&P=2&M=2", host.format(port=server)) == 200


@pytest.mark.parametrize("host", ["evil.example:{port}", "127.0.0.1.evil.example",
                                  "192.168.1.5:{port}", "", None, "[::1"])
def test_other_hosts_get_403(server, host):
    h = None if host is None else host.format(port=server)
    assert _get(server, "/", h) == 403
    assert _get(server, "/api/timeline?schedule=gpipe&P=2&M=2", h) == 403


def test_loopback_host_names():
    assert loopback_host("localhost:8765") and loopback_host("127.0.0.1")
    assert not loopback_host("localhost.evil.example") and not loopback_host(None)


def _get_hosts(port: int, path: str, hosts: list[str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("GET", path, skip_host=True)
    for h in hosts:
        conn.putheader("Host", h)
    conn.endheaders()
    status = conn.getresponse().status
    conn.close()
    return status


@pytest.mark.parametrize("hosts", [["127.0.0.1:{port}", "evil.example"],
                                   ["evil.example", "127.0.0.1:{port}"],
                                   ["127.0.0.1:{port}", "127.0.0.1:{port}"]])
def test_two_host_headers_get_403(server, hosts):
    # Exactly one Host: a second one, even a loopback one, is refused, so no
    # proxy in front can act on a header this check did not read.
    hs = [h.format(port=server) for h in hosts]
    assert _get_hosts(server, "/", hs) == 403
    assert _get_hosts(server, "/api/timeline?schedule=gpipe&P=2&M=2", hs) == 403
    assert _get_hosts(server, "/", hs[:1]) == (200 if "127" in hs[0] else 403)
