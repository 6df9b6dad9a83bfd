"""Token-mean losses and the training loop in one process (S stages on one
rank, cuts in memory): the normaliser is what makes padded micro-batches exact."""

from __future__ import annotations

import pytest
import torch

from conveyor.errors import PipelineError
from conveyor.runtime import Pipeline, PipelineConfig
from conveyor.runtime.train.losses import TokenCrossEntropy
from tests.models import _lm
from tests.runtime._models import rel_err
from tests.runtime.test_errors import chunks_on_one_rank


def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


def _reference(x, y):
    ref = _lm.tied_lm()
    loss = _lm.token_mean(ref(x), y)
    loss.backward()
    return loss.item(), _grads(ref)


def test_padded_micro_batches_hold_different_token_counts():
    _, y = _lm.padded_batch(8, seed=1)
    counts = [int((part != -100).sum()) for part in torch.split(y, 2)]
    assert len(set(counts)) > 1  # otherwise sample weighting would be right by luck


@pytest.mark.parametrize("how", ["loss", "argument"])
def test_normaliser_is_exact_and_sample_weighting_is_not(how):
    x, y = _lm.padded_batch(8, seed=1)
    want, grads = _reference(x, y)
    sched = chunks_on_one_rank(4, 4)
    if how == "loss":
        kw, loss = {}, TokenCrossEntropy()
    else:  # any summing loss, with the count passed to step
        kw, loss = {"normalizer": int((y != -100).sum())}, TokenCrossEntropy().__call__
    model = _lm.tied_lm()
    pipe = Pipeline(model, loss_fn=loss, optimizer=None, schedule=sched,
                    config=PipelineConfig(loss_reduction="sum"))
    res = pipe.forward_backward(x, y, **kw)
    assert abs(res.loss - want) / want < 1e-12
    assert max(rel_err(p.grad, g) for p, g in zip(model.parameters(), grads)) < 1e-12
    # The per-micro-batch token mean weighted by samples: what users get otherwise.
    wrong = Pipeline(_lm.tied_lm(), loss_fn=_lm.token_mean, optimizer=None, schedule=sched)
    assert abs(wrong.forward_backward(x, y).loss - want) / want > 1e-4


def test_a_batch_of_only_padding_is_refused():
    x, y = _lm.padded_batch(4, seed=1)
    pipe = Pipeline(_lm.tied_lm(), loss_fn=TokenCrossEntropy(), optimizer=None,
                    schedule=chunks_on_one_rank(2, 2), config=PipelineConfig(loss_reduction="sum"))
    with pytest.raises(PipelineError, match="normaliser is 0"):
        pipe.step(x, torch.full_like(y, -100))


def test_accumulation_equals_one_step_on_both_batches():
    x1, y1 = _lm.padded_batch(8, seed=1)
    x2, y2 = _lm.padded_batch(8, seed=2)
    ref = _lm.tied_lm()
    (0.5 * (_lm.token_mean(ref(x1), y1) + _lm.token_mean(ref(x2), y2))).backward()
    model = _lm.tied_lm()
    seen = []
    pipe = Pipeline(model, loss_fn=TokenCrossEntropy(), optimizer=None,
                    schedule=chunks_on_one_rank(2, 4), before_step=lambda p: seen.append(1),
                    config=PipelineConfig(loss_reduction="sum", accumulate=2))
    pipe.step(x1, y1)
    assert seen == []  # no update after the first of two
    pipe.step(x2, y2)
    assert seen == [1]
    assert max(rel_err(p.grad, q.grad) for p, q in zip(model.parameters(),
                                                        ref.parameters())) < 1e-12


def test_bad_accumulate_is_refused():
    with pytest.raises(PipelineError, match="accumulate=0"):
        Pipeline(_lm.tied_lm(), loss_fn=TokenCrossEntropy(), optimizer=None,
                 schedule=chunks_on_one_rank(2, 2), config=PipelineConfig(accumulate=0))
