"""``torchrun --nproc-per-node 4 tests/runtime/_hang_script.py PID_DIR``: the
hang job of test_hang under torchrun."""

import sys

from conveyor.runtime import launch
from tests.runtime import _ckpt_jobs

if __name__ == "__main__":
    launch(_ckpt_jobs.hang_job, nprocs=4, args=(sys.argv[1], 3.0))
