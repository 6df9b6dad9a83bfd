"""``python tests/runtime/_fault_script.py FAULT PID_DIR [P]`` (or under
``torchrun --nproc-per-node P``): one fault of _fault_jobs (P=4 by default)."""

import sys

from conveyor.runtime import launch
from tests.runtime._fault_jobs import fault_job

if __name__ == "__main__":
    launch(fault_job, nprocs=int(sys.argv[3]) if len(sys.argv) > 3 else 4,
           args=(sys.argv[1], sys.argv[2]))
