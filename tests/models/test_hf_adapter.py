"""The Hugging Face adapter in one process: every family's chain passes the
check against the model's own forward, builds per stage with every buffer
the model's constructor gives, and every way a model is refused is refused
by name (a dropped multiplier and a dropped sliding window included)."""

from __future__ import annotations

import pytest
import torch

from conveyor.errors import PartitionError
from conveyor.runtime.execute.split import build_stage, chain_pieces, stage_names
from tests.models import _families as fam
from tests.models import _hf_families as H

pytestmark = pytest.mark.skipif(not fam.have_transformers(), reason="needs transformers")


def _chain(family, **over):
    from conveyor.models.hf import causal_lm_chain

    torch.manual_seed(0)
    return causal_lm_chain(H.hf_model(family, **over))


@pytest.mark.parametrize("family", H.FAMILIES)
def test_per_stage_builds_give_every_buffer_the_constructors_value(family):
    """build_stage(..., state_dict=) on each of 2 stages: every buffer (rotary
    tables, Gemma's embed_scale, ...) equals the whole model's, bit for bit
    (the same constructor ran), and the stages in turn compute the model's
    own logits (the same operations at the same shapes: equal)."""
    from conveyor.models.hf import causal_lm_chain

    whole = _chain(family)
    assert whole.verified == 0.0
    sd = whole.state_dict()
    make = lambda: causal_lm_chain(H.hf_model(family))  # noqa: E731
    groups = stage_names([n for n, _ in chain_pieces(whole)], split_points=H.split_points(2))
    stages = [build_stage(make, g, state_dict=sd) for g in groups]
    want = dict(whole.named_buffers(remove_duplicate=False))
    seen = 0
    for st in stages:
        assert st.export_names  # HF names travel with the stage (export)
        for name, buf in st.named_buffers():
            assert buf.device.type == "cpu" and torch.equal(buf, want[name]), (family, name)
            seen += 1
    # Every family but the learned-position ones holds a rotary table or a scale.
    assert seen > 0 or family in ("gpt2", "opt", "bloom")
    ids, mask, _ = H.batch(3, seed=4)
    with torch.no_grad():
        h = stages[0](ids, attention_mask=mask)
        got = stages[1](*(h if isinstance(h, tuple) else (h,)), attention_mask=mask)
        assert torch.equal(got, whole._model(input_ids=ids, attention_mask=mask).logits)


def test_gemmas_embed_scale_survives_a_meta_build():
    """The bug this guards: built on the meta device and loaded from a state
    dict (which does not hold non-persistent buffers), Gemma's embed_scale
    came out 0.0 or 4.6e-310 instead of sqrt(hidden)."""
    from conveyor.models.hf import causal_lm_chain

    whole = _chain("gemma")
    stage = build_stage(lambda: causal_lm_chain(H.hf_model("gemma")), ["embed"],
                        state_dict=whole.state_dict())
    assert stage.embed.tokens.embed_scale.item() == pytest.approx(8 ** 0.5, rel=1e-6)


def test_a_new_family_in_five_lines():
    """StableLM is not registered; the public blocks adapt it, and the check
    accepts it because it computes what the model computes."""
    import transformers as tf

    from conveyor.models.hf import Embed, Family, Head, RotaryContext, causal_lm_chain
    cfg = tf.StableLmConfig(vocab_size=13, hidden_size=8, intermediate_size=16,
                            num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)
    with pytest.raises(PartitionError, match=r"model_type 'stablelm'.*not a family.*Family"):
        causal_lm_chain(tf.StableLmForCausalLM(cfg).double())
    stablelm = Family(
        "stablelm", embed=lambda m: Embed(m.model.embed_tokens), layers=lambda m: m.model.layers,
        context=lambda m: RotaryContext(m.config, m.model.rotary_emb),
        head=lambda m: Head(m.model.norm, m.lm_head))
    chain = causal_lm_chain(tf.StableLmForCausalLM(cfg).double(), family=stablelm)
    assert chain.verified == 0.0


def _granite_as_llama():
    """A deliberately broken adapter: Granite cut as a plain Llama, its
    embedding multiplier and logit scaling dropped."""
    from conveyor.models.hf import FAMILIES, Family

    llama = FAMILIES["llama"]
    return Family("granite", embed=llama.embed, layers=llama.layers, context=llama.context,
                  head=llama.head)


def test_the_probe_refuses_a_dropped_multiplier_naming_the_fields():
    from conveyor.models.hf import causal_lm_chain

    model = H.hf_model("granite")
    with pytest.raises(PartitionError) as e:
        causal_lm_chain(model, family=_granite_as_llama())
    text = str(e.value)
    assert "'granite' chain of GraniteForCausalLM" in text
    assert "embedding_multiplier=12.0" in text and "logits_scaling=8.0" in text
    assert "float64" in text and "Adapting a family" in text
    # verify=False takes it, and it is wrong: what the docs warn of.
    chain = causal_lm_chain(model, family=_granite_as_llama(), verify=False)
    ids, mask = torch.randint(1, H.V, (2, 8)), torch.ones(2, 8, dtype=torch.long)
    with torch.no_grad():
        off = (chain(ids, attention_mask=mask) - model(input_ids=ids).logits).abs().max()
    assert chain.verified is None and off > 0.1


@pytest.mark.parametrize("window", [H.WINDOW, 4096])
def test_the_probe_refuses_a_dropped_sliding_window(window):
    """A window longer than the probe is shortened for it, so a chain that
    drops Mistral's 4096-token window is caught too."""
    from conveyor.models.hf import FAMILIES, Family, RotaryContext, causal_lm_chain

    m = FAMILIES["mistral"]
    no_window = Family("mistral", embed=m.embed, layers=m.layers, head=m.head,
                       context=lambda model: RotaryContext(model.config, model.model.rotary_emb))
    model = H.hf_model("mistral", sliding_window=window)
    with pytest.raises(PartitionError, match=rf"sliding_window={window}"):
        causal_lm_chain(model, family=no_window)
    assert model.config.sliding_window == window  # restored after the probe
    assert causal_lm_chain(model).verified == 0.0  # the real adapter models it


@pytest.mark.parametrize("family, over, match", [
    ("opt", {"layerdrop": 0.1}, r"\(opt\) cannot be cut as configured: layerdrop=0.1"),
    ("gemma3", {"use_bidirectional_attention": True}, r"use_bidirectional_attention=True"),
    ("llama", {"output_router_logits": True}, r"output_router_logits=True asks for a router"),
])
def test_configurations_a_family_cannot_represent_are_refused(family, over, match):
    with pytest.raises(PartitionError, match=match):
        _chain(family, **over)


def test_other_refusals_name_the_model():
    import transformers as tf

    from conveyor.models.hf import causal_lm_chain
    cls = tf.LlamaForSequenceClassification(H.config("llama", num_labels=2))
    with pytest.raises(PartitionError, match=r"does not have the layout of the 'llama' family"):
        causal_lm_chain(cls)
    with pytest.raises(PartitionError, match=r"Linear \(model_type None\) is not a family"):
        causal_lm_chain(torch.nn.Linear(2, 2))
    broken = H.hf_model("llama")
    with torch.no_grad():
        broken.model.norm.weight.fill_(float("nan"))
    with pytest.raises(PartitionError, match=r"model's own forward gives NaN"):
        causal_lm_chain(broken)
