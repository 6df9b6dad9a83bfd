"""Rank jobs of the generate tests (test_generate.py): the built-in GPT and
Hugging Face tiny models decoded through the pipeline, every configuration
in one launch per P (shared with the other model tests, ``_runs``).

The ranks only generate; the references (the models' own ``generate`` and
full forwards) are computed in the test process, once."""

from __future__ import annotations

import torch

from conveyor.errors import ConveyorError
from conveyor.models.gpt import GPT, GPTConfig
from conveyor.runtime import Pipeline
from conveyor.runtime.execute.split import split_by_names

# Mixed lengths (1 to 7 tokens), left-padded to 7 inside generate.
PROMPTS = [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10, 11, 12, 13, 14], [3], [5, 5, 5, 5]]
N = 6
CONTEXT = 16
SAMPLE = dict(temperature=0.9, top_k=6, top_p=0.9, seed=7)


def gpt(dtype=torch.float64) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab=17, context=CONTEXT, layers=4, heads=2, width=16)).to(dtype)


def gpt_points(P: int) -> list[str]:
    return {2: ["blocks.2"], 4: ["blocks.1", "blocks.2", "blocks.3"]}[P]


def _loss(out, target):
    return torch.nn.functional.mse_loss(out, target)


def _pipe(ctx, stages):
    return Pipeline.from_stages(stages, loss_fn=_loss, optimizer=None, ctx=ctx)


def _result(g) -> dict:
    return {"tokens": g.tokens, "lengths": g.lengths,
            "logits": None if g.logits is None else g.logits.to(torch.float64),
            "stats": dict(g.stats)}


def _gpt_configs(P: int) -> list[dict]:
    out = [{"id": f"gpt-f64-M{M}", "dtype": "float64", "M": M} for M in (1, 2, 4)]
    out.append({"id": "gpt-f32-M4", "dtype": "float32", "M": 4})
    out.append({"id": "gpt-chunked-M2", "dtype": "float64", "M": 2, "chunk": 3})
    out.append({"id": "gpt-sample-M2", "dtype": "float64", "M": 2, "sample": True})
    out.append({"id": "gpt-sample-M5", "dtype": "float64", "M": 5, "sample": True})
    return out


def gpt_job(ctx, configs: list[dict]) -> dict:
    """Per config: the Generation's tokens, lengths, logits and stats."""
    out = {}
    pipes = {}
    for cfg in configs:
        dtype = getattr(torch, cfg["dtype"])
        if dtype not in pipes:
            pipes[dtype] = _pipe(ctx, split_by_names(gpt(dtype),
                                                     split_points=gpt_points(ctx.world_size)))
        opts = dict(SAMPLE) if cfg.get("sample") else {}
        g = pipes[dtype].generate(PROMPTS, N, lanes=cfg["M"], return_logits=True,
                                  prefill_chunk=cfg.get("chunk"), **opts)
        out[cfg["id"]] = _result(g)
    pipe = pipes[torch.float64]
    # Stop tokens: the greedy run's first token of prompt 0 ends that sequence
    # (and its lane: one sequence per lane) there.
    stop = int(out["gpt-f64-M2"]["tokens"][0, 0])
    g = pipe.generate(PROMPTS, N, lanes=5, stop_tokens=[stop], return_logits=True)
    out["gpt-stop"] = dict(_result(g), stop=stop)
    # The same prompts left-padded with a mask, and packed with their lengths.
    ids = torch.tensor([[0] * (7 - len(q)) + q for q in PROMPTS])
    out["gpt-2d"] = _result(pipe.generate(ids, N, attention_mask=(ids > 0).long(), lanes=2))
    flat = torch.tensor([t for q in PROMPTS for t in q])
    out["gpt-packed"] = _result(pipe.generate(flat, N, lengths=[len(q) for q in PROMPTS],
                                              lanes=2))
    out["errors"] = _errors(ctx, pipe)
    # After the refused calls the pipeline still generates, the same tokens.
    out["after-errors"] = _result(pipe.generate(PROMPTS, N, lanes=2))
    return out


def _errors(ctx, pipe) -> dict:
    """Each bad call's error type and message, on this rank."""
    long_prompt = [list(range(1, 17)) * 2]
    calls = {
        "prompt-too-long": lambda: pipe.generate(long_prompt, 2),
        "past-context": lambda: pipe.generate(PROMPTS, CONTEXT),
        "cache-budget": lambda: pipe.generate(PROMPTS, N, cache_budget=1000),
        "lanes": lambda: pipe.generate(PROMPTS, N, lanes=6),
        "right-padded": lambda: pipe.generate(torch.tensor([[1, 2, 0]]), 2,
                                              attention_mask=torch.tensor([[1, 1, 0]])),
        "top-k-greedy": lambda: pipe.generate(PROMPTS, 2, top_k=3),
        "not-decodable": lambda: _plain_pipe(ctx).generate(PROMPTS, 2),
        "disagree": lambda: pipe.generate(PROMPTS if ctx.rank else PROMPTS[::-1], 2),
    }
    got = {}
    for name, call in calls.items():
        try:
            call()
            got[name] = None
        except ConveyorError as e:
            got[name] = (type(e).__name__, str(e), getattr(e, "same_on_every_rank", False))
    return got


def _plain_pipe(ctx):
    torch.manual_seed(0)
    stages = [torch.nn.Sequential(torch.nn.Embedding(17, 4)), torch.nn.Sequential(
        torch.nn.Linear(4, 17))]
    if ctx.world_size == 4:
        stages = [stages[0], torch.nn.Sequential(torch.nn.Identity()),
                  torch.nn.Sequential(torch.nn.Identity()), stages[1]]
    return _pipe(ctx, stages)


def hf_configs(P: int, families) -> list[dict]:
    if P == 2:
        out = [{"id": f"hf-{f}-f64-M2", "family": f, "dtype": "float64", "M": 2}
               for f in families]
        out.append({"id": "hf-llama-f32-M2", "family": "llama", "dtype": "float32", "M": 2})
        return out
    out = [{"id": f"hf-llama-f64-M{M}", "family": "llama", "dtype": "float64", "M": M}
           for M in (1, 2, 4)]
    out += [{"id": "hf-gpt2-f32-M4", "family": "gpt2", "dtype": "float32", "M": 4},
            {"id": "hf-mistral-f64-M2-chunk3", "family": "mistral", "dtype": "float64",
             "M": 2, "chunk": 3}]
    return out


def hf_model(family: str, dtype):
    from tests.models import _hf_families as H

    torch.manual_seed(3)
    return H.hf_model(family).to(dtype)


def hf_job(ctx, configs: list[dict]) -> dict:
    from conveyor.models.hf import causal_lm_chain
    from tests.models import _hf_families as H

    out = {}
    for cfg in configs:
        chain = causal_lm_chain(hf_model(cfg["family"], getattr(torch, cfg["dtype"])))
        pipe = _pipe(ctx, split_by_names(chain, split_points=H.split_points(ctx.world_size)))
        g = pipe.generate(HF_PROMPTS, N, lanes=cfg["M"], stop_tokens=[0], return_logits=True,
                          prefill_chunk=cfg.get("chunk"))
        out[cfg["id"]] = _result(g)
    return out


# Left padding of at most 3 tokens: it never fills a sliding window of 5 (the
# library's eager attention gives a query with no key in its window NaN).
HF_PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [6, 7, 3, 4, 5], [8, 9, 10, 11, 12, 1, 2], [3, 4, 5, 6],
              [5, 5, 5, 5, 2, 3]]


def generate_job(ctx, plan: dict) -> dict:
    torch.set_num_threads(1)
    out = gpt_job(ctx, plan["gpt"])
    if plan.get("hf"):
        out.update(hf_job(ctx, plan["hf"]))
    return out

