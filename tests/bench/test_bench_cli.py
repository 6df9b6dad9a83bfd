"""`conveyor bench` rejects bad arguments with one line and exit code 2, before
any process starts."""

import pytest

from conveyor.cli.main import main


@pytest.mark.parametrize("args, message", [
    (["-P", "0"], "-P/--stages: '0': give integers >= 1"),
    (["-P", "two"], "'two' is not a comma-separated list of integers"),
    (["-P", "1"], "P values [1] include P < 2"),
    (["-M", "4,x"], "'4,x' is not a comma-separated list of integers"),
    (["-s", "gpip"], "unknown schedule 'gpip'; did you mean 'gpipe'?"),
    (["--frameworks", "deepspeed"], "unknown framework(s) ['deepspeed']"),
    (["--repeats", "0"], "repeats=0 is not valid"),
    (["--forward-ms", "-5"], "'-5' ms: give 0 to 60000 milliseconds"),
    (["--workload", "mlp", "-P", "3"], "16 layers do not split evenly over P=3"),
    (["--workload", "mlp", "-M", "3"], "batch 4096 does not split into M=3"),
    (["--workload", "gpt"], "invalid choice: 'gpt'"),
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
