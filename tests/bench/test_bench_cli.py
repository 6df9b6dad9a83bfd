"""`conveyor bench`: bad arguments fail on one line with exit code 2 before any
process starts; a tiny grid runs end to end on real processes."""

import json

import pytest

from conveyor.cli.main import main


@pytest.mark.parametrize("args, message", [
    (["-P", "0"], "-P/--ranks: '0': give integers >= 1"),
    (["-P", "two"], "'two' is not a comma-separated list of integers"),
    (["-M", "4,x"], "'4,x' is not a comma-separated list of integers"),
    (["-s", "gpip"], "unknown schedule 'gpip'; did you mean 'gpipe'?"),
    (["--repeats", "0"], "--repeats: the value must be a positive integer, got 0"),
    (["--forward-ms", "-5"], "'-5' ms: give 0 to 60000 milliseconds"),
    (["--workload", "mlp", "-M", "3"], "batch of 4096 does not split into M=3"),
    (["--workload", "gpt"], "invalid choice: 'gpt'"),
    (["--json", "/nonexistent-folder/out.json"], "folder /nonexistent-folder does not exist"),
    (["--json", "/"], "--json /: is a folder"),
])
def test_bad_arguments_fail_fast_on_one_line(capsys, args, message):
    assert main(["bench", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("conveyor: error: ") and err.count("\n") == 1, err
    assert message in err


def test_cuda_needs_one_gpu_per_rank(capsys):
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() >= 8:
        pytest.skip("this machine has enough GPUs to run it")
    assert main(["bench", "--device", "cuda", "-P", "8"]) == 2
    err = capsys.readouterr().err
    assert "--device cuda with P=8 needs 8 GPUs" in err and err.count("\n") == 1


@pytest.mark.runtime
def test_tiny_grid_measures_step_bubble_memory_and_bytes(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "-P", "2", "-M", "3", "-s", "gpipe", "--forward-ms", "2",
               "--backward-ms", "4", "--repeats", "2", "--warmup", "1", "--device", "cpu",
               "--json", str(out)])
    assert rc == 0
    captured = capsys.readouterr()
    assert "1/1" in captured.err and "gpipe P=2 M=3" in captured.err  # progress from rank 0
    (row,) = json.loads(out.read_text())["rows"]
    assert (row["schedule"], row["P"], row["M"]) == ("gpipe", 2, 3)
    assert len(row["steps_s"]) == 2 and row["step_s"] > 0
    assert abs(row["ideal_s"] - (3 + 1) * 0.006) < 1e-12  # (M + P - 1) * (F + B)
    assert row["held"] == row["held_bound"] == [3, 3]      # GPipe holds all M
    assert row["sent_bytes"] == 2 * 3 * 8 * 4096 * 4       # activations and gradients, once
    assert abs(row["bubble_formula"] - 1 / 4) < 1e-12 and 0 < row["bubble"] < 1
    assert "gpipe" in captured.out and "held s0 (bound)" in captured.out
