"""`conveyor demo`'s sweep options fail before anything is launched: one line, exit 2."""

import pytest

from conveyor.cli.main import main


@pytest.mark.parametrize("args, words", [
    (["--sweep-m", "1,3"], ["[1, 3]", "divide the batch of 64"]),
    (["--sweep-m", "1,0"], ["'1,0'", "integers >= 1"]),
    (["--sweep-device-ms", "0"], ["0 ms", "above 0"]),
    (["--sweep-device-ms", "abc"], ["'abc'", "milliseconds"]),
    (["--no-sweep", "--sweep-json", "x.json"], ["--no-sweep", "--sweep-json"]),
])
def test_bad_sweep_options_are_one_line_errors(capsys, args, words):
    assert main(["demo", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("conveyor: error: ") and err.count("\n") == 1, err
    for w in words:
        assert w in err, err
