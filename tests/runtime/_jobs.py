"""Rank jobs for the runtime tests: each runs many configurations inside one
launch (a process group costs seconds to start) and compares every step with
a single-process reference computed on the same rank."""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch
import torch.distributed as dist

from conveyor.runtime import Pipeline, PipelineConfig
from conveyor.runtime.execute.interpreter import Interpreter
from conveyor.runtime.execute.stages import split_model
from conveyor.schedule import load_schedule
from tests.runtime import _models

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def exchange_bytes(P: int) -> int:
    """Bytes every step sends, over all P ranks, outside the pipeline's own
    messages: the step agreement (each rank's record of 10 int64 to the last rank,
    which sends the table of P records back to each; procs/agree.py) and the
    step's end (each rank's loss, flags and auxiliary loss, 4 float64, to
    the rank that finishes last, which sends the sums back to each;
    train/stepend.py). Point-to-point over gloo, whatever the transport."""
    from conveyor.runtime.train.stepend import WIDTH

    agreement = (P - 1) * 80 + (P - 1) * 80 * P
    return agreement + 2 * (P - 1) * WIDTH * 8


@contextmanager
def count_traffic():
    """Count what this process hands to torch.distributed while the body runs:
    point-to-point payload bytes and calls (the step's own exchanges, which
    post to the process group directly, included), and collective bytes."""
    from conveyor.runtime.procs import star

    counts = {"p2p_bytes": 0, "p2p_sends": 0, "collective_bytes": 0}
    saved = {name: getattr(dist, name) for name in
             ("isend", "send", "broadcast", "all_reduce", "all_gather", "gather", "scatter")}
    star_send = star.send

    def p2p(fn):
        def wrapped(tensor, *args, **kwargs):
            counts["p2p_bytes"] += tensor.numel() * tensor.element_size()
            counts["p2p_sends"] += 1
            return fn(tensor, *args, **kwargs)
        return wrapped

    def coll(fn):
        def wrapped(tensor, *args, **kwargs):
            if isinstance(tensor, torch.Tensor):
                counts["collective_bytes"] += tensor.numel() * tensor.element_size()
            return fn(tensor, *args, **kwargs)
        return wrapped

    def star_wrapped(group, tensor, *args):
        counts["p2p_bytes"] += tensor.numel() * tensor.element_size()
        counts["p2p_sends"] += 1
        return star_send(group, tensor, *args)

    for name in ("isend", "send"):
        setattr(dist, name, p2p(saved[name]))
    for name in ("broadcast", "all_reduce", "all_gather", "gather", "scatter"):
        setattr(dist, name, coll(saved[name]))
    star.send = star_wrapped
    try:
        yield counts
    finally:
        for name, fn in saved.items():
            setattr(dist, name, fn)
        star.send = star_send


def _build(cfg: dict):
    dtype = _DTYPES[cfg.get("dtype", "float64")]
    if cfg.get("model") == "tuple":
        return _models.tuple_mlp(dtype=dtype, seed=cfg.get("seed", 0))
    if cfg.get("model") == "even":
        return _models.even_chain(cfg.get("depth", 16), dtype=dtype, seed=cfg.get("seed", 0))
    return _models.mlp(cfg.get("depth", 8), dtype=dtype, seed=cfg.get("seed", 0))


def _schedule(cfg: dict):
    sched = cfg["schedule"]
    if isinstance(sched, str) and sched.endswith((".csv", ".json")):
        return load_schedule(sched)
    return sched


def _cut_bytes(model, placement, balance, x: torch.Tensor, sizes: list[int]) -> int:
    """Bytes of every activation crossing a cut between two ranks, over all
    micro-batches, measured on a copy cut the same way (forward only)."""
    stages = split_model(model, len(placement), balance=balance)
    total = 0
    with torch.no_grad():
        for part in torch.split(x, sizes):
            h = (part,)
            for c, stage in enumerate(stages[:-1]):
                out = stage(*h)
                h = out if isinstance(out, tuple) else (out,)
                if placement[c] != placement[c + 1]:
                    total += sum(t.numel() * t.element_size() for t in h)
    return total


def exactness_job(ctx, configs: list[dict]) -> list[dict]:
    """For each config: pipelined steps against a reference on the same batches.

    Returns, per config, the largest relative errors of the loss, of each
    local parameter's gradient, and of each parameter after the update, plus
    traffic per step and (rank 0, when asked) the measured timeline."""
    out = []
    for cfg in configs:
        model = _build(cfg)
        ref = _build(cfg)
        lr = cfg.get("lr", 0.05)
        pipe = Pipeline(model, loss_fn=_models.loss_fn,
                        optimizer=lambda ps: torch.optim.SGD(ps, lr=lr, momentum=0.9),
                        schedule=_schedule(cfg), microbatches=cfg.get("M"),
                        balance=cfg.get("balance"), ctx=ctx,
                        config=PipelineConfig(**cfg.get("config", {})))
        if cfg.get("lowered") is not None:
            # Run a hand-made lowering as it is, past the validator (a test of
            # what the transport does with it).
            pipe.interp = Interpreter(cfg["lowered"], rank=ctx.rank, stages=pipe.stages,
                                      comm=pipe.comm, loss_fn=_models.loss_fn)
        ref_opt = torch.optim.SGD(ref.parameters(), lr=lr, momentum=0.9)
        local = {id(p) for p in pipe.params}
        pairs = [(name, p, q) for (name, p), (_, q) in
                 zip(model.named_parameters(), ref.named_parameters()) if id(p) in local]
        dtype = _DTYPES[cfg.get("dtype", "float64")]
        row = {"id": cfg["id"], "rank": ctx.rank, "placement": list(pipe.schedule.placement),
               "device": str(ctx.device), "backend": ctx.backend, "loss_err": 0.0, "grad_err": 0.0,
               "param_err": 0.0, "params": sorted(n for n, _, _ in pairs), "steps": [],
               "losses": []}
        steps = cfg.get("steps", 3)
        for k in range(steps):
            n = cfg["batches"][k] if cfg.get("batches") else cfg["batch"]
            x, y = _models.batch(n, dtype=dtype, seed=k + 1)
            with count_traffic() as traffic:
                res = pipe.step(x, y, record=cfg.get("record", False) and k == steps - 1)
            ref_opt.zero_grad()
            ref_loss = _models.loss_fn(ref(x), y)
            ref_loss.backward()
            row["loss_err"] = max(row["loss_err"], abs(res.loss - ref_loss.item())
                                  / abs(ref_loss.item()))
            row["losses"].append(res.loss)
            for name, p, q in pairs:  # .cpu(): the pipeline may run on a GPU
                row["grad_err"] = max(row["grad_err"], _models.rel_err(p.grad.cpu(), q.grad))
            ref_opt.step()
            for name, p, q in pairs:
                row["param_err"] = max(row["param_err"],
                                       _models.rel_err(p.detach().cpu(), q.detach()))
            sizes = _sizes(n, pipe.M)
            row["steps"].append({
                **res.stats, **traffic, "sizes": sizes,
                "expected_cut_bytes": 2 * _cut_bytes(ref, pipe.schedule.placement,
                                                     cfg.get("balance"), x, sizes)})
            if res.timeline is not None:
                row["timeline"] = res.timeline.to_dict()
                row["clock_offset"] = pipe.clock_offset
        row["clock_offset"] = pipe.clock_offset
        out.append(row)
    return out


def _sizes(B: int, M: int) -> list[int]:
    k, r = divmod(B, M)
    return [k + 1 if i < r else k for i in range(M)]


# -- failures ---------------------------------------------------------------------

class Boom(torch.nn.Module):
    """Identity that raises on its fourth call: micro-batch 3 of the first step."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        mb, self.calls = self.calls, self.calls + 1
        if mb == 3:
            raise ValueError("boom on micro-batch " + str(mb))
        return x


def boom_job(ctx, pid_dir: str | None = None) -> int:
    """P=4, 1f1b, M=8: stage 2 raises in its forward of micro-batch 3."""
    if pid_dir:
        with open(os.path.join(pid_dir, f"rank{ctx.rank}.pid"), "w") as f:
            f.write(str(os.getpid()))
    torch.manual_seed(0)
    layers = [torch.nn.Linear(4, 4) for _ in range(4)]
    layers.insert(3, Boom())  # balance [1, 1, 2, 1]: Boom is the second layer of stage 2
    pipe = Pipeline(layers, loss_fn=lambda o, t: ((o - t) ** 2).mean(), optimizer=None,
                    schedule="1f1b", microbatches=8, balance=[1, 1, 2, 1], ctx=ctx)
    x = torch.randn(16, 4)
    pipe.step(x, x)
    return 0


def mismatch_job(ctx) -> int:
    """Stage 0 outputs 6 features, stage 1 expects 7."""
    torch.manual_seed(0)
    layers = [torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(7, 3)]
    pipe = Pipeline(layers, loss_fn=_models.loss_fn, optimizer=None, schedule="gpipe",
                    microbatches=2, balance=[2, 1], ctx=ctx)
    x, y = _models.batch(8, dtype=torch.float32)
    pipe.step(x, y)
    return 0


def too_few_layers_job(ctx, n_layers: int) -> int:
    """Fewer layers than ranks (stages)."""
    layers = [torch.nn.Linear(4, 4) for _ in range(n_layers)]
    Pipeline(layers, loss_fn=_models.loss_fn, optimizer=None, schedule="1f1b",
             microbatches=4, ctx=ctx)
    return 0


def crash_job(ctx) -> int:
    """Rank 1 vanishes (no report) while rank 0 waits for it inside a step."""
    pipe = Pipeline(_models.mlp(2), loss_fn=_models.loss_fn, optimizer=None, schedule="1f1b",
                    microbatches=2, ctx=ctx)
    if ctx.rank == 1:
        os._exit(3)
    x, y = _models.batch(4)
    pipe.step(x, y)
    return 0
