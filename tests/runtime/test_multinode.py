"""Two torchrun agents on this machine act as node 0 and node 1 (c10d
rendezvous over loopback, 2 processes each): P=4 spans both "nodes", and the
pipelined gradients equal the unsplit model's (float64, 1e-10)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.runtime._procs import free_port

pytestmark = pytest.mark.runtime

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "check_exact.py"


def two_nodes(out: Path) -> tuple[list[int], list[str]]:
    """Both torchrun agents; node 0 hosts the rendezvous store. is_host is
    explicit so that a port taken meanwhile by another program fails node 0
    at once rather than letting both agents join a stranger's store."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    port = free_port()
    nodes = []
    for host in (1, 0):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
               "--nproc-per-node", "2", "--rdzv-backend", "c10d",
               "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "conveyor-test",
               "--rdzv-conf", f"is_host={host},join_timeout=60",
               "--local-addr", "127.0.0.1", str(SCRIPT), str(out)]
        nodes.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    logs = []
    try:
        logs.append(nodes[0].communicate(timeout=120)[0])
        if nodes[0].returncode != 0:
            nodes[1].kill()  # its host is gone: do not wait out its join timeout
        logs.append(nodes[1].communicate(timeout=120)[0])
    except subprocess.TimeoutExpired:
        for p in nodes:
            p.kill()
        logs = [p.communicate()[0] for p in nodes]
    return [p.returncode for p in nodes], logs


def test_p4_across_two_torchrun_nodes_is_exact(tmp_path):
    out = tmp_path / "result.json"
    codes, logs = two_nodes(out)
    if codes != [0, 0] and "address already in use" in logs[0].lower():
        codes, logs = two_nodes(out)  # another program took the free port: once more
    assert codes == [0, 0], "\n".join(logs)[-4000:]
    res = json.loads(out.read_text())
    assert res["world"] == 4
    ranks = res["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1, 2, 3]
    assert {r["launcher"] for r in ranks} == {"torchrun"}
    # two agents, two ranks each: the pipeline spans both "nodes"
    assert sorted(r["node"] for r in ranks) == ["0", "0", "1", "1"]
    assert res["loss_err"] <= 1e-10 and res["grad_err"] <= 1e-10
    # every parameter (5 Linear layers x weight, bias) checked once per case (3 cases)
    assert sum(r["params"] for r in ranks) == 30
    assert sum("P=4 launcher=torchrun" in log for log in logs) == 1  # only the driver prints
