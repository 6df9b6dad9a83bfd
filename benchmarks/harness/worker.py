"""What each benchmark rank runs: every case, every framework, alternating.

For each case (schedule, M) a rank builds one runner per framework, each on
its own copy of the same stage (same seed), warms them up, then times them in
turns: conveyor, torch, torch, conveyor, ... so that a noisy moment on the
machine lands on both. Every timed step starts after a barrier. Rank 0
gathers the ranks' raw measurements per case and returns them.
"""

from __future__ import annotations

import gc
import time

import torch
import torch.distributed as dist

from .config import Unsupported
from .frameworks import make_runner, stage_plan
from .probe import Probe, StageStamps, SendCounter, link_latency
from .workloads import build_stages, loss_fn, make_batch, measure_stage_costs

ONE = "one process"  # the baselines' names among the frameworks
ONE_MB = "one process, micro-batches"

__all__ = ["run_cases", "measure_memory", "OneProcess", "ONE", "ONE_MB"]


def run_cases(rank: int, P: int, payload: dict, progress) -> list[dict] | None:
    """Time ``payload["cases"]`` (a list of (schedule, M)) on this rank.

    payload: workload, cases, repeats, warmup, frameworks, device ("cpu" or
    "cuda"). Returns, on rank 0, one raw record per case: ``{"schedule", "M",
    "P", "unsupported": {fw: why}, "ranks": [per-rank {fw: [per-step
    measurement]}], "own": {fw: its own view of one more step}, "latency":
    [per-cut seconds], "one_process_s", "costs"}``; None on the other ranks.
    With ``payload["baseline"]`` the unsplit model on one process takes its
    turn in every round (``one_process_s``: its step times on rank 0), and
    ``costs`` holds each stage's F and B measured alone, for the ideal.
    """
    counter, workload, device = _setup(payload)
    out = []
    for schedule, M in payload["cases"]:
        x, y = _batch(workload, M, device)
        latency = link_latency(rank, P, nbytes=workload.activation_bytes(M), device=device)
        runners, recorders, unsupported = _runners(payload, workload, rank, P, schedule, M,
                                                   device)
        if payload.get("baseline"):
            runners[ONE], recorders[ONE] = OneProcess(workload, rank), StageStamps()
            runners[ONE_MB], recorders[ONE_MB] = OneProcess(workload, rank, M), StageStamps()
        for runner in runners.values():
            for _ in range(payload["warmup"]):
                runner.step(x, y)
        steps: dict[str, list[dict]] = {fw: [] for fw in runners}
        names = list(runners)
        for rep in range(payload["repeats"]):
            k = rep % len(names)  # rotate who goes first, so no one always follows the same
            for fw in names[k:] + names[:k]:
                steps[fw].append(_timed_step(runners[fw], recorders[fw], counter, x, y, device))
        costs = None
        if payload.get("baseline"):
            # The ideal's stage costs, measured alone on rank 0 in the same minute.
            costs = measure_stage_costs(workload, P, M) if rank == 0 else None
            dist.barrier()
        # Each framework's own view of one more step, where it has one (collective).
        own = {}
        for fw, r in runners.items():
            if hasattr(r, "recorded_step"):
                recorders[fw].reset()  # keep the probe's stamps out of the timed steps
                own[fw] = r.recorded_step(x, y)
        gathered = [None] * P if rank == 0 else None
        dist.gather_object(steps, gathered, dst=0)
        if rank == 0:
            one = [m["t1"] - m["t0"] for m in gathered[0].pop(ONE, [])]
            one_mb = [m["t1"] - m["t0"] for m in gathered[0].pop(ONE_MB, [])]
            for g in gathered[1:]:
                g.pop(ONE, None)
                g.pop(ONE_MB, None)
            out.append({"schedule": schedule, "P": P, "M": M, "unsupported": unsupported,
                        "ranks": gathered, "own": own, "latency": latency,
                        "one_process_s": one, "one_process_mb_s": one_mb,
                        "costs": costs})
            if progress is not None:
                progress.put(("case", schedule, P, M))
        del runners, recorders
        gc.collect()
    return out if rank == 0 else None


def measure_memory(rank: int, P: int, payload: dict) -> list[dict] | None:
    """RSS of one step per case and framework, after one warm-up step.

    First sets glibc's mmap threshold low, so that freed activations leave
    RSS (RSS then follows what the process holds, not its high-water mark);
    that costs speed, which is why timing runs in other processes. Returns,
    on rank 0, per case ``[per-rank {fw: measurement}]``.
    """
    _return_freed_memory()
    counter, workload, device = _setup(payload)
    out = []
    for schedule, M in payload["cases"]:
        x, y = _batch(workload, M, device)
        runners, recorders, _ = _runners(payload, workload, rank, P, schedule, M, device)
        memory = {}
        for fw, runner in runners.items():
            runner.step(x, y)  # buffers a framework keeps between steps are not growth
            memory[fw] = _timed_step(runner, recorders[fw], counter, x, y, device)
            del memory[fw]["events"]
        gathered = [None] * P if rank == 0 else None
        dist.gather_object(memory, gathered, dst=0)
        if rank == 0:
            out.append(gathered)
        del runners, recorders
        gc.collect()
    return out if rank == 0 else None


def _return_freed_memory() -> None:
    """Serve allocations over 64 KiB by mmap, which returns them to the OS on
    free (glibc's MALLOC_MMAP_THRESHOLD_=65536, set from inside the process)."""
    import ctypes

    try:
        ctypes.CDLL(None).mallopt(-3, 65536)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: RSS keeps the allocator's high-water mark


def _setup(payload):
    counter = SendCounter().install()  # before any runner captures dist.isend
    workload = payload["workload"]
    torch.set_num_threads(getattr(workload, "threads", 1))
    device = torch.device(payload.get("device", "cpu"))
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())  # set by the launcher
    return counter, workload, device


def _batch(workload, M: int, device):
    x, y = make_batch(workload, M)
    return x.to(device), y.to(device)


def _runners(payload, workload, rank, P, schedule, M, device):
    """One runner per framework on its own copy of this rank's stages, each
    wrapped in a probe; frameworks that cannot run the case say why.

    Whether a framework runs the case is decided the same way on every rank,
    so either all ranks build its runner or none does.
    """
    runners, recorders, unsupported = {}, {}, {}
    for fw in payload["frameworks"]:
        rec = StageStamps()
        try:
            S, placement = stage_plan(fw, schedule, P, M)
            stages = build_stages(workload, P, S=S)
            modules = {s: Probe(stages[s], rec, s).to(device) for s in placement[rank]}
            runners[fw] = make_runner(fw, modules, rank=rank, P=P, schedule=schedule, M=M,
                                      device=device)
            recorders[fw] = rec
        except Unsupported as e:
            unsupported[fw] = str(e)
    return runners, recorders, unsupported


def _timed_step(runner, rec: StageStamps, counter: SendCounter, x, y, device) -> dict:
    dist.barrier()
    rec.reset()
    with counter.counting():
        c0 = time.process_time()
        t0 = time.perf_counter()
        runner.step(x, y)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t1 = time.perf_counter()
        c1 = time.process_time()
    stats = getattr(runner, "stats", None) or {}
    return {"t0": t0, "t1": t1, "events": list(rec.events), "rss_start": rec.rss_start,
            "rss_peak": rec.rss_peak, "bytes": counter.bytes, "sends": counter.sends,
            "own_bytes": stats.get("sent_bytes"), "cpu_s": c1 - c0}


class OneProcess:
    """The unsplit model trained on rank 0 alone (one thread), the baseline of
    the speedup; the other ranks wait at the barrier of each timed step, so
    it takes turns with the pipelines like another framework. With ``M`` it
    accumulates gradients over the same M micro-batches as the pipelines
    (weighted by size, as one unsplit step), separating what pipelining gains
    from what cutting the batch costs or saves on this CPU."""

    def __init__(self, workload, rank: int, M: int | None = None):
        from .config import LR
        from .workloads import full_model

        self.rank, self.M = rank, M
        if rank == 0:
            self.model = full_model(workload)
            self.opt = torch.optim.SGD(self.model.parameters(), lr=LR)

    def step(self, x, y) -> None:
        if self.rank != 0:
            return
        if self.M is None:
            loss_fn(self.model(x), y).backward()
        else:
            for xs, ys in zip(x.tensor_split(self.M), y.tensor_split(self.M)):
                (loss_fn(self.model(xs), ys) * (len(xs) / len(x))).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
