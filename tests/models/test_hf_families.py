"""Every Hugging Face family the adapter supports, pipelined at P = 2 under
1f1b and zbv (2 and 4 stages), M = 2, padded batches, float64, against the
model's own forward and training: the loss, the MoE router loss, every
gradient and every weight after 2 SGD steps, within 1e-10 (relative). The
micro-batches compute at other shapes than the whole batch, so BLAS rounds
differently: a tolerance, far below what a dropped piece does (0.68 for a
dropped sliding window, 7.3 for Granite's multipliers). One launch for all
(shared with the other model tests)."""

from __future__ import annotations

import pytest
import torch

from tests.models import _families as fam
from tests.models import _hf_families as H
from tests.models import _runs

pytestmark = [pytest.mark.runtime,
              pytest.mark.skipif(not fam.have_transformers(), reason="needs transformers")]
TOL = 1e-10


def grid() -> list[dict]:
    return [{"id": f"{f}-{s}", "family": f, "schedule": s, "M": 2}
            for f in H.FAMILIES for s in ("1f1b", "zbv")]


def _rows() -> dict:
    return _runs.by_id(_runs.runs(2)["hf"])


@pytest.mark.parametrize("family", H.FAMILIES)
def test_family_trains_as_the_model_does(family):
    rows = _rows()
    for schedule in ("1f1b", "zbv"):
        per_rank = rows[f"{family}-{schedule}"]
        assert len(per_rank) == 2
        for row in per_rank:
            where = f"{family} {schedule} rank {row['rank']}"
            assert row["verified"] == 0.0, where  # the probe: the same bits as the model
            assert row["loss_err"] <= TOL, where
            assert row["grad_err"] <= TOL, where
            assert row["param_err"] <= TOL, where
            assert row["checked"] > 0, where
            if family in H.ROUTED:
                assert row["aux_err"] <= TOL, where
                assert all(a > 0 for a in row["aux"]), where  # the router loss is there
            else:
                assert row["aux"] == [0.0, 0.0], where


@pytest.mark.parametrize("family", H.ROUTED)
def test_router_loss_equals_the_models_own(family):
    """M = 1: the router loss equals the one in the model's own ``.loss``
    (output_router_logits=True) bit for bit (both float32, widened), and main
    + router loss equal ``.loss`` to float32's resolution: the library takes
    its cross-entropy in float32 (ForCausalLMLoss upcasts the logits), the
    pipeline in the logits' float64; the float64 comparison with the model's
    own logits and router loss is test_family_trains_as_the_model_does."""
    for rows in _runs.runs(2)["hf_own"]:
        row = rows[H.ROUTED.index(family)]
        assert row["aux_loss"] == row["own_aux"]
        assert abs(row["loss"] + row["aux_loss"] - row["own_loss"]) <= 1e-6 * row["own_loss"]
        assert row["aux_loss"] > 1e-2 * row["own_loss"]  # large enough to matter


def test_export_is_the_hf_state_dict_and_round_trips_through_save_pretrained(tmp_path):
    """A tied Llama trained 2 steps at P = 2: ``pipe.export_state_dict()`` on
    rank 0 holds every key of the HF model's state dict (the tied matrix
    under both of its names), with the weights of the model trained alone;
    ``save_pretrained(state_dict=...)`` then ``from_pretrained`` gives the
    same logits (same weights, same computation: equal) and keeps the tie."""
    import transformers as tf

    from tests.runtime._models import rel_err
    per_rank = _runs.runs(2)["hf_export"]
    assert per_rank[1]["state"] is None  # gathered on rank 0 only
    sd, ref = per_rank[0]["state"], per_rank[0]["ref"]
    assert set(sd) == set(ref) and "lm_head.weight" in sd
    for k in ref:
        assert rel_err(sd[k], ref[k]) <= TOL, k
    mine = H.hf_model("llama")
    mine.load_state_dict(sd)  # strict: every key, nothing else
    # (save_pretrained empties the dict it is given: hand it a copy)
    H.hf_model("llama").save_pretrained(tmp_path, state_dict=dict(sd))
    loaded = tf.LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float64)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    ids, mask, _ = H.batch(4, seed=9)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids, attention_mask=mask).logits,
                           mine(input_ids=ids, attention_mask=mask).logits)
