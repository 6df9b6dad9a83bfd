"""The installed example models (conveyor.models.examples): what the docs'
walk-throughs and the planner benchmarks profile."""

from __future__ import annotations

import pytest
import torch

from conveyor.cli.profile import load_factory
from conveyor.models import examples
from conveyor.runtime.execute.stages import fingerprint


def test_unbalanced_is_the_benchmarks_model():
    model, x = examples.unbalanced()
    assert len(model) == 14 and x.shape == (64, 256)
    assert [layer.units for layer in model] == [8] + [1] * 8 + [2] * 4 + [3]
    # the fingerprint recorded in benchmarks/planner.json and docs/planning.md:
    # plans made when the model lived in benchmarks/ still match it
    assert fingerprint(model) == "9d530bf9eb5c"
    y = model[0](x[:10])
    assert model[0].times.forward == pytest.approx(8 * (0.00005 + 0.0006 * 10), rel=1e-12)
    assert model[0].times.backward == pytest.approx(2 * model[0].times.forward, rel=1e-12)
    assert y.shape == (10, 256)


def test_unbalanced_small_is_the_same_shape_at_a_fiftieth_of_the_time():
    big, small = examples.unbalanced()[0], examples.unbalanced_small()[0]
    assert [layer.units for layer in small] == [layer.units for layer in big]
    x = torch.randn(16, 64)
    for layer in small:
        x = layer(x)
    head = small[-1]
    assert head.times.forward == pytest.approx(3 * (0.00005 + 0.0006 * 16) / 50, rel=1e-12)


def test_the_docs_model_specs_load_after_install():
    # `conveyor profile --model conveyor.models.examples:NAME`, as the docs write it
    for name in ("unbalanced", "unbalanced_small", "real_mlp_with_loss"):
        got = load_factory(f"conveyor.models.examples:{name}")()
        assert isinstance(got, tuple) and len(got) in (2, 4)
    model, ids, loss_fn, targets = examples.real_mlp_with_loss()
    assert len(model) == 11 and ids.shape == (512, 64) and targets.shape == (512, 256)
    with torch.no_grad():
        assert model(ids[:4]).shape == (4, 256)


def test_mlp_and_random_batch_are_the_same_on_every_call():
    a, b = examples.mlp(), examples.mlp()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    (x1, y1), (x2, y2) = examples.random_batch(3), examples.random_batch(3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, examples.random_batch(4)[0])
    assert torch.equal(y1, x1[:, :10].argmax(1)) and a(x1).shape == (32, 10)
