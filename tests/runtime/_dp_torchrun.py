"""dp 2 x pp 2 under torchrun: ``torchrun --standalone --nproc-per-node 4
tests/runtime/_dp_torchrun.py OUT.json``; the driver writes every rank's
result of ``_dp_jobs.exact_job`` to OUT.json."""

import json
import sys

from conveyor.runtime import is_driver, launch
from tests.runtime import _dp_jobs

if __name__ == "__main__":
    cfgs = [{"id": "torchrun", "model": "tied", "schedule": "1f1b", "dp": 2}]
    res = launch(_dp_jobs.exact_job, nprocs=4, args=(cfgs,))
    if is_driver():  # global rank 0: one writer
        with open(sys.argv[1], "w") as f:
            json.dump(res, f)
