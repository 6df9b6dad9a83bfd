"""Ranks that disagree fail at once, every rank alike, naming the field and each value.

One launch of two ranks runs every case in turn: each case fails on both
ranks in the same all-gather, so the run goes on to the next. The last case
is a step on rank 0 only: the launch must fail within seconds (not at the
300 s process-group timeout), saying that rank 1 finished its function.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from conveyor.runtime import LaunchOptions, RankFailedError, launch
from tests.runtime import _hardening_jobs as jobs

pytestmark = pytest.mark.runtime


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    out = tmp_path_factory.mktemp("agree") / "rows.json"
    t0 = time.monotonic()
    with pytest.raises(RankFailedError) as err:
        launch(jobs.agreement_job, nprocs=2, args=(str(out),),
               options=LaunchOptions(timeout_s=120))
    return {row["case"]: row for row in json.loads(out.read_text())}, err.value, \
        time.monotonic() - t0


@pytest.mark.parametrize("case, field, words", [
    ("M", "M", ["M (micro-batches)", "rank 0: 2", "rank 1: 4"]),
    ("batch", "batch", ["batch size", "rank 0: 8", "rank 1: 6"]),
    ("batch on step 2", "batch", ["rank 0: 8", "rank 1: 6"]),
    ("schedule", "schedule", ["the schedule", "rank 0: 1f1b", "rank 1: gpipe"]),
    ("model", "model", ["the model", "rank 0: layers per stage: [2, 2], rank 1: layers per stage: [3, 2]"]),
    ("width", "model", ["rank 0: stage 0 layer 1: Linear ((4, 4), (4,))",
                        "rank 1: stage 0 layer 1: Linear ((5, 4), (5,))"]),
    ("seed, checked", "weights", ["the initial weights", "parameter 0", "torch.manual_seed"]),
    ("step vs predict", "kind", ["rank 0: starts step", "rank 1: starts predict"]),
    ("batch, first forward fails", "batch", ["batch size", "rank 0: 8", "rank 1: 6"]),
])
def test_a_disagreement_names_the_field_and_each_rank_value(outcome, case, field, words):
    rows, _, _ = outcome
    row = rows[case]
    assert row["field"] == field, row
    for w in words:
        assert w in row["message"], (w, row["message"])


def test_a_different_seed_is_only_caught_when_asked(outcome):
    rows, _, _ = outcome
    assert rows["seed, unchecked"]["field"] is None


def test_a_step_on_one_rank_only_fails_at_once_naming_the_finished_rank(outcome):
    _, err, elapsed = outcome
    m = re.search(r"rank 1 finished its function after (\d+) steps while rank 0 starts step "
                  r"(\d+); every rank must call step", str(err))
    assert m and int(m.group(2)) == int(m.group(1)) + 1, str(err)
    assert elapsed < 100  # far below the 120 s timeout: nobody waited for it
