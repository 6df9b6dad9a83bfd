"""The pipeline in one process (P = 1, no process group): several stages on one
rank pass tensors in memory, through the same interpreter."""

from __future__ import annotations

import torch
from torch import nn

from conveyor.runtime import Pipeline, PipelineConfig, split_model
from tests.runtime import _models
from tests.runtime.test_errors import chunks_on_one_rank


def reference(model, x, y, loss_fn=_models.loss_fn):
    model.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters()]


def test_from_stages_list_and_builder_match_the_unsplit_model():
    x, y = _models.batch(10)
    loss, grads = reference(_models.mlp(4), x, y)
    for make in ("list", "builder"):
        model = _models.mlp(4)
        stages = split_model(model, 3, balance=[3, 3, 3])
        arg = stages if make == "list" else (lambda s: stages[s])
        pipe = Pipeline.from_stages(arg, loss_fn=_models.loss_fn, optimizer=None,
                                    schedule=chunks_on_one_rank(3, 4))
        res = pipe.forward_backward(x, y)
        assert abs(res.loss - loss) < 1e-12
        for p, g in zip(model.parameters(), grads):
            assert _models.rel_err(p.grad, g) < 1e-12


def test_sum_reduction_weighs_micro_batches_by_one():
    total = lambda out, t: nn.functional.cross_entropy(out, t, reduction="sum")  # noqa: E731
    x, y = _models.batch(11)
    loss, grads = reference(_models.mlp(3), x, y, total)
    model = _models.mlp(3)
    pipe = Pipeline(model, loss_fn=total, optimizer=None, schedule=chunks_on_one_rank(2, 3),
                    config=PipelineConfig(loss_reduction="sum"))
    res = pipe.forward_backward(x, y)
    assert abs(res.loss - loss) / loss < 1e-12
    for p, g in zip(model.parameters(), grads):
        assert _models.rel_err(p.grad, g) < 1e-12


def test_predict_joins_micro_batches_in_eval_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.5), nn.Linear(8, 3)).double()
    pipe = Pipeline(model, loss_fn=_models.loss_fn, optimizer=None,
                    schedule=chunks_on_one_rank(2, 4), balance=[2, 1])
    x, _ = _models.batch(10)
    out = pipe.predict(x)
    model.eval()
    # Dropout off, sizes 3, 3, 2, 2 joined in order. Not bit-exact: BLAS picks
    # kernels by batch size, and on some CPUs (AVX-512) rows of a batch of 3
    # round differently from the same rows in a batch of 10 (1.7e-16 seen).
    # 1e-12 relative is four orders above float64 rounding, far below a wrong
    # row or a dropped micro-batch.
    assert _models.rel_err(out, model(x)) < 1e-12
    assert all(m.training for m in pipe.stages.values())  # restored afterwards


def test_recording_is_off_unless_asked():
    pipe = Pipeline(_models.mlp(2), loss_fn=_models.loss_fn, optimizer=None, schedule="gpipe",
                    microbatches=2)
    x, y = _models.batch(4)
    quiet = pipe.step(x, y)
    assert quiet.timeline is None and "peak_activation_bytes" not in quiet.stats
    loud = pipe.step(x, y, record=True)
    assert loud.timeline is not None and loud.timeline.P == 1
    assert [str(e.action) for e in loud.timeline.rank_events(0)] == ["0F0", "0F1", "0B0", "0B1"]


def test_activation_memory_counts_a_micro_batch_not_the_whole_batch():
    # One rank, 1F1B: one micro-batch is held at a time, so with M=8 the peak is an
    # eighth of the whole batch's. A micro-batch of the input is a view into the
    # whole batch's storage; counting that storage would make the ratio about 4.
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(64, 64) for _ in range(4)])
    x, y = torch.randn(64, 64), torch.randn(64, 64)
    peaks = {}
    for M in (1, 8):
        pipe = Pipeline(model, loss_fn=nn.functional.mse_loss, optimizer=None,
                        schedule="1f1b", microbatches=M)
        peaks[M] = pipe.forward_backward(x, y, record=True).stats["peak_activation_bytes"]
    assert peaks[8] > 0
    assert abs(peaks[1] / peaks[8] - 8) < 0.5, peaks


def test_a_pipeline_nobody_holds_is_freed_without_the_cycle_collector():
    """The pipeline owns its train loop and interpreters; nothing of them
    refers back strongly, so dropping the last reference frees it (and, on
    several ranks, its process groups) at once, not at a later collection."""
    import gc
    import weakref

    x, y = _models.batch(8)
    pipe = Pipeline(_models.mlp(2), loss_fn=_models.loss_fn,
                    optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1), microbatches=2,
                    before_step=lambda p: None)
    pipe.step(x, y)
    pipe.evaluate(x, y)
    ref = weakref.ref(pipe)
    enabled = gc.isenabled()
    gc.disable()
    try:
        del pipe
        assert ref() is None
    finally:
        if enabled:
            gc.enable()
