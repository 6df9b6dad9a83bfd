"""From raw per-rank measurements to one row per (case, framework).

The step time is the wall time from the first rank starting the step (after a
barrier) to the last rank finishing it, optimizer update included. Timeline
metrics (bubble, activations held) come from the probe stamps of the timed
step whose time is the median, so they describe a step that really happened.
"""

from __future__ import annotations

import statistics

from conveyor.errors import ScheduleError
from conveyor.schedule.generators import build_schedule
from conveyor.schedule.ir import B, F, Action
from conveyor.sim.cost import CostModel
from conveyor.sim.simulate import formula_bubble, simulate
from conveyor.sim.timeline import Event, Timeline

__all__ = ["summarize_case", "ideal_step", "build_timeline", "MiB"]

MiB = 1024 * 1024


def ideal_step(schedule: str, P: int, M: int, costs: CostModel) -> dict:
    """The simulator's step time, bubble and peak activations under ``costs``."""
    t = simulate(build_schedule(schedule, P, M), costs)
    return {"ideal_s": t.step_time, "ideal_bubble": t.bubble_overall,
            "ideal_peak_activations": t.peak_activations()}


def build_timeline(per_rank: list[list[tuple[int, str, int, float, float]]], *, P: int,
                   M: int, schedule: str, meta: dict | None = None) -> Timeline:
    """A measured Timeline (seconds) from each rank's probe events
    ``(stage, kind, mb, start, end)``."""
    events = [Event(r, Action(s, kind, mb), start, end)
              for r, evs in enumerate(per_rank) for s, kind, mb, start, end in evs]
    S = 1 + max((e.action.stage for e in events), default=P - 1)
    return Timeline(P=P, M=M, S=max(S, P), schedule=schedule, events=events,
                    source="measured", unit="s", meta=dict(meta or {}))


def summarize_case(raw: dict, *, workload: str, costs: CostModel | None,
                   activation_bytes: int, keep_timelines: bool = False) -> list[dict]:
    """Rows for one case: one per framework that ran, one marked unsupported per
    framework that could not. ``costs`` None: no ideal (the row says so)."""
    schedule, P, M = raw["schedule"], raw["P"], raw["M"]
    ideal = ideal_step(schedule, P, M, costs) if costs is not None else {}
    try:
        formula = formula_bubble(schedule, P, M)
    except ScheduleError:  # a torch schedule conveyor does not generate
        formula = None
    base = {"workload": workload, "schedule": schedule, "P": P, "M": M,
            "bubble_formula": float(formula) if formula is not None else None,
            "bytes_expected": 2 * M * activation_bytes * (P - 1), **ideal}
    rows = [{**base, "framework": fw, "unsupported": why}
            for fw, why in raw["unsupported"].items()]
    ranks = raw["ranks"]
    for fw in ranks[0]:
        reps = len(ranks[0][fw])
        per_rep = [[ranks[r][fw][i] for r in range(P)] for i in range(reps)]
        steps = [max(m["t1"] for m in rep) - min(m["t0"] for m in rep) for rep in per_rep]
        timelines = [build_timeline([m["events"] for m in rep], P=P, M=M, schedule=schedule,
                                    meta={"framework": fw, "workload": workload})
                     for rep in per_rep]
        med = sorted(range(reps), key=lambda i: steps[i])[reps // 2]
        rep_t = timelines[med]
        row = {**base, "framework": fw, "step_s": statistics.median(steps), "steps_s": steps,
               "bubble": statistics.median(t.bubble_overall for t in timelines),
               "bubble_vs_step": statistics.median(
                   1 - sum(t.busy(r) for r in range(P)) / (P * s)
                   for t, s in zip(timelines, steps)),
               "peak_activations": rep_t.peak_activations(),
               "stage_costs": {k: v for k, v in rep_t.stage_costs().items()},
               **_rss(raw.get("memory"), fw, per_rep, P),
               "bytes": statistics.median(sum(m["bytes"] for m in rep) for rep in per_rep),
               "sends": statistics.median(sum(m["sends"] for m in rep) for rep in per_rep)}
        row.update(_head_tail(per_rep))
        own_bytes = [sum(m["own_bytes"] for m in rep) for rep in per_rep
                     if all(m.get("own_bytes") is not None for m in rep)]
        if own_bytes:
            row["own_bytes"] = statistics.median(own_bytes)  # the framework's own counter
        if raw.get("own", {}).get(fw):
            row["own"] = raw["own"][fw]  # the framework's own timeline of one more step
        if ideal and ideal["ideal_s"] > 0:  # zero-time emulation has no ideal to divide by
            row["ratio"] = row["step_s"] / ideal["ideal_s"]
        row.update(_explain(schedule, P, M, rep_t, raw.get("latency"), per_rep))
        if keep_timelines:
            row["timeline"] = rep_t.shifted(0.0).to_dict()
        rows.append(row)
    return rows


def _head_tail(per_rep) -> dict:
    """Where a step spends its time outside the stages' own work, from the
    probe's stamps (one clock for every process on a host):

    head_s: from the first rank starting the step to the first stage
            starting its first forward (splitting the batch, conveyor's step
            agreement), median over the timed steps.
    tail_s: from the last stage work of the step ending (the last backward
            or W anywhere) to the last rank's optimizer update ending (the
            gradients' final pass, conveyor's loss exchange, the update).
    """
    heads, tails = [], []
    for rep in per_rep:
        starts = [e[3] for m in rep for e in m["events"]]
        ends = [e[4] for m in rep for e in m["events"]]
        if not starts:
            continue
        heads.append(min(starts) - min(m["t0"] for m in rep))
        tails.append(max(m["t1"] for m in rep) - max(ends))
    if not heads:
        return {}
    return {"head_s": statistics.median(heads), "tail_s": statistics.median(tails),
            "heads_s": heads, "tails_s": tails}


def _explain(schedule: str, P: int, M: int, t: Timeline, latency, per_rep) -> dict:
    """Where the time beyond the ideal went, by re-simulating with what was measured.

    sim_costs_s:    the simulator with each stage's F and B as measured in this
                    run (the probe's mean durations), free links.
    sim_measured_s: the same plus the one-way link latency measured before the
                    case. What the step takes beyond this is the framework's
                    own overhead between actions (dispatch, waits, wake-ups).
    cpu_share:      CPU seconds the ranks used over the wall time of their
                    compute actions; about 1 when compute-bound ranks each had
                    a core, well below 1 when they waited for one.
    """
    costs = t.stage_costs()
    if F not in costs or B not in costs or t.S != P:
        return {}  # several stages per rank: the plain F/B re-simulation does not apply
    lat = statistics.mean(latency) if latency else 0.0
    out = {"latency_s": latency,
           "sim_costs_s": simulate(build_schedule(schedule, P, M),
                                   CostModel(forward=costs[F], backward=costs[B])).step_time,
           "sim_measured_s": simulate(build_schedule(schedule, P, M),
                                      CostModel(forward=costs[F], backward=costs[B],
                                                latency=lat)).step_time}
    cpu = [sum(m.get("cpu_s", 0.0) for m in rep) for rep in per_rep]
    busy = sum(t.busy(r) for r in range(P))
    if busy > 0 and any(cpu):
        out["cpu_share"] = statistics.median(cpu) / busy
    return out


def _rss(memory, fw: str, per_rep, P: int) -> dict:
    """Peak RSS and its growth during a step, per rank, in MiB: from the memory
    run (frees returned to the OS) when there is one, else from the timed steps."""
    if memory and all(fw in m for m in memory):
        return {"rss_peak_mib": [memory[r][fw]["rss_peak"] / MiB for r in range(P)],
                "rss_step_mib": [(memory[r][fw]["rss_peak"] - memory[r][fw]["rss_start"]) / MiB
                                 for r in range(P)]}
    return {"rss_peak_mib": [max(rep[r]["rss_peak"] for rep in per_rep) / MiB
                             for r in range(P)],
            "rss_step_mib": [statistics.median(rep[r]["rss_peak"] - rep[r]["rss_start"]
                                               for rep in per_rep) / MiB for r in range(P)]}
