"""Ranks that must agree, checked at every step with one tiny exchange.

Every rank runs the same script, but nothing stops one rank from calling
``step`` once more, building its model with another layer, or cutting its
batch differently. Without a check such a run hangs until the process-group
timeout, and then each rank blames its peer. So each step opens with an
exchange of a fixed record of 10 integers (80 bytes per rank), sent to the
last pipeline rank, which sends the table of them back, so every rank sees
every record:

    kind    what the rank is doing: a training step, a predict, a generate,
            or leaving (its function returned; the launcher sends this record)
    started how many steps/predicts this process started before (any pipeline)
    step    how many steps/predicts this pipeline ran before
    P, M, batch
    schedule, model, weights
            63-bit digests of the schedule (every rank's actions), of the
            model's layer types and parameter shapes per stage (the cut), and,
            opt-in, of the unsplit parameters' values

Every rank sees the same gathered records, so every rank decides the same way
and fails at once with one ``AgreementError`` naming the field and each
rank's value. Where a digest differs, one more gather of the descriptions
(done by every rank, because every rank saw the difference) names the first
layer or parameter that differs.

The exchange starts with the step and completes before the rank's first
send or receive (``Agreement.begin``): a mismatch is caught before any
message whose size or tag depends on it, while the first stage's leading
forwards run, so the exchange costs the step about nothing where it used to
open it.

A rank whose function returned takes part in the same exchange with kind
"leaving", so a peer that is still starting a step meets it at once: "rank 1
finished its function after 2 steps while rank 0 starts step 3".
"""

from __future__ import annotations

import hashlib
from typing import Callable, Sequence

import torch
import torch.distributed as dist

from conveyor.runtime.errors import AgreementError
from conveyor.runtime.procs.deadline import bounded
from conveyor.runtime.procs.star import Star, usable

__all__ = ["Agreement", "finish", "fingerprint", "weights_digest"]

STEP, PREDICT, LEAVING, GENERATE = 1, 2, 3, 4
_KINDS = {STEP: "starts step", PREDICT: "starts predict", LEAVING: "finished its function",
          GENERATE: "starts generate"}
_FIELDS = ("kind", "started", "step", "P", "M", "batch", "schedule", "model", "weights")
_LEN = 1 + len(_FIELDS)  # a magic number first: a record from another collective shows
_MAGIC = 0x636F6E76  # "conv"

# Steps and predicts that this process's pipelines started: a leaving rank
# reports it, so the message says how far it got.
_started = {"n": 0}


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


def _layers(stage: torch.nn.Module) -> list[torch.nn.Module]:
    return list(stage) if isinstance(stage, (torch.nn.Sequential, torch.nn.ModuleList)) \
        else [stage]


def fingerprint(stages: Sequence[torch.nn.Module]) -> list[str]:
    """One line per layer, ``"stage s layer i: Type (shape, shape, ...)"``:
    the cut and the parameter shapes that every rank must build alike."""
    lines = ["layers per stage: " + str([len(_layers(st)) for st in stages])]
    for s, stage in enumerate(stages):
        for i, layer in enumerate(_layers(stage)):
            shapes = ", ".join(str(tuple(p.shape)) for p in layer.parameters())
            lines.append(f"stage {s} layer {i}: {type(layer).__name__} ({shapes})")
    return lines


def weights_digest(stages: Sequence[torch.nn.Module]) -> list[str]:
    """One hex digest per parameter of the unsplit model, in order."""
    out = []
    for p in (p for st in stages for p in st.parameters()):
        data = p.detach().cpu().contiguous()
        out.append(hashlib.blake2b(data.numpy().tobytes() if data.dtype != torch.bfloat16
                                   else data.view(torch.int16).numpy().tobytes(),
                                   digest_size=8).hexdigest())
    return out


class Agreement:
    """The record one pipeline's rank contributes at each step.

    ``stages``: all S stages (the unsplit model) where this rank built them,
    else None (``from_stages`` with a function: only this rank's stages
    exist, so the model is not compared). ``check_weights``: also compare the
    parameters' values on the first step (needs ``stages``). ``settings``:
    a line of the options every rank must share (precision, loss scale,
    accumulation, ...), compared with the schedule.
    """

    def __init__(self, schedule, stages: Sequence[torch.nn.Module] | None, *, rank: int,
                 world_size: int, device: torch.device, check_weights: bool = False,
                 group=None, settings: str = "", backend: str = "gloo"):
        self.rank, self.world_size, self.device = rank, world_size, device
        self.backend = backend  # "nccl": collectives; else point-to-point (``star``)
        self.group = group  # the pipeline's process group (None: the whole world)
        self.P, self.M = schedule.P, schedule.M
        self.schedule_text = [f"{schedule.name} (P={schedule.P}, M={schedule.M}, S="
                              f"{schedule.S}, placement {list(schedule.placement)})"] + [
            f"rank {r}: " + " ".join(row) for r, row in enumerate(schedule.text_rows())] + (
            [f"settings: {settings}"] if settings else [])
        self.layers = fingerprint(stages) if stages is not None else ["(not compared)"]
        self.weights = weights_digest(stages) if check_weights and stages is not None else []
        self.digests = {"schedule": _digest("\n".join(self.schedule_text)),
                        "model": _digest("\n".join(self.layers)) if stages is not None else 0,
                        "weights": _digest("".join(self.weights)) if self.weights else 0}

    def check(self, *, kind: int, step: int, batch: int) -> None:
        """Gather every rank's record and raise AgreementError on any difference."""
        self.begin(kind=kind, step=step, batch=batch)()

    def begin(self, *, kind: int, step: int, batch: int) -> Callable[[], None]:
        """Start the step's exchange without waiting; returns ``gate()``,
        which completes it and raises AgreementError on any difference.

        Between the two this rank may compute, but must neither send nor
        post a receive: what its peers send or expect may differ until the
        gate has passed (the interpreter calls it before its first transfer,
        ``RankPlan.first_transfer``). So the first stage's forwards overlap
        the exchange, which the other ranks, whose first action is a
        receive, would spend waiting for them anyway. Every rank must call
        the gate (it is collective), also when its own work failed first."""
        started = _started["n"]
        _started["n"] += 1
        if self.world_size == 1:
            return _passed
        weights = self.digests["weights"] if step == 0 else 0
        record = [kind, started, step, self.P, self.M, batch, self.digests["schedule"],
                  self.digests["model"], weights]
        return _Exchange(record, self.device, self.world_size, self.group, self.rank,
                         "the step agreement", self._describe, self.backend)

    def _describe(self, name: str) -> list[str]:
        return {"schedule": self.schedule_text, "model": self.layers,
                "weights": self.weights}[name]


def finish(ctx) -> None:
    """The leaving record of a rank whose function returned: waits until every
    rank's function has returned, and raises AgreementError when a peer is
    still starting a step instead."""
    if ctx.world_size == 1:
        return
    _Exchange([LEAVING, _started["n"], 0, 0, 0, 0, 0, 0, 0], ctx.device, ctx.world_size,
              ctx.pp_group, ctx.rank, "the end-of-function agreement", None, ctx.backend)()


def _passed() -> None:
    """The gate of a one-rank pipeline: nothing to compare."""


# Point-to-point tags of the exchange (``star``): above every tag of the
# pipeline's own messages and of the step's end exchange (train.stepend).
UP_TAG, DOWN_TAG = 2**31 - 1, 2**31 - 2


class _Exchange:
    """One agreement exchange in flight: every record goes to the last
    pipeline rank, which sends the table of them back to every rank;
    calling the object completes it and compares.

    The last rank: it waits at the start of a step anyway (its first action
    receives what every stage before it computed), and its place is known
    without a schedule, to a leaving rank too. Over gloo the exchange is a
    ``star`` of point-to-point messages, every receive posted at once, so
    the records travel while the first stage computes and the table goes
    out the moment it is complete: one hop each way, where gloo's ring
    all-gather took 2 (P - 1) dependent steps (12 ms at P = 8 on a loaded
    2-core machine; benchmarks/SCHEDULES.md). Over NCCL a gather and a
    broadcast."""

    def __init__(self, record: list[int], device, world_size: int, group, rank: int,
                 what: str, describe, backend: str):
        self.world_size, self.group, self.rank = world_size, group, rank
        self.what, self.describe = what, describe
        self.root = root = world_size - 1
        self.star = None
        try:
            if usable(backend, world_size):
                self.mine = torch.tensor([_MAGIC] + record, dtype=torch.int64)
                self.star = Star(group=group, rank=rank, size=world_size, root=root,
                                 up_tag=UP_TAG, down_tag=DOWN_TAG, up_shape=(_LEN,),
                                 down_shape=(world_size, _LEN), dtype=torch.int64)
                self.star.post()
                if rank != root:
                    self.star.send(self.mine)
                return
            mine = torch.tensor([_MAGIC] + record, dtype=torch.int64, device=device)
            self.table = torch.empty((world_size, len(mine)), dtype=torch.int64, device=device)
            self.mine = mine  # kept alive until the gather is done
            self.works = [dist.gather(mine, list(self.table.unbind(0)) if rank == root else None,
                                      group=group, group_dst=root, async_op=True)]
            if rank != root:
                self.works.append(dist.broadcast(self.table, group=group, group_src=root,
                                                 async_op=True))
        except RuntimeError as e:
            raise _lost(e) from e

    def __call__(self) -> None:
        try:
            rows = self._finish()
        except RuntimeError as e:
            raise _lost(e) from e
        _compare(rows, self.rank, describe=self.describe, group=self.group)

    def _finish(self) -> list[list[int]]:
        """Every record, on this rank (after waiting for them)."""
        with bounded(self.what, self.group):  # .tolist() inside: on NCCL the host waits there
            if self.star is not None:
                if self.rank == self.root:
                    table = torch.stack(self.star.collect(self.mine))
                    self.star.reply(table)
                    return table.tolist()
                return self.star.answer().tolist()
            for w in self.works:
                w.wait()
            if self.rank == self.root:
                dist.broadcast(self.table, group=self.group, group_src=self.root)
            return self.table.tolist()


def _lost(e: RuntimeError):
    from conveyor.runtime.errors import PeerFailedError

    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
    return PeerFailedError(f"rank {dist.get_rank()} lost a peer while the ranks compared "
                           f"their steps ({first}); the failing rank reports the cause",
                           rank=dist.get_rank())


def _compare(rows: list[list[int]], rank: int, *, describe, group=None) -> None:
    if any(row[0] != _MAGIC for row in rows):
        bad = [r for r, row in enumerate(rows) if row[0] != _MAGIC]
        raise AgreementError(f"rank(s) {bad} sent something other than conveyor's step record; "
                             f"every rank must make the same torch.distributed calls in the "
                             f"same order", field="collective", values={})
    recs = [dict(zip(_FIELDS, row[1:])) for row in rows]
    kinds = [r["kind"] for r in recs]
    if len(set(kinds)) > 1:
        raise _kind_error(recs)
    if kinds[0] == LEAVING:
        return
    for name in ("step", "P", "M", "batch"):
        values = {r: rec[name] for r, rec in enumerate(recs)}
        if len(set(values.values())) > 1:
            what = {"step": "steps run before this one", "P": "P (ranks of the schedule)",
                    "M": "M (micro-batches)", "batch": "batch size"}[name]
            if name == "batch" and kinds[0] == GENERATE:  # a digest of the call
                what = "the generate call (a digest of its prompts and options)"
            raise AgreementError(f"the ranks disagree on {what}: {_show(values)}; every rank "
                                 f"must build the same pipeline and pass the same batch",
                                 field=name, values=values)
    for name in ("schedule", "model", "weights"):
        values = {r: rec[name] for r, rec in enumerate(recs)}
        if len(set(values.values())) > 1:
            raise _digest_error(name, values, describe(name), group)


def _kind_error(recs: list[dict]) -> AgreementError:
    values = {r: _KINDS[rec["kind"]] for r, rec in enumerate(recs)}
    leaving = [r for r, rec in enumerate(recs) if rec["kind"] == LEAVING]
    busy = [r for r, rec in enumerate(recs) if rec["kind"] != LEAVING]
    if leaving and busy:
        r, b = leaving[0], busy[0]
        n = recs[r]["started"]
        return AgreementError(
            f"rank {r} finished its function after {n} step{'s' if n != 1 else ''} while rank "
            f"{b} {values[b]} {recs[b]['started'] + 1}; every rank must call step (and predict) "
            f"the same number of times", field="kind", values=values)
    return AgreementError(f"the ranks disagree on what to run: {_show(values)}; every rank "
                          f"must call step and predict in the same order",
                          field="kind", values=values)


def _digest_error(name: str, values: dict, mine: list[str], group=None) -> AgreementError:
    texts = [None] * len(values)
    with bounded("the agreement's description all-gather", group):
        dist.all_gather_object(texts, mine, group=group)
    what = {"schedule": "the schedule or its settings", "model": "the model (layer types and parameter "
            "shapes per stage)", "weights": "the initial weights"}[name]
    fix = {"schedule": "build the schedule and the PipelineConfig alike on every rank",
           "model": "build the same model and balance on every rank",
           "weights": "seed every rank alike (torch.manual_seed) before building the model"}
    n = max(len(t) for t in texts)
    for i in range(n):
        lines = {r: (t[i] if i < len(t) else "(missing)") for r, t in enumerate(texts)}
        if len(set(lines.values())) > 1:
            where = {"schedule": "", "model": "", "weights": f"parameter {i}: "}[name]
            return AgreementError(f"the ranks disagree on {what}: {where}{_show(lines)}; "
                                  f"{fix[name]}", field=name, values=lines)
    return AgreementError(f"the ranks disagree on {what} (digests {_show(values)}); "
                          f"{fix[name]}", field=name, values=values)


def _show(values: dict) -> str:
    return ", ".join(f"rank {r}: {v}" for r, v in values.items())
