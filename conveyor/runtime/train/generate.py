"""``Pipeline.generate``: decode from the pipelined model, in KV-cache lanes.

Collective, like ``step``: every rank calls it with the same prompts and
options. The prompts are laid out left-padded and cut into M lanes
(``execute.lanes``); the ranks run the decode schedule of P ranks, M lanes
(``conveyor.schedule.decode``: prefill, maybe in chunks, then one round per
token) through the decode loop (``execute.decoder``), which keeps a KV
cache per stage and lane and sends each token from the last stage back to
stage 0. Afterwards the last stage's rank broadcasts the tokens, so every
rank returns the same ``Generation`` (as ``launch`` returns every rank's
result).

Before any rank decodes, every rank checks the call (``preflight``) and
the ranks agree they run the same call (the step agreement, kind
"generate"); a rank failing while decoding ends every rank as in training
(its peers' receives fail, or the hang watch ends them).

Limits: one pipeline (dp = 1); messages go over torch.distributed (gloo,
NCCL) even under ``transport="shm"``, whose rings join neighbouring ranks
only, not the loop from the last rank to the first.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from conveyor.checks import check_int
from conveyor.errors import ConveyorError, PipelineError
from conveyor.runtime.execute.batching import microbatch_sizes
from conveyor.runtime.execute.decoder import Decoder
from conveyor.runtime.execute.lanes import layout, lanes_of, chunk_bounds
from conveyor.runtime.execute.recorder import Recorder, gather_timeline
from conveyor.runtime.execute.sampling import Sampling
from conveyor.runtime.procs import agree
from conveyor.runtime.procs.deadline import bounded
from conveyor.runtime.procs.hang import watch_runner
from conveyor.runtime.train.preflight import preflight
from conveyor.runtime.transport.comm import Comm
from conveyor.schedule import add_comms, validate
from conveyor.schedule.decode import decode_schedule
from conveyor.schedule.deps import paused_gc

__all__ = ["Generation", "generate"]


@dataclass
class Generation:
    """What ``generate`` returns, the same on every rank.

    tokens:   (n, max_new_tokens) int64, the new tokens of each prompt in
              the order given; after a stop token, ``pad_id``.
    lengths:  (n,) new tokens per prompt, its stop token included.
    prompts:  the prompts as given (1-D tensors, padding removed).
    logits:   with ``return_logits=True``: (n, max_new_tokens, V) float, the
              last stage's logits that chose each token (NaN after a lane
              finished), else None.
    stats:    this rank's counters: sent_bytes / recv_bytes / meta_bytes /
              messages (the decode's transfers), kv_cache_bytes (the most
              its KV caches held at once, counted), kv_cache_predicted (the
              planner's prediction for this rank, conveyor.plan.kvmemory),
              lanes, rounds, tokens (generated, all prompts), wall_s and
              tokens_per_s.
    timeline: with ``record=True``, the measured timeline on rank 0 (its
              events are the decode schedule's actions), else None.
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    prompts: list[torch.Tensor]
    logits: torch.Tensor | None = None
    stats: dict = field(default_factory=dict)
    timeline: object = None

    @property
    def sequences(self) -> list[torch.Tensor]:
        """Each prompt followed by its new tokens (up to its stop token)."""
        return [torch.cat([p, t[:int(n)]]) for p, t, n in
                zip(self.prompts, self.tokens, self.lengths)]


def _same(e: ConveyorError) -> ConveyorError:
    e.same_on_every_rank = True
    return e


def _digest(*parts) -> int:
    h = hashlib.blake2b(digest_size=8)
    for x in parts:
        h.update(x.numpy().tobytes() if isinstance(x, torch.Tensor) else repr(x).encode())
    return int.from_bytes(h.digest(), "big") >> 2


def generate(pipe, prompts, max_new_tokens: int, *, lanes: int | None = None,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             seed: int = 0, stop_tokens=(), pad_id: int = 0, attention_mask=None, lengths=None,
             prefill_chunk: int | None = None, cache_budget: int | None = None,
             return_logits: bool = False, record: bool = False) -> Generation:
    """See ``Pipeline.generate``."""
    try:
        if pipe.ctx.dp_size > 1:
            raise PipelineError(f"generate runs one pipeline, but this one has dp="
                                f"{pipe.ctx.dp_size} replicas; build a Pipeline with dp=1 to "
                                f"generate")
        check_int(max_new_tokens, "max_new_tokens", what="tokens to generate per prompt",
                  error=PipelineError)
        if prefill_chunk is not None:
            check_int(prefill_chunk, "prefill_chunk", what="prompt tokens per prefill round",
                      error=PipelineError)
        if cache_budget is not None:
            check_int(cache_budget, "cache_budget", what="bytes of KV cache per rank",
                      error=PipelineError)
        how = Sampling(temperature, top_k, top_p, seed)
        stop = {int(t) for t in stop_tokens}
        p = layout(prompts, attention_mask=attention_mask, lengths=lengths, pad_id=pad_id)
        M = min(p.n, pipe.P) if lanes is None else lanes
        check_int(M, "lanes", what="micro-batches of sequences decoded together",
                  error=PipelineError)
    except ConveyorError as e:
        raise _same(e)
    chunks = len(chunk_bounds(p.L, prefill_chunk))
    sizes = microbatch_sizes(p.n, min(M, p.n))
    # The ranks run the same call: the step agreement, its batch field the call's digest.
    pipe._agreement.check(kind=agree.GENERATE, step=pipe.steps, batch=_digest(
        p.ids, p.mask, M, max_new_tokens, prefill_chunk, how, sorted(stop), pad_id))
    try:
        pre = preflight(pipe, p, lanes=M, sizes=sizes, new_tokens=max_new_tokens,
                        chunk=prefill_chunk, cache_budget=cache_budget)
        with paused_gc():  # thousands of small tuples beside a model's objects
            sched = validate(add_comms(decode_schedule(
                pipe.P, M, new_tokens=max_new_tokens, chunks=chunks,
                placement=pipe.schedule.placement)))
    except ConveyorError as e:
        raise _same(e)
    return _run(pipe, p, sched, how, stop, pad_id, M, max_new_tokens, prefill_chunk, chunks,
                pre, return_logits, record)


def _run(pipe, p, sched, how, stop, pad_id, M, N, prefill_chunk, chunks, pre, keep_logits,
         record) -> Generation:
    ctx, S = pipe.ctx, pipe.schedule.S
    t0 = time.perf_counter()
    strict = pipe.config.strict_order or os.environ.get("CONVEYOR_STRICT_ORDER") == "1"
    comm = Comm(rank=ctx.rank, placement=sched.placement, device=ctx.device,
                timeout_s=pipe.config.timeout_s, group=ctx.pp_group, strict_order=strict,
                shape_class=lambda cut: cut % S)
    lanes = lanes_of(p, M, new_tokens=N, chunk=prefill_chunk, device=ctx.device)
    dec = Decoder(sched, rank=ctx.rank, stages=pipe.stages, comm=comm, lanes=lanes, S=S,
                  chunks=chunks, new_tokens=N, sampling=how, stop=stop, pad_id=pad_id,
                  policy=pipe.policy, keep_logits=keep_logits)
    watch_runner(pipe, dec, comm)
    modes = {s: m.training for s, m in pipe.stages.items()}
    for m in pipe.stages.values():
        m.eval()
    recorder = Recorder() if record else None
    try:
        dec.run(recorder)
    finally:
        for s, m in pipe.stages.items():
            m.train(modes[s])
    tokens, lengths, logits = _share(pipe, dec, p.n, N, keep_logits)
    wall = time.perf_counter() - t0
    stats = dict(comm.counts(), kv_cache_bytes=dec.peak_cache_bytes,
                 kv_cache_predicted=pre["predicted"][ctx.rank], lanes=M, rounds=sched.S // S,
                 tokens=int(lengths.sum()), wall_s=wall,
                 tokens_per_s=float(lengths.sum()) / wall if wall > 0 else 0.0)
    timeline = None
    if record:
        timeline = gather_timeline(recorder, rank=ctx.rank, world_size=ctx.world_size,
                                   offset=pipe.clock_offset, stats=stats, device=ctx.device,
                                   schedule=sched, group=ctx.pp_group,
                                   meta={"decode": dict(sched.meta["decode"]),
                                         "tokens": stats["tokens"]})
    rows = [p.ids[i][p.mask[i] == 1] for i in range(p.n)]
    return Generation(tokens, lengths, rows, logits, stats, timeline)


def _share(pipe, dec: Decoder, n: int, N: int, keep_logits: bool):
    """The tokens (and logits) of every lane, from the last stage's rank to every rank."""
    ctx = pipe.ctx
    tokens = torch.empty(n, N, dtype=torch.long)
    lengths = torch.empty(n, dtype=torch.long)
    logits = None
    last = ctx.rank == pipe.last_rank
    if last:
        for ln in dec.lanes:
            tokens[ln.rows] = dec.tokens[ln.index]
            lengths[ln.rows] = dec.produced[ln.index]
    if keep_logits:
        V = torch.zeros(1, dtype=torch.long)
        if last:
            V[0] = next((x[0].shape[-1] for x in dec.logits.values() if x), 0)
        if ctx.world_size > 1:
            V = V.to(ctx.device)
            with bounded("the generate result broadcast", ctx.pp_group):
                dist.broadcast(V, group=ctx.pp_group, group_src=pipe.last_rank)
                V = V.cpu()
        logits = torch.full((n, N, int(V[0])), float("nan"), dtype=torch.float64)
        if last:
            for ln in dec.lanes:
                got = dec.logits[ln.index]
                if got:
                    logits[ln.rows, :len(got)] = torch.stack(got, dim=1).to(torch.float64)
    if ctx.world_size > 1:
        parts = [tokens, lengths] + ([logits] if logits is not None else [])
        with bounded("the generate result broadcast", ctx.pp_group):
            for t in parts:
                buf = t.to(ctx.device)
                dist.broadcast(buf, group=ctx.pp_group, group_src=pipe.last_rank)
                t.copy_(buf.cpu())
    return tokens, lengths, logits
