"""Rank jobs for tests/runtime/test_compile.py: the same training run with
``PipelineConfig(compile=...)`` on and off, compared on the rank."""

from __future__ import annotations

import time
import warnings

import torch
from torch import nn

from conveyor.runtime import Pipeline, PipelineConfig
from conveyor.runtime.execute import compilebackend
from conveyor.runtime.execute import compiled as compiled_mod
from conveyor.runtime.execute.compilesplit import NoSplit, split_backward
from tests.runtime import _models

D, T = 16, 5  # width and sequence length of the transformer stack


def block_stack(n: int = 4, *, dtype=torch.float64, seed: int = 0) -> nn.Sequential:
    """n transformer encoder blocks (width D, 2 heads, no dropout)."""
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.TransformerEncoderLayer(D, 2, 2 * D, dropout=0.0,
                                                      batch_first=True)
                           for _ in range(n)]).to(dtype)


def mse(out, y):
    return ((out - y) ** 2).mean()


def _model(cfg: dict, dtype=torch.float64):
    if cfg["model"] == "mlp":
        return _models.mlp(cfg.get("depth", 8), dtype=dtype), _models.loss_fn
    if cfg["model"] == "mlp-seq":  # the MLP on (n, t, features): a sequence dim
        return _models.mlp(8, dtype=dtype), mse
    return block_stack(cfg["blocks"], dtype=dtype), mse


def _batch(cfg: dict, n: int, k: int, dtype=torch.float64, t: int = T):
    if cfg["model"] == "mlp":
        return _models.batch(n, dtype=dtype, seed=k + 1)
    g = torch.Generator().manual_seed(k + 1)
    d_in, d_out = (_models.IN, _models.OUT) if cfg["model"] == "mlp-seq" else (D, D)
    return (torch.randn(n, t, d_in, generator=g).to(dtype),
            torch.randn(n, t, d_out, generator=g).to(dtype))


def _refuse(gm, weight_pos):
    raise NoSplit("refused by the test")


def split_runs() -> dict:
    """Calls of every split backward in this process: I (dI only), W (dW from
    I's stash) and B (both at once), summed over the compiled graphs."""
    out = {"I": 0, "W": 0, "B": 0}
    for backend in compiled_mod._BACKENDS.values():
        for sb in backend.splits:
            for k in out:
                out[k] += sb.runs[k]
    return out


def split_counts() -> list[dict]:
    return [sb.counts for b in compiled_mod._BACKENDS.values() for sb in b.splits]


def _train(ctx, cfg: dict, compile_opt, dtype=torch.float64) -> dict:
    model, loss_fn = _model(cfg, dtype)
    extra = cfg.get("config", {})
    pipe = Pipeline(model, loss_fn=loss_fn,
                    optimizer=lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
                    schedule=cfg["schedule"], microbatches=cfg["M"], ctx=ctx,
                    checkpoint=cfg.get("checkpoint", "none"),
                    config=PipelineConfig(compile=compile_opt, **extra))
    losses, stats = [], []
    runs0 = split_runs()
    for k, t in enumerate(cfg.get("lengths", [T] * cfg.get("steps", 3))):
        x, y = _batch(cfg, cfg["batch"], k, dtype, t)
        t0 = time.perf_counter()
        res = pipe.step(x, y)
        stats.append({"wall_s": time.perf_counter() - t0,
                      "compile_s": res.stats.get("compile_s", 0.0),
                      "graphs": res.stats.get("compiled_graphs", 0)})
        losses.append(res.loss)
    runs1 = split_runs()
    local = {id(p) for p in pipe.params}
    return {"losses": losses, "params": {n: p.detach().clone() for n, p in model.named_parameters()
                                         if id(p) in local},
            "stats": stats, "runs": {k: runs1[k] - runs0[k] for k in runs0},
            "graphs": {s: c.graphs for s, c in (pipe.compiled or {}).items()},
            "fallbacks": list(pipe.compiled.fallbacks) if pipe.compiled else [],
            "kinds": sorted({a.kind for a in pipe.schedule.actions[ctx.rank]
                             if a.kind in "FBIW"})}


def matrix_job(ctx, cases: list[dict]) -> list[dict]:
    """For each case: the run with compile off, then on; the largest relative
    difference of the losses and of the local parameters after the steps."""
    torch.set_num_threads(1)
    out = []
    for cfg in cases:
        dtype = torch.float32 if cfg.get("config", {}).get("precision") == "bf16" \
            else torch.float64
        t0 = time.perf_counter()
        off = _train(ctx, cfg, False, dtype)
        if cfg.get("refuse_split"):  # fault injection: every backward refuses the split
            compilebackend.split_backward = _refuse
        try:
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                on = _train(ctx, cfg, cfg.get("compile", True), dtype)
        finally:
            compilebackend.split_backward = split_backward
        row = {"id": cfg["id"], "rank": ctx.rank, "runs": on["runs"], "graphs": on["graphs"],
               "stats": on["stats"], "kinds": on["kinds"], "fallbacks": on["fallbacks"],
               "warnings": [str(w.message) for w in seen
                            if issubclass(w.category, compiled_mod.CompileFallback)],
               "loss_err": max(abs(a - b) / abs(b) for a, b in zip(on["losses"], off["losses"])),
               "param_err": max(_models.rel_err(on["params"][n], off["params"][n])
                                for n in off["params"]),
               "counts": split_counts(), "seconds": time.perf_counter() - t0}
        if cfg.get("reference"):  # the bf16 cases: both against an fp64 unsplit run
            ref = _reference(cfg)
            row["ref_err_on"] = max(_models.rel_err(on["params"][n].double(), ref[n])
                                    for n in on["params"])
            row["ref_err_off"] = max(_models.rel_err(off["params"][n].double(), ref[n])
                                     for n in off["params"])
            plain = _train(ctx, {**cfg, "config": {}}, False, dtype)  # float32, no autocast
            row["ref_err_fp32"] = max(_models.rel_err(plain["params"][n].double(), ref[n])
                                      for n in plain["params"])
        out.append(row)
    return out


def _reference(cfg: dict) -> dict:
    """The parameters after the same steps of the unsplit model in float64."""
    model, loss_fn = _model(cfg, torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for k in range(cfg.get("steps", 3)):
        x, y = _batch(cfg, cfg["batch"], k, torch.float64)
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return {n: p.detach() for n, p in model.named_parameters()}


def hf_job(ctx, cfg: dict) -> dict:
    """A tiny GPT-2 through the Hugging Face adapter, cut in 2 stages, trained
    with compile off and on, sequence length changing between steps (side
    input: the attention mask). Returns the differences and the graphs
    compiled per step."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from conveyor.models.hf import causal_lm_chain
    from conveyor.runtime.execute.split import split_by_names
    from conveyor.runtime.train.losses import TokenCrossEntropy
    from tests.models import _families as fam

    config = GPT2Config(vocab_size=fam.V, n_positions=fam.T, n_embd=8, n_layer=2, n_head=2,
                        bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0)
    runs = {}
    for on in (False, True):
        torch.manual_seed(3)
        model = causal_lm_chain(GPT2LMHeadModel(config).double())
        pipe = Pipeline.from_stages(
            split_by_names(model, split_points=["layers.1"]),
            loss_fn=TokenCrossEntropy(), schedule=cfg["schedule"], microbatches=cfg["M"],
            optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1), ctx=ctx,
            config=PipelineConfig(loss_reduction="sum", compile=on))
        losses, graphs = [], []
        for k, t in enumerate(cfg["lengths"]):
            ids, mask, y = fam.lm_batch(8, seed=k + 1, t=t)
            res = pipe.step(ids, y, side={"attention_mask": mask})
            losses.append(res.loss)
            graphs.append(res.stats.get("compiled_graphs", 0))
        local = {id(p) for p in pipe.params}
        runs[on] = {"losses": losses, "graphs": graphs,
                    "params": {n: p.detach().clone() for n, p in model.named_parameters()
                               if id(p) in local},
                    "fallbacks": list(pipe.compiled.fallbacks) if on else []}
    off, on = runs[False], runs[True]
    return {"rank": ctx.rank, "graphs": on["graphs"], "fallbacks": on["fallbacks"],
            "loss_err": max(abs(a - b) / abs(b) for a, b in zip(on["losses"], off["losses"])),
            "param_err": max(_models.rel_err(on["params"][n], off["params"][n])
                             for n in off["params"])}


def count_job(ctx) -> dict:
    """Matmuls of a compiled stage's I and W against an eager B (same stage,
    same input): they must add up. Rank-local, in float64."""
    from conveyor.runtime.execute.compiled import compile_stages
    from conveyor.runtime.execute.splitgrad import backward_input
    from tests.runtime.test_split_backward import CountOps

    torch.manual_seed(0)
    stage = nn.Sequential(*[m for _ in range(3) for m in (nn.Linear(8, 8), nn.Tanh())]).double()
    fn = compile_stages({0: stage}, {}, rank=ctx.rank)[0]
    params = list(stage.parameters())
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 8, dtype=torch.float64, generator=g)
    gy = torch.randn(4, 8, dtype=torch.float64, generator=g)
    x = x0.clone().requires_grad_()
    y = fn(x)  # compiles (outside the counting)
    runs0 = split_runs()
    with CountOps() as ops_i:
        gin, pending = backward_input([y], [gy], [x], params)
    untouched = all(p.grad is None for p in params)
    with CountOps() as ops_w:
        pending.run()
    runs1 = split_runs()
    w_split = [p.grad.clone() for p in params]
    stage.zero_grad()
    xb = x0.clone().requires_grad_()
    yb = stage(xb)
    with CountOps() as ops_b:
        yb.backward(gy)
    return {"mm_i": ops_i.matmuls(), "mm_w": ops_w.matmuls(), "mm_b": ops_b.matmuls(),
            "untouched_after_i": untouched,
            "runs": {k: runs1[k] - runs0[k] for k in runs0},
            "gin_err": _models.rel_err(gin[0], xb.grad),
            "w_err": max(_models.rel_err(a, p.grad) for a, p in zip(w_split, params))}


def profile_job() -> dict:
    """The profiler on compiled layers: how many split-backward calls its I
    and W timings made, and what it recorded."""
    from conveyor.measure.profile import profile

    model = _models.mlp(2, seed=5)
    x, y = _models.batch(8, seed=5)
    runs0 = split_runs()
    prof = profile(model, x, repeats=1, warmup=1, progress=False, compile=True)
    runs1 = split_runs()
    return {"runs": {k: runs1[k] - runs0[k] for k in runs0}, "meta": prof.meta,
            "w_bytes": [lay.w_bytes + lay.w_out_bytes for lay in prof.layers],
            "weight_grad": [lay.weight_grad.at(8) for lay in prof.layers],
            "kinds": [lay.kind for lay in prof.layers]}


def limit_job() -> dict:
    """A region whose recompile limit is 1 (its own options, so its own
    region) meets a second shape class: the warning, and the eager result."""
    from conveyor.runtime.execute.compiled import compile_stages

    saved, compiled_mod.RECOMPILE_LIMIT = compiled_mod.RECOMPILE_LIMIT, 1
    try:
        stage = _models.mlp(2, seed=7)
        calls = compile_stages({0: stage}, {"max_autotune": False}, rank=1)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            x, _ = _models.batch(6, seed=7)
            calls[0](x[:4])
            x = x.reshape(2, 3, -1)  # another rank: a new graph whatever dynamo made dynamic
            out = calls[0](x)
    finally:
        compiled_mod.RECOMPILE_LIMIT = saved
    return {"warnings": [str(w.message) for w in seen
                         if issubclass(w.category, compiled_mod.CompileFallback)],
            "fallbacks": calls.fallbacks, "graphs": calls[0].graphs,
            "err": _models.rel_err(out, stage(x))}


def slow_compile_job(ctx) -> dict:
    """Rank 1's compile takes 12 s more (a sleep injected into the backend)
    while rank 0 waits on it with timeout_s=3 (6 s for a first step): the
    hang watch must see that a rank compiles and report no hang."""
    original = compilebackend._Backend.__call__

    def slow(self, gm, example_inputs):
        time.sleep(12)
        return original(self, gm, example_inputs)

    if ctx.rank == 1:
        compilebackend._Backend.__call__ = slow
    try:
        torch.manual_seed(9)  # width 7: a structure no other case compiled
        model = nn.Sequential(nn.Linear(_models.IN, 7), nn.Tanh(), nn.Linear(7, 7), nn.Tanh(),
                              nn.Linear(7, _models.OUT)).double()
        pipe = Pipeline(model, loss_fn=_models.loss_fn, optimizer=None,
                        schedule="1f1b", microbatches=2, ctx=ctx,
                        config=PipelineConfig(compile=True, timeout_s=3))
        x, y = _models.batch(4, seed=9)
        t0 = time.perf_counter()
        first = pipe.step(x, y)
        wall = time.perf_counter() - t0
        second = pipe.step(x, y)
    finally:
        compilebackend._Backend.__call__ = original
    return {"watched": pipe.hang_watched, "compile_s": first.stats["compile_s"],
            "wall_s": wall, "losses": [first.loss, second.loss]}


def suite_job(ctx, plan: dict) -> dict:
    """Every compile test's work in one launch (process start-up and the
    first compile cost seconds)."""
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    out = {"count": count_job(ctx)}
    t1 = time.perf_counter()
    out["matrix"] = matrix_job(ctx, plan["matrix"])
    t2 = time.perf_counter()
    out["hf"] = hf_job(ctx, plan["hf"]) if plan.get("hf") else None
    out["profile"] = profile_job() if ctx.rank == 0 else None
    out["limit"] = limit_job() if ctx.rank == 1 else None
    out["slow"] = slow_compile_job(ctx)  # last: a failure here ends the launch
    out["seconds"] = {"count": t1 - t0, "matrix": t2 - t1, "hf": time.perf_counter() - t2}
    return out


def failing_job(ctx) -> int:
    """Rank 1 compiles with an inductor switch that raises in the compiler.

    The switch is set in rank 1's process, not in its PipelineConfig: the
    configs must agree across ranks (the agreement refuses otherwise)."""
    if ctx.rank == 1:
        import torch._inductor.config as inductor_config
        inductor_config._raise_error_for_testing = True
    pipe = Pipeline(_models.mlp(2), loss_fn=_models.loss_fn, optimizer=None, schedule="1f1b",
                    microbatches=2, ctx=ctx, config=PipelineConfig(compile=True, timeout_s=120))
    x, y = _models.batch(4)
    pipe.step(x, y)
    return 0


def bad_option_job(ctx) -> int:
    Pipeline(_models.mlp(2), loss_fn=_models.loss_fn, optimizer=None, ctx=ctx,
             config=PipelineConfig(compile={"bogus": 1}))
    return 0
