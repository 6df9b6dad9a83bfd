"""``[torchrun --max-restarts 1 --nproc-per-node P] python
tests/runtime/_elastic_script.py OUT STEPS [KILL_AT]``: the elastic job; the
driver writes the merged result to OUT/result.json."""

import json
import sys
from pathlib import Path

from conveyor.runtime import is_driver, launch
from tests.runtime._elastic_jobs import elastic_job, merged

if __name__ == "__main__":
    out, steps = sys.argv[1], int(sys.argv[2])
    kill_at = int(sys.argv[3]) if len(sys.argv) > 3 else None
    results = launch(elastic_job, nprocs=2, args=(out, steps, kill_at))
    if is_driver():
        Path(out, "result.json").write_text(json.dumps(merged(results)))
