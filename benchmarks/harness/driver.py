"""Run a benchmark grid and return its results as plain data (JSON-ready).

One process group per P (started by conveyor's own launcher) runs every case
for that P, both frameworks taking turns step by step (see ``worker``); a
second one measures RSS, with the allocator set to return freed memory, which
would slow the timing runs. For the MLP workload, rank 0 also trains the
unsplit model in every round (the other ranks wait), for the speedup, and
measures each stage's cost alone, for the ideal step.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
from dataclasses import asdict
from typing import Callable

from conveyor.progress import progress_channel
from conveyor.runtime.procs.launcher import LaunchOptions, launch
from conveyor.schedule.generators import get_spec
from conveyor.sim.cost import CostModel

from .config import BenchError, EmulatedWorkload, MLPWorkload, RunSettings
from .metrics import summarize_case

__all__ = ["run_benchmark", "ideal_speedup", "check_grid"]


def ideal_speedup(P: int, M: int) -> float:
    """Speedup of P equal stages over one process with a fill-drain bubble:
    P*M/(M+P-1), i.e. 2M/(M+1) at P = 2."""
    return P * M / (M + P - 1)


def check_grid(workload, Ps, Ms, schedules) -> None:
    """BenchError (or ScheduleError) for a grid that cannot run; needs no torch."""
    from .frameworks import TORCH_SCHEDULES

    for s in schedules:
        if s not in TORCH_SCHEDULES:
            get_spec(s)  # ScheduleError with a suggestion for a typo
    for name, values in (("P", Ps), ("M", Ms)):
        if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                             for v in values):
            raise BenchError(f"{name} values {list(values)!r} must be positive integers")
    if any(P < 2 for P in Ps):
        raise BenchError(f"P values {list(Ps)} include P < 2; a pipeline needs at least 2 "
                         f"stages")
    if isinstance(workload, MLPWorkload):
        for P in Ps:
            if workload.layers % P:
                raise BenchError(f"the MLP's {workload.layers} layers do not split evenly "
                                 f"over P={P}; pick layers divisible by every P")
        for M in Ms:
            workload.activation_bytes(M)  # batch divisible by M


def run_benchmark(*, workload: EmulatedWorkload | MLPWorkload, Ps: list[int], Ms: list[int],
                  schedules: list[str], settings: RunSettings | None = None,
                  device: str = "cpu", keep_timelines: bool = False,
                  on_progress: Callable[[str], None] | None = None) -> dict:
    """Measure every (schedule, P, M) with every framework in ``settings``.

    Returns {"meta": conditions, "rows": one dict per case and framework}.
    For the MLP each row also has ``one_process_s`` (the unsplit model on one
    process, timed in turns with the pipelines), ``speedup`` and
    ``speedup_ideal``. ``on_progress(label)`` is called as each case finishes.

    Raises BenchError for a bad grid, RankFailedError when a rank fails or
    the run outlasts ``settings.timeout``.
    """
    settings = settings or RunSettings()
    check_grid(workload, Ps, Ms, schedules)
    meta = _conditions(workload, Ps, Ms, schedules, settings, device)

    def progress(msg):
        _, s, P, M = msg
        on_progress(f"{s} P={P} M={M}")

    rows = []
    for P in Ps:
        payload = {"workload": workload, "cases": [(s, M) for M in Ms for s in schedules],
                   "repeats": settings.repeats, "warmup": settings.warmup,
                   "frameworks": list(settings.frameworks), "device": device,
                   "baseline": isinstance(workload, MLPWorkload)}
        # One thread per rank; the settings' timeout bounds both a wait on a
        # peer and the whole run, so a hung case fails instead of blocking.
        options = LaunchOptions(backend="nccl" if device == "cuda" else "gloo",
                                timeout_s=settings.timeout, threads=1,
                                deadline_s=settings.timeout)
        with progress_channel(progress if on_progress else None) as channel:
            raw = launch(_cases, nprocs=P, args=(payload, channel), options=options)[0]
        if settings.memory:
            memory = launch(_memory, nprocs=P, args=(payload,), options=options)[0]
            for case, mem in zip(raw, memory):
                case["memory"] = mem
        for case in raw:
            case_rows = summarize_case(case, workload=workload.kind,
                                       costs=_costs(workload, case),
                                       activation_bytes=workload.activation_bytes(case["M"]),
                                       keep_timelines=keep_timelines)
            if case.get("one_process_s"):
                one = statistics.median(case["one_process_s"])
                for row in case_rows:
                    row["one_process_s"] = one
                    row["one_process_steps_s"] = case["one_process_s"]
                    row["one_process_mb_s"] = statistics.median(case["one_process_mb_s"])
                    row["speedup_ideal"] = ideal_speedup(row["P"], row["M"])
                    if "step_s" in row:
                        row["speedup"] = one / row["step_s"]
            rows += case_rows
    meta["finished"] = _now()
    meta["load_after"] = _load()
    return {"meta": meta, "rows": rows}


def _costs(workload, case: dict) -> CostModel | None:
    """The ideal's costs, or None where there is no ideal: a schedule conveyor
    does not generate (so cannot simulate), or an MLP case without measured
    stage costs."""
    from conveyor.errors import ScheduleError
    from conveyor.schedule import build_schedule

    from .workloads import ideal_costs

    try:
        S = build_schedule(case["schedule"], case["P"], case["M"]).S
    except ScheduleError:
        return None
    if isinstance(workload, EmulatedWorkload):
        return ideal_costs(workload, case["P"], case["M"], S=S)
    if not case.get("costs"):
        return None
    return ideal_costs(workload, case["P"], case["M"], S=S, measured=case["costs"])


def _cases(ctx, payload, progress):
    from .worker import run_cases

    return run_cases(ctx.rank, ctx.world_size, payload, progress)


def _memory(ctx, payload):
    from .worker import measure_memory

    return measure_memory(ctx.rank, ctx.world_size, payload)


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _conditions(workload, Ps, Ms, schedules, settings, device) -> dict:
    import torch

    return {"started": _now(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__,
            "device": device, "workload": {"kind": workload.kind, **asdict(workload)},
            "Ps": list(Ps), "Ms": list(Ms), "schedules": list(schedules),
            "settings": {**asdict(settings), "frameworks": list(settings.frameworks)},
            "load_before": _load()}
