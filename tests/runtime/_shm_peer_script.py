"""A rank of test_shm.py's peer-exit test, outside the launcher (which would
stop the survivor itself): ``python _shm_peer_script.py RANK PORT``. Rank 1
maps the transport and leaves without a word; rank 0 posts a receive from it
with a 30 s timeout and prints how long the receive took and what it raised."""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from conveyor.runtime.transport.shm import ShmTransport

rank, port = int(sys.argv[1]), int(sys.argv[2])
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                        world_size=2, timeout=timedelta(seconds=30))
t = ShmTransport(rank=rank, pairs={(1, 0)}, ring_bytes=4096)
if rank == 1:
    os._exit(0)
t0 = time.monotonic()
try:
    t.irecv(torch.zeros(4), 1, 0).wait(timedelta(seconds=30))
    print("received", flush=True)
except RuntimeError as e:
    print(f"after {time.monotonic() - t0:.2f} s: {e}", flush=True)
os._exit(0)
