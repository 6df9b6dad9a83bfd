"""The two exchanges that open and close every step (issue 32), in order,
on real processes: the agreement completes after the first stage's first
forward (which it overlaps) and before any rank's first send or receive;
the end exchange posts its receives only after it; the loss and the guard's
flags reach every rank. The order is recorded, not timed."""

from __future__ import annotations

import pytest
import torch

from conveyor.runtime import Pipeline, launch
from conveyor.schedule.ir import RECV_B, RECV_F, SEND_F

pytestmark = pytest.mark.runtime


def order_job(ctx) -> dict:
    from conveyor.runtime.train import stepend

    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(4)])
    pipe = Pipeline(model, loss_fn=lambda o, t: ((o - t) ** 2).mean(), optimizer=None,
                    schedule="1f1b", microbatches=2, ctx=ctx)
    log: list = []

    def wrapper(handler):
        def run(a):
            log.append(a.kind)
            handler(a)
        return run

    pipe.interp.wrap_actions(wrapper)
    begin = pipe._agreement.begin

    def logged_begin(**kw):
        gate = begin(**kw)
        return lambda: (log.append("agreed"), gate())[1]

    pipe._agreement.begin = logged_begin
    post = stepend.StepEnd.post
    stepend.StepEnd.post = lambda self: (log.append("end posted"), post(self))[1]
    x = torch.randn(8, 4)
    losses = [pipe.step(x, x).loss for _ in range(2)]
    return {"log": log, "losses": losses}


@pytest.fixture(scope="module")
def out():
    return launch(order_job, nprocs=2)


def test_the_first_stage_computes_before_the_agreement_completes(out):
    log = out[0]["log"]
    first = log[:log.index("agreed")]
    assert first == ["F"], log  # its first forward, then the gate, then its first send
    assert log[log.index("agreed") + 1] == SEND_F, log


def test_every_other_rank_agrees_before_its_first_action(out):
    assert out[1]["log"][0] == "agreed"
    assert out[1]["log"][2] == RECV_F  # after the end exchange's receive is posted


def test_the_end_exchange_posts_after_the_agreement_where_the_rank_first_waits(out):
    for r in (0, 1):
        log = out[r]["log"]
        steps = [i for i, e in enumerate(log) if e == "agreed"]
        assert len(steps) == 2  # one agreement per step
        for k, start in enumerate(steps):
            end = steps[k + 1] if k + 1 < len(steps) else len(log)
            part = log[start:end]
            assert part.count("end posted") == 1, part
            first_recv = next(i for i, e in enumerate(part) if e in (RECV_F, RECV_B))
            assert part.index("end posted") == first_recv - 1, part


def test_every_rank_gets_the_same_loss(out):
    assert out[0]["losses"] == out[1]["losses"]
    assert all(v > 0 for v in out[0]["losses"])
