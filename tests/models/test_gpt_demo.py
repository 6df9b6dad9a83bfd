"""The GPT demo on the standard library's source: 4 processes, float32, 30
steps; its loss curve equals the unsplit model's (same batches, AdamW, LR
schedule, global clipping) to 1e-4, and it falls."""

from __future__ import annotations

import math
import re

import pytest

from conveyor.models.gpt_demo import GPTDemoConfig, corpus, run_gpt_demo, train_reference

pytestmark = pytest.mark.runtime

CFG = GPTDemoConfig(stages=4, microbatches=4, steps=30, batch=8, context=32, width=32,
                    heads=2, layers=4, corpus_bytes=100_000, eval_every=15, eval_batches=1,
                    sample=40)


def test_corpus_is_python_source_on_this_machine():
    text = corpus(50_000)
    assert len(text) == 50_000 and b"def " in text and b"import " in text


def test_pipelined_gpt_matches_unsplit_loss_curve_and_learns(capsys):
    result = run_gpt_demo(CFG, quiet=True)
    ref = train_reference(CFG)
    got = result["losses"]
    assert len(got) == len(ref) == 30
    assert max(abs(a - b) for a, b in zip(got, ref)) <= 1e-4
    assert sum(got[-5:]) / 5 < sum(got[:5]) / 5 - 0.5  # it learns
    out = capsys.readouterr().out
    first, last = map(float, re.search(r"val loss ([0-9.]+) -> ([0-9.]+) nats/byte", out).groups())
    assert last < first
    ppl = re.search(r"perplexity ([0-9.]+) -> ([0-9.]+)", out).groups()
    assert [float(p) for p in ppl] == pytest.approx([math.exp(first), math.exp(last)], rel=2e-3)
    sample = out.split("sample:\n", 1)[1]
    assert sample.startswith("def ") and len(sample) >= 40
    # Sampled through the pipeline: one lane per rank, in windows of the context.
    assert "sampled through the pipeline: 4 lanes (one prompt each) of 40 bytes" in out
    assert [len(x) for x in result["samples"]] == [4 + 40, 6 + 40, 7 + 40, 4 + 40]
    assert result["samples"][0].decode("utf-8", "replace") == sample.rstrip("\n")


def test_cli_refuses_bad_steps_in_one_line():
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "conveyor", "demo", "--model", "gpt",
                           "--steps", "0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "argument --steps" in proc.stderr and "got 0" in proc.stderr
