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
import traceback

import torch
import torch.distributed as dist

from conveyor.bench.frameworks import Unsupported, make_runner
from conveyor.bench.probe import Probe, Recorder, SendCounter, link_latency
from conveyor.bench.workloads import build_stages, make_batch

__all__ = ["run_cases", "measure_memory", "time_single_process"]


def run_cases(rank: int, P: int, payload: dict, progress) -> list[dict] | None:
    """Time ``payload["cases"]`` (a list of (schedule, M)) on this rank.

    payload: workload, cases, repeats, warmup, frameworks, device ("cpu" or
    "cuda"). Returns, on rank 0, one raw record per case: ``{"schedule", "M",
    "P", "unsupported": {fw: why}, "ranks": [per-rank {fw: [per-step
    measurement]}], "own": {fw: its own view of one more step}, "latency":
    [per-cut seconds]}``; None on the other ranks.
    """
    counter, workload, device = _setup(payload)
    out = []
    for schedule, M in payload["cases"]:
        x, y = _batch(workload, M, device)
        latency = link_latency(rank, P, nbytes=workload.activation_bytes(M), device=device)
        runners, recorders, unsupported = _runners(payload, workload, rank, P, schedule, M,
                                                   device)
        for runner in runners.values():
            for _ in range(payload["warmup"]):
                runner.step(x, y)
        steps: dict[str, list[dict]] = {fw: [] for fw in runners}
        names = list(runners)
        for rep in range(payload["repeats"]):
            for fw in (names if rep % 2 == 0 else names[::-1]):
                steps[fw].append(_timed_step(runners[fw], recorders[fw], counter, x, y, device))
        # Each framework's own view of one more step, where it has one (collective).
        own = {}
        for fw, r in runners.items():
            if hasattr(r, "recorded_step"):
                recorders[fw].reset()  # keep the probe's stamps out of the timed steps
                own[fw] = r.recorded_step(x, y)
        gathered = [None] * P if rank == 0 else None
        dist.gather_object(steps, gathered, dst=0)
        if rank == 0:
            out.append({"schedule": schedule, "P": P, "M": M, "unsupported": unsupported,
                        "ranks": gathered, "own": own, "latency": latency})
            if progress is not None:
                progress.put(("case", schedule, P, M))
        del runners, recorders
        gc.collect()
    return out if rank == 0 else None


def measure_memory(rank: int, P: int, payload: dict, progress) -> list[dict] | None:
    """RSS of one step per case and framework, after one warm-up step.

    Meant for processes started with ``MALLOC_MMAP_THRESHOLD_`` low (see
    ``launch.MEMORY_ENV``), so that freed activations leave RSS; that costs
    speed, which is why timing runs apart from this. Returns, on rank 0, per
    case ``[per-rank {fw: measurement}]``.
    """
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
    """One runner per framework on its own copy of this rank's stage, each
    wrapped in a probe; frameworks that cannot run the case say why."""
    runners, recorders, unsupported = {}, {}, {}
    for fw in payload["frameworks"]:
        rec = Recorder(rank)
        module = Probe(build_stages(workload, P)[rank], rec).to(device)
        try:
            runners[fw] = make_runner(fw, module, rank=rank, P=P, schedule=schedule, M=M,
                                      device=device)
            recorders[fw] = rec
        except Unsupported as e:
            unsupported[fw] = str(e)
    return runners, recorders, unsupported


def _timed_step(runner, rec: Recorder, counter: SendCounter, x, y, device) -> dict:
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


def time_single_process(rank: int, P: int, payload: dict, progress) -> dict:
    """The MLP on one process, unsplit: median step seconds, and the per-stage
    F/B costs on one micro-batch for each M in ``payload["Ms"]`` and P in
    ``payload["Ps"]`` (for the simulator's ideal)."""
    from conveyor.bench.frameworks import LR
    from conveyor.bench.workloads import full_model, loss_fn, measure_stage_costs

    workload = payload["workload"]
    torch.set_num_threads(workload.threads)
    model = full_model(workload)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    x, y = make_batch(workload, 1)
    times = []
    for i in range(payload["warmup"] + payload["repeats"]):
        t0 = time.perf_counter()
        loss_fn(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= payload["warmup"]:
            times.append(time.perf_counter() - t0)
    costs = {}
    for p in payload["Ps"]:
        for M in payload["Ms"]:
            try:
                costs[f"{p},{M}"] = measure_stage_costs(workload, p, M)
            except Exception:  # noqa: BLE001 - a case without costs just has no ideal
                costs[f"{p},{M}"] = {"error": traceback.format_exc(limit=1)}
    if progress is not None:
        progress.put(("single", 1, 1, 1))
    return {"step_times": times, "step": sorted(times)[len(times) // 2], "costs": costs}
