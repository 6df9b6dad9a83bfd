"""``python tests/runtime/_freeze_script.py POINT HOW TRANSPORT OUT_DIR TIMEOUT_S``
(or under ``torchrun --nproc-per-node N``): one frozen-peer job of
_freeze_jobs.py, under conveyor's launcher or torchrun."""

import sys

from conveyor.runtime import launch
from tests.runtime._freeze_jobs import freeze_job, nprocs

if __name__ == "__main__":
    point, how, transport, out_dir, timeout_s = sys.argv[1:6]
    launch(freeze_job, nprocs=nprocs(point),
           args=(point, how, transport, out_dir, float(timeout_s)))
