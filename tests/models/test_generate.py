"""``Pipeline.generate`` against the models' own decoding, at P = 2 and 4
(one launch each, shared with the other model tests: ``_runs``).

Greedy tokens equal the model's own ``generate`` (the built-in GPT's, with
no cache; Hugging Face's, with its cache) for prompts of mixed lengths at
M = 1, 2, 4 lanes; the logits that chose them equal the model's own full
forward over the generated sequence (no cache) within 1e-10 in float64:
the pipeline computes one new token at a time over cached keys, the
reference every position at once, so BLAS rounds at other shapes (measured
at most 1.4e-16 here). Sampled tokens equal a one-process replay with the
same per-sequence generators, at any P and M. The KV cache's counted bytes
equal the planner's prediction. Bad calls fail on every rank, before any
decodes, and the pipeline generates afterwards.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from conveyor.runtime.execute.lanes import generation_positions, layout
from conveyor.runtime.execute.sampling import Sampling, generators, pick
from tests.models import _families as fam
from tests.models import _generate_jobs as G
from tests.models import _runs

pytestmark = pytest.mark.runtime
TOL64 = 1e-10  # float64 at other shapes than the reference (see the module docstring)
TOL32 = 1e-4   # float32: a few units of its resolution (1.2e-7) through 4 blocks, relative


def plan(P: int) -> dict:
    out = {"gpt": G._gpt_configs(P)}
    if fam.have_transformers():
        out["hf"] = G.hf_configs(P, _declared())
    return out


def _declared() -> list[str]:
    from conveyor.models.hf import FAMILIES
    from tests.models import _hf_families as H

    return [f for f in H.FAMILIES if FAMILIES[H.config(f).model_type].cache is not None]


def _rows(P: int) -> list[dict]:
    return _runs.runs(P)["generate"]


def _padded(prompts):
    p = layout(prompts)
    return p.ids, p.mask


# -- the built-in GPT -------------------------------------------------------------------

def _gpt_reference(dtype):
    model = G.gpt(dtype).eval()
    ids, mask = _padded(G.PROMPTS)
    seq = model.generate(ids, G.N, attention_mask=mask, do_sample=False)
    full = torch.cat([mask, torch.ones(len(G.PROMPTS), G.N, dtype=torch.long)], dim=1)
    with torch.no_grad():  # the logits that chose each token: one forward, no cache
        logits = model._forward_with(seq[:, :-1], full[:, :-1])[:, ids.shape[1] - 1:]
    return seq[:, ids.shape[1]:], logits.to(torch.float64)


@pytest.mark.parametrize("P", [2, 4])
@pytest.mark.parametrize("M", [1, 2, 4])
def test_gpt_greedy_equals_its_own_generate_float64(P, M):
    tokens, logits = _gpt_reference(torch.float64)
    for r, row in enumerate(_rows(P)):
        got = row[f"gpt-f64-M{M}"]
        assert torch.equal(got["tokens"], tokens), f"rank {r}"
        assert (got["logits"] - logits).abs().max() <= TOL64, f"rank {r}"
        assert got["lengths"].tolist() == [G.N] * len(G.PROMPTS)


def _least_margin(logits: torch.Tensor) -> float:
    """The smallest lead of the chosen (largest) logit over the next one."""
    top2 = logits.topk(2, dim=-1).values
    return float((top2[..., 0] - top2[..., 1]).min())


@pytest.mark.parametrize("P", [2, 4])
def test_gpt_float32_and_chunked_prefill(P):
    tokens32, logits32 = _gpt_reference(torch.float32)
    tokens64, logits64 = _gpt_reference(torch.float64)
    for row in _rows(P):
        got = row["gpt-f32-M4"]
        # Tokens compared exactly although the pipeline's batch shapes differ
        # from the reference's (rounding differs per shape and CPU): every
        # choice's winning logit leads the runner-up by more than twice the
        # logits' tolerance, so no rounding within it can change a token.
        assert _least_margin(logits32) > 2 * TOL32 * logits32.abs().max()
        assert torch.equal(got["tokens"], tokens32)
        assert (got["logits"] - logits32).abs().max() <= TOL32 * logits32.abs().max()
        chunked = row["gpt-chunked-M2"]  # prompts of 7 fed as 3 + 3 + 1 tokens
        assert torch.equal(chunked["tokens"], tokens64)
        assert (chunked["logits"] - logits64).abs().max() <= TOL64
        assert chunked["stats"]["rounds"] == 3 + G.N - 1


@pytest.mark.parametrize("P", [2, 4])
def test_prompts_padded_with_a_mask_or_packed_give_the_same_tokens(P):
    for row in _rows(P):
        want = row["gpt-f64-M2"]["tokens"]
        assert torch.equal(row["gpt-2d"]["tokens"], want)
        assert torch.equal(row["gpt-packed"]["tokens"], want)


def _replay_sampling() -> torch.Tensor:
    """The sampled tokens, one process: the model's full forward, ``pick``
    with one generator per sequence."""
    model = G.gpt(torch.float64).eval()
    ids, mask = _padded(G.PROMPTS)
    how = Sampling(**G.SAMPLE)
    out = []
    for i in range(len(G.PROMPTS)):
        gen = generators(how.seed, [i])
        seq, m = ids[i:i + 1], mask[i:i + 1]
        for _ in range(G.N):
            with torch.no_grad():
                logits = model._forward_with(seq, m)[:, -1]
            nxt = pick(logits, how, gen)[:, None]
            seq, m = torch.cat([seq, nxt], 1), torch.cat([m, torch.ones_like(nxt)], 1)
        out.append(seq[0, ids.shape[1]:])
    return torch.stack(out)


def test_sampling_is_the_same_at_any_P_and_M_and_on_every_rank():
    want = _replay_sampling()
    greedy, _ = _gpt_reference(torch.float64)
    assert not torch.equal(want, greedy)  # it samples: some token is not the most likely
    for P in (2, 4):
        for r, row in enumerate(_rows(P)):
            for M in (2, 5):
                assert torch.equal(row[f"gpt-sample-M{M}"]["tokens"], want), (P, r, M)


@pytest.mark.parametrize("P", [2, 4])
def test_stop_tokens_end_sequences_and_lanes(P):
    greedy, _ = _gpt_reference(torch.float64)
    for row in _rows(P):
        got = row["gpt-stop"]
        stop = got["stop"]
        for i, seq in enumerate(greedy.tolist()):
            n = seq.index(stop) + 1 if stop in seq else G.N
            assert got["lengths"][i] == n
            assert got["tokens"][i, :n].tolist() == seq[:n]
            assert got["tokens"][i, n:].eq(0).all()  # pad_id after the stop
        # Prompt 0 stopped at its first token, alone in lane 0 (M = 5): its lane
        # ran no further (no logits after), and its cache was let go.
        assert got["lengths"][0] == 1
        assert torch.isnan(got["logits"][0, 1:]).all() and not torch.isnan(got["logits"][0, :1]).any()
        assert got["stats"]["kv_cache_bytes"] < got["stats"]["kv_cache_predicted"]


@pytest.mark.parametrize("P", [2, 4])
def test_cache_bytes_counted_equal_the_planners_prediction(P):
    for row in _rows(P):
        for key in ("gpt-f64-M1", "gpt-f64-M2", "gpt-f64-M4", "gpt-f32-M4", "gpt-chunked-M2"):
            st = row[key]["stats"]
            assert st["kv_cache_bytes"] == st["kv_cache_predicted"] > 0, key
        # 4 blocks of width 16 (a key and a value each) over P ranks, 5 sequences of
        # 7 + 6 - 1 = 12 tokens fed, float64.
        assert row["gpt-f64-M2"]["stats"]["kv_cache_bytes"] == 4 // P * 5 * 12 * 32 * 8


@pytest.mark.parametrize("P", [2, 4])
def test_bad_calls_fail_on_every_rank_before_decoding(P):
    rows = _rows(P)
    want = {"prompt-too-long": ("ContextError", "prompt 0 has 32 tokens, longer than the "
                                "model's context of 16"),
            "past-context": ("ContextError", "ask for at most 10 new tokens"),
            "cache-budget": ("CacheBudgetError", "over cache_budget=1000"),
            "lanes": ("LanesError", "lanes=6 but only 5 prompt(s)"),
            "right-padded": ("PipelineError", "prompt 0 is right-padded"),
            "top-k-greedy": ("PipelineError", "give a temperature > 0 to sample"),
            "not-decodable": ("PipelineError", "rank 0: stage 0 cannot generate: its piece "
                              "'0' (Embedding) does not say how it decodes"),
            "disagree": ("AgreementError", "the ranks disagree on the generate call (a digest "
                         "of its prompts and options)")}
    for r, row in enumerate(rows):
        for name, (kind, text) in want.items():
            got = row["errors"][name]
            assert got is not None, (name, r)
            assert got[0] == kind and text in got[1], (name, r, got)
            assert got[2] or name == "disagree", (name, r)  # alike on every rank: said once
        # Nothing was left half-done: the next call decodes as before.
        assert torch.equal(row["after-errors"]["tokens"], row["gpt-f64-M2"]["tokens"])


# -- Hugging Face ------------------------------------------------------------------------

needs_hf = pytest.mark.skipif(not fam.have_transformers(), reason="needs transformers")


def _hf_reference(family: str, dtype, tokens: torch.Tensor):
    """(the model's own greedy generate, the logits of its full forward over
    ``tokens`` with no cache)."""
    from tests.models import _hf_families as H

    over = {"output_router_logits": False} if family in H.ROUTED else {}
    torch.manual_seed(3)  # the router flag changes no weight, only the library's loss
    model = H.hf_model(family, **over).to(dtype).eval()
    ids, mask = _padded(G.HF_PROMPTS)
    L = ids.shape[1]
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=G.N, do_sample=False,
                         pad_token_id=0, eos_token_id=0)[:, L:]
    out = torch.nn.functional.pad(out, (0, G.N - out.shape[1]), value=0)
    seq = torch.cat([ids, tokens], dim=1)[:, :-1]
    full = torch.cat([mask, torch.ones_like(tokens)], dim=1)[:, :-1]
    kw = {}
    if "position_ids" in inspect.signature(model.forward).parameters:
        kw["position_ids"] = generation_positions(full)  # as generate makes them
    with torch.no_grad():
        logits = model(input_ids=seq, attention_mask=full, **kw).logits[:, L - 1:]
    return out, logits.to(torch.float64)


def _hf_check(row: dict, family: str, dtype, tol: float) -> bool:
    """Tokens equal; logits within ``tol`` where the reference's are finite
    (the library's eager attention gives NaN to padded rows of some families in a
    whole-sequence forward, which the cached steps never compute). Returns
    whether logits were compared."""
    want, logits = _hf_reference(family, dtype, row["tokens"])
    assert torch.equal(row["tokens"], want), family
    ok = torch.isfinite(logits) & torch.isfinite(row["logits"])
    if not ok.all(dim=-1).any():
        return False
    err = (row["logits"] - logits)[ok].abs().max() / logits[ok].abs().max()
    assert err <= tol, (family, float(err))
    return True


@needs_hf
def test_every_family_with_a_cache_path_generates_as_the_model_does():
    rows = _rows(2)
    compared = [f for f in _declared()
                if all(_hf_check(r[f"hf-{f}-f64-M2"], f, torch.float64, TOL64) for r in rows)]
    assert {"llama", "gpt2", "mistral", "opt"} <= set(compared)
    for r in rows:
        _hf_check(r["hf-llama-f32-M2"], "llama", torch.float32, TOL32)


@needs_hf
@pytest.mark.parametrize("M", [1, 2, 4])
def test_hf_llama_at_P4(M):
    for r in _rows(4):
        assert _hf_check(r[f"hf-llama-f64-M{M}"], "llama", torch.float64, TOL64)
        st = r[f"hf-llama-f64-M{M}"]["stats"]
        assert st["kv_cache_bytes"] <= st["kv_cache_predicted"]  # less where lanes stop early


@needs_hf
def test_hf_float32_and_sliding_window_chunked_at_P4():
    for r in _rows(4):
        _hf_check(r["hf-gpt2-f32-M4"], "gpt2", torch.float32, TOL32)
        _hf_check(r["hf-mistral-f64-M2-chunk3"], "mistral", torch.float64, TOL64)


@needs_hf
def test_a_family_without_a_cache_path_is_refused_by_name():
    from conveyor.errors import PipelineError
    from conveyor.models.hf import FAMILIES, Family, causal_lm_chain
    from conveyor.runtime.execute.kvcache import check_decodes
    from conveyor.runtime.execute.split import split_by_names
    from tests.models import _hf_families as H

    base = FAMILIES["llama"]
    nocache = Family("llama-nocache", base.embed, base.layers, base.context, base.head)
    chain = causal_lm_chain(H.hf_model("llama"), family=nocache)
    first, second = split_by_names(chain, split_points=["layers.2"])
    with pytest.raises(PipelineError, match=r"stage 1 cannot generate: its piece 'layers.2' "
                                            r"\(Block\) is a layer of a family without a "
                                            r"KV-cache path"):
        check_decodes({1: second})
    check_decodes({0: split_by_names(causal_lm_chain(H.hf_model("llama")),
                                     split_points=["layers.2"])[0]})  # with one: accepted
