"""How fast a fault ends every process: fault -> the last rank gone.

    .venv/bin/python benchmarks/bench_faults.py [--runs 3] [--out benchmarks/faults.md]

Runs the fault jobs of the tests (tests/runtime/_fault_jobs.py: 1F1B, M=4,
P=4, the fault on rank 2) as a script, under conveyor's local launcher and
under ``torchrun --standalone --nproc-per-node 4``:

    kill      rank 2 SIGKILLs itself in its forward of micro-batch 2
    backward  a custom autograd Function raises in rank 2's backward of mb 2
    header    rank 2 gets a shape header it cannot read from rank 1
    oversize  rank 1 sends rank 2 a larger activation than announced: gloo
              aborts rank 2 (SIGABRT)

For each it reports the median over ``runs`` of two wall times: from the
fault (a timestamp the faulting code writes just before it strikes) to the
end of the launching command (local: the script's exit after it reaped every
rank; torchrun: the agent's exit after it reaped its workers), and the whole
command from its start (process start-up included). Also checks that no rank
is left and that the command failed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests' process helpers

from tests.runtime._procs import alive, env  # noqa: E402
SCRIPT = ROOT / "tests/runtime/_fault_script.py"
LAUNCHERS = {
    "local": [sys.executable],
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                 "--nproc-per-node", "4"],
}


def once(launcher: str, fault: str) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as d:
        t0 = time.time()
        run = subprocess.run(LAUNCHERS[launcher] + [str(SCRIPT), fault, d, "4"], cwd=ROOT,
                             env=env(), capture_output=True, text=True, timeout=300)
        end = time.time()
        assert run.returncode != 0, run.stderr[-2000:]
        pids = [int(p.read_text()) for p in Path(d).glob("rank*.pid")]
        assert len(pids) == 4 and not any(alive(p) for p in pids), "ranks left"
        fault_at = float((Path(d) / "fault_at").read_text().split()[0])
        return end - fault_at, end - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/faults.md")
    args = ap.parse_args()
    rows = []
    for launcher in LAUNCHERS:
        for fault in ("kill", "backward", "header", "oversize"):
            got = [once(launcher, fault) for _ in range(args.runs)]
            after = statistics.median(g[0] for g in got)
            whole = statistics.median(g[1] for g in got)
            rows.append(f"| {launcher} | {fault} | {after:.2f} s | {max(g[0] for g in got):.2f} s "
                        f"| {whole:.1f} s |")
            print(rows[-1], flush=True)
    load = os.getloadavg()
    text = ("# Fault to exit (benchmarks/bench_faults.py)\n\n"
            f"P = 4, 1F1B, M = 4, gloo on CPU; median and max of {args.runs} runs; "
            f"{os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f} / "
            f"{load[2]:.1f} (1/5/15 min) at the end.\n\n"
            "| launcher | fault | fault -> command ended (median) | (max) | whole command "
            "(median) |\n|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
