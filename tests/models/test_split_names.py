"""Cutting by module name and building one stage without the model (one
process, no process group)."""

from __future__ import annotations

import pytest
import torch

from conveyor.errors import PartitionError
from conveyor.models import GPT, GPTConfig
from conveyor.runtime.execute.split import build_stage, chain_pieces, param_bytes, split_by_names, \
    stage_names
from tests.models import _families as fam

CFG = GPTConfig(vocab=13, context=8, layers=4, heads=2, width=8)
PIECES = ["embed", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "head"]


def test_pieces_and_the_two_ways_to_name_stages():
    assert [n for n, _ in chain_pieces(GPT(CFG))] == PIECES
    by_points = stage_names(PIECES, split_points=["blocks.1", "blocks.3"])
    assert by_points == [["embed", "blocks.0"], ["blocks.1", "blocks.2"], ["blocks.3", "head"]]
    assert stage_names(PIECES, stages=by_points) == by_points


@pytest.mark.parametrize("kw, match", [
    ({"split_points": ["blocks.9"]}, r"'blocks.9' is not a piece.*embed, blocks.0"),
    ({"split_points": ["blocks.3", "blocks.1"]}, "distinct, in model order"),
    ({"split_points": ["embed"]}, "not the first piece"),
    ({"stages": [["embed", "blocks.0"], ["blocks.2", "blocks.3", "head"]]}, "cover every piece"),
    ({"stages": [["embed", "blocks.1", "blocks.0"], ["blocks.2", "blocks.3", "head"]]},
     "cover every piece once, in order"),
    ({}, "exactly one of"),
])
def test_bad_names_are_refused_with_the_pieces(kw, match):
    with pytest.raises(PartitionError, match=match):
        stage_names(PIECES, **kw)


def test_chain_stages_equal_the_model_and_pass_side_inputs():
    torch.manual_seed(0)
    model = GPT(CFG).double()
    ids, mask, _ = fam.lm_batch(3, seed=1)
    h: tuple = (ids,)
    for stage in split_by_names(model, split_points=["blocks.2"]):
        h = (stage(*h, attention_mask=mask),)  # Embed/Head take no mask: filtered out
    assert torch.equal(h[0], model(ids, attention_mask=mask))
    # The stages keep the model's parameter names.
    names = [n for s in split_by_names(model, split_points=["blocks.2"])
             for n, _ in s.named_parameters()]
    assert set(names) == {n for n, _ in model.named_parameters(remove_duplicate=False)}


def test_a_stage_is_built_without_the_model_from_a_seed_or_shards():
    make = lambda: GPT(CFG).double()  # noqa: E731
    whole = build_stage(make, PIECES, seed=5)
    assert whole.embed.wte.weight is whole.head.lm_head.weight  # the tie survives to_empty
    first = build_stage(make, ["embed", "blocks.0"], seed=5)
    assert param_bytes([first]) < param_bytes([whole]) / 2
    for n, p in first.named_parameters():  # same weights whatever else a rank builds
        assert torch.equal(p, whole.get_parameter(n)), n
    sd = {k: v.clone() for k, v in whole.state_dict().items()}
    shards = [{k: v for k, v in sd.items() if k.startswith("embed")},
              {k: v for k, v in sd.items() if not k.startswith("embed")}]
    last = build_stage(make, ["blocks.3", "head"], state_dict=shards)
    assert torch.equal(last.head.lm_head.weight, whole.embed.wte.weight)
    short = {k: v for k, v in shards[1].items() if k != "head.ln_f.bias"}
    with pytest.raises(PartitionError, match="lacks 1 key"):
        build_stage(make, ["blocks.3", "head"], state_dict=[short])


@pytest.mark.skipif(not fam.have_transformers(), reason="transformers not installed")
def test_hf_checkpoint_keys_fill_a_stage_even_when_the_tied_head_is_stored_once():
    from transformers import GPT2LMHeadModel

    from conveyor.models.hf import chain_key_map, chain_state_dict
    make = fam.factory("gpt2")
    torch.manual_seed(0)
    full = make()  # a chain over a real GPT2LMHeadModel
    with torch.device("meta"):
        skeleton = GPT2LMHeadModel(full.config)
    keys = chain_key_map(skeleton)
    assert keys["head.lm_head.weight"] == keys["embed.tokens.weight"] == "transformer.wte.weight"
    # A checkpoint that stores the tied matrix once, under the embedding's key.
    hf_sd = {hk: full.get_parameter(ck).detach().clone() for ck, hk in keys.items()}
    assert "lm_head.weight" not in hf_sd
    stage = build_stage(make, ["layers.3", "head"],
                        state_dict=chain_state_dict(hf_sd, keys))
    assert torch.equal(stage.head.lm_head.weight, full.head.lm_head.weight)


@pytest.mark.skipif(not fam.have_transformers(), reason="transformers not installed")
def test_a_seed_cannot_initialise_modules_without_reset_parameters():
    # GPT-2's Conv1D and Llama's RMSNorm have no reset_parameters: a seed
    # would leave to_empty's garbage in them, so it is refused.
    for family in ("gpt2", "llama"):
        with pytest.raises(PartitionError, match="no reset_parameters.*state_dict"):
            build_stage(fam.factory(family), ["layers.0"], seed=1)


def test_a_buffer_the_factory_made_on_meta_is_refused_not_left_as_garbage():
    """A factory that builds under torch.device("meta") itself loses its
    non-persistent buffers' values: build_stage refuses, naming the buffer."""
    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)
            self.register_buffer("scale", torch.tensor(3.0), persistent=False)

    def make():
        with torch.device("meta"):
            return torch.nn.Sequential(Scaled())

    sd = {"0.lin.weight": torch.ones(2, 2), "0.lin.bias": torch.zeros(2)}
    with pytest.raises(PartitionError, match=r"buffer '0.scale' .* made on the meta device"):
        build_stage(make, ["0"], state_dict=sd)
    ok = build_stage(lambda: torch.nn.Sequential(Scaled()), ["0"], state_dict=sd)
    assert ok.get_buffer("0.scale").item() == 3.0
