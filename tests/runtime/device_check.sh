#!/usr/bin/env bash
# Runtime checks for a machine with a GPU (run from the repo root; writes to $OUT
# when set). The runtime tests as they are (multi-rank runs fall back to gloo on
# one GPU; the P=1 runs use NCCL and CUDA), the demo on CPU processes, and the
# demo on one GPU over NCCL.
set -uo pipefail
OUT=${OUT:-/tmp/conveyor-device}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nproc
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.device_count())"
# -c, not a here-document: spawned ranks re-import a main script by path, and
# <stdin> has none.
$PY -c '
from conveyor.runtime import launch
from tests.runtime import _jobs
cfgs = [{"id": f"{s}-M{M}-{d}", "schedule": s, "M": M, "dtype": d, "batch": 13, "steps": 3}
        for s in ("gpipe", "1f1b") for M in (1, 4) for d in ("float64", "float32")]
for r in launch(_jobs.exactness_job, nprocs=1, args=(cfgs,))[0]:
    print("P=1", r["id"], r["backend"], r["device"], "loss %.1e grad %.1e param %.1e" % (
        r["loss_err"], r["grad_err"], r["param_err"]))
'
$PY -m pytest tests/runtime -q -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -15
$PY -m conveyor demo --out "$OUT/demo" --no-progress 2>&1 | tee "$OUT/demo.log" | tail -9
$PY -m conveyor demo -P 1 --epochs 2 --out "$OUT/demo1" --no-progress 2>&1 | tail -6
