"""Sequence length changing between steps and between micro-batches of one
step (P=2, one launch), exact against the unsplit model; the handshake runs
once per new length, or per micro-batch with varying_shapes=True."""

from __future__ import annotations

import pytest

from conveyor.runtime.transport.comm import META_LEN
from tests.models import _runs

pytestmark = pytest.mark.runtime

CONFIGS = [
    {"id": "fixed", "model": "gpt", "M": 2, "lengths": [8, 8, 8, 8]},
    {"id": "per-step", "model": "gpt", "M": 2, "lengths": [8, 6, 8, 5]},
    {"id": "per-microbatch", "model": "trim", "M": 4, "lengths": [8, 8, 6], "each": True},
]
HANDSHAKE = META_LEN * 8  # bytes of one handshake message


@pytest.fixture(scope="module")
def rows():
    per_rank = _runs.runs(2)["varlen"]
    return {row["id"]: row for row in per_rank[0]}, {row["id"]: row for row in per_rank[1]}


def test_changing_lengths_are_exact(rows):
    for side in rows:
        for cid, row in side.items():
            assert row["err"] <= 1e-10, (cid, row["rank"])


def test_handshake_only_for_a_new_length(rows):
    first, _ = rows  # rank 0 sends the activations, and the handshakes
    assert first["fixed"]["meta"] == [HANDSHAKE, 0, 0, 0]
    assert first["per-step"]["meta"] == [HANDSHAKE, HANDSHAKE, 0, HANDSHAKE]
    # Every micro-batch (M=4) of every step carries its own handshake.
    assert first["per-microbatch"]["meta"] == [4 * HANDSHAKE] * 3
    # Activations follow each micro-batch's own length (t = 8, 3, 5, 2 for step 0).
    assert first["per-microbatch"]["p2p"][0] == 2 * 8 * 8 * (8 + 3 + 5 + 2)
