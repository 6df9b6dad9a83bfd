"""Rank jobs for the model tests: many configurations per launch, each
compared with a single-process reference built on the same rank."""

from __future__ import annotations

import copy

import torch

from conveyor.partition import resolve_balance
from conveyor.runtime import Pipeline, PipelineConfig
from conveyor.runtime.train.losses import TokenCrossEntropy
from conveyor.runtime.execute.stages import split_model
from conveyor.runtime.train.tied import TiedParameterError, find_shared
from conveyor.errors import ScheduleError
from conveyor.schedule import build_schedule, schedule_names
from tests.models import _lm
from tests.runtime._jobs import count_traffic
from tests.runtime._models import rel_err


def _opt(lr):
    return lambda ps: torch.optim.SGD(ps, lr=lr, momentum=0.9)


def _sched(opt):
    return torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)


def _pipe(cfg, ctx, model, norms):
    config = PipelineConfig(loss_reduction="sum", accumulate=cfg.get("accumulate", 1),
                            max_grad_norm=cfg.get("max_grad_norm"))
    hook = None
    if cfg.get("hook_clip"):
        hook = lambda pipe: norms.append(pipe.clip_grad_norm_(cfg["hook_clip"]))  # noqa: E731
    kw = dict(loss_fn=TokenCrossEntropy(), optimizer=_opt(cfg.get("lr", 0.1)),
              schedule=cfg["schedule"], microbatches=cfg["M"], ctx=ctx, config=config,
              before_step=hook, scheduler=_sched if cfg.get("lr_schedule") else None)
    if cfg.get("declared"):
        # Each rank builds its stages apart (no shared object): the tie is
        # declared by name, and the last stage's copy starts out different.
        S = build_schedule(cfg["schedule"], ctx.world_size, cfg["M"]).S
        whole = split_model(model, S)
        names = [[f"{s}.{n}" for s, n in g] for g in find_shared(whole)]

        def build(s):
            stage = copy.deepcopy(whole[s])
            if s == S - 1:  # the pipeline must align it with stage 0's copy
                with torch.no_grad():
                    stage.get_parameter(names[0][-1].split(".", 1)[1]).add_(0.5)
            return stage

        return Pipeline.from_stages(build, tied=names, **kw)
    return Pipeline(model, **kw)


def tied_job(ctx, configs: list[dict]) -> list[dict]:
    """Per config: steps of a tied LM with a padded token-mean loss against the
    unsplit model; errors of loss, gradients and parameters, and each tied
    copy's final value (to compare across ranks)."""
    out = []
    for cfg in configs:
        model, ref = _lm.tied_lm(), _lm.tied_lm()
        norms: list[float] = []
        pipe = _pipe(cfg, ctx, model, norms)
        ref_opt = _opt(cfg.get("lr", 0.1))(ref.parameters())
        ref_sched = _sched(ref_opt) if cfg.get("lr_schedule") else None
        acc = cfg.get("accumulate", 1)
        local = {n for s, st in pipe.stages.items() for n, _ in st.named_parameters()}
        row = {"id": cfg["id"], "rank": ctx.rank, "loss_err": 0.0, "grad_err": 0.0,
               "param_err": 0.0, "tied": {}, "norm_err": 0.0, "checked": 0}
        ref_norms = []
        pairs = _pairs(pipe, ref)
        for k in range(cfg.get("steps", 3)):
            x, y = _lm.padded_batch(cfg.get("batch", 8), seed=k + 1)
            res = pipe.step(x, y)
            ref_loss = _lm.token_mean(ref(x), y)
            (ref_loss / acc).backward()
            row["loss_err"] = max(row["loss_err"], abs(res.loss - ref_loss.item()) / ref_loss.item())
            if (k + 1) % acc:
                continue
            if cfg.get("hook_clip"):
                ref_norms.append(float(torch.nn.utils.clip_grad_norm_(ref.parameters(),
                                                                      cfg["hook_clip"])))
            if cfg.get("max_grad_norm"):
                torch.nn.utils.clip_grad_norm_(ref.parameters(), cfg["max_grad_norm"])
            for p, q in pairs:
                row["grad_err"] = max(row["grad_err"], rel_err(p.grad, q.grad))
                row["checked"] += 1
            ref_opt.step()
            if ref_sched is not None:
                ref_sched.step()
            ref_opt.zero_grad()
            for p, q in pairs:
                row["param_err"] = max(row["param_err"], rel_err(p.detach(), q.detach()))
        row["norm_err"] = max((abs(a - b) / b for a, b in zip(norms, ref_norms)), default=0.0)
        row["norms"] = len(norms)
        if cfg.get("lr_schedule"):
            row["lr"] = pipe.optimizer.param_groups[0]["lr"]
        for tie in pipe.loop.tied.mine:
            row["tied"][str(tie)] = tie.local[0].detach().tolist()  # exact for floats
        if cfg.get("evaluate"):
            x, y = _lm.padded_batch(8, seed=99)
            before = [p.detach().clone() for p, _ in pairs]
            ev = pipe.evaluate(x, y)
            with torch.no_grad():
                ref.eval()
                want = _lm.token_mean(ref(x), y).item()
            row["eval_err"] = abs(ev - want) / want
            row["eval_moved"] = any(not torch.equal(b, p) for b, (p, _) in zip(before, pairs))
        row["local"] = sorted(local)
        out.append(row)
    return out


def _pairs(pipe, ref):
    """(pipeline parameter, reference parameter) for this rank's parameters:
    layer i of stage s is layer starts[s] + i of the whole model (a tie maps
    to the one shared reference weight)."""
    ref_by = dict(ref.named_parameters(remove_duplicate=False))
    bal = resolve_balance(len(ref), pipe.schedule.S, None)
    starts = [sum(bal[:s]) for s in range(pipe.schedule.S)]
    seen, out = set(), []
    for s, stage in pipe.stages.items():
        for name, p in stage.named_parameters(remove_duplicate=False):
            if id(p) not in seen:
                seen.add(id(p))
                i, rest = name.split(".", 1)
                out.append((p, ref_by[f"{starts[s] + int(i)}.{rest}"]))
    return out


def predict_job(ctx, M: int) -> list[dict]:
    """predict on every registered schedule that builds for this P and M:
    the last rank's output against the unsplit model in eval mode."""
    rows = []
    x, _ = _lm.padded_batch(8, seed=5)
    ref = _lm.tied_lm().eval()
    with torch.no_grad():
        want = ref(x)
    for name in schedule_names():
        try:
            build_schedule(name, ctx.world_size, M)
        except ScheduleError:
            rows.append({"schedule": name, "skipped": True})
            continue
        pipe = Pipeline(_lm.tied_lm(), loss_fn=TokenCrossEntropy(), optimizer=None,
                        schedule=name, microbatches=M, ctx=ctx)
        with count_traffic() as traffic:
            got = pipe.predict(x)
        rows.append({"schedule": name, "skipped": False, "rank": ctx.rank,
                     "equal": None if got is None else bool(torch.equal(got, want)),
                     "err": None if got is None else rel_err(got, want),
                     "p2p_bytes": traffic["p2p_bytes"]})
    return rows


def undeclared_job(ctx, _arg) -> dict:
    """Each rank builds the tied model whole and keeps its stage (no shared
    object across processes): undeclared, the tie is an error; tied=[] says
    there is none; declared, it trains."""
    S = ctx.world_size
    stages = lambda s: split_model(_lm.tied_lm(), S)[s]  # noqa: E731
    kw = dict(loss_fn=TokenCrossEntropy(), optimizer=None, schedule="1f1b", microbatches=2,
              ctx=ctx)
    out = {}
    try:
        Pipeline.from_stages(stages, **kw)
        out["undeclared"] = None
    except TiedParameterError as e:
        out["undeclared"] = str(e)
    out["opt_out"] = len(Pipeline.from_stages(stages, tied=[], **kw).loop.tied.ties)
    names = [f"{s}.{n}" for s, n in find_shared(split_model(_lm.tied_lm(), S))[0]]
    out["declared"] = len(Pipeline.from_stages(stages, tied=[names], **kw).loop.tied.ties)
    return out
