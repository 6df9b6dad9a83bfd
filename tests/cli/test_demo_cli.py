"""`conveyor demo`'s sweep options: what they configure, and bad values failing
before anything is launched (one line, exit 2)."""

import pytest

import conveyor.demo.digits as demo_module
from conveyor.cli.main import main
from conveyor.demo.sweep import SweepConfig


@pytest.fixture
def configs(monkeypatch):
    """The DemoConfig each `conveyor demo` call would run (nothing is launched)."""
    seen = []
    monkeypatch.setattr(demo_module, "run_demo", seen.append)
    return seen


def test_the_sweep_runs_by_default_with_the_demos_settings(configs):
    assert main(["demo"]) == 0
    assert configs[0].sweep == SweepConfig()
    assert configs[0].sweep.microbatches == (1, 2, 4, 8, 16, 32)


def test_sweep_options(configs):
    assert main(["demo", "--sweep-m", "1,4,16", "--sweep-device-ms", "50",
                 "--sweep-json", "t.json"]) == 0
    sweep = configs[0].sweep
    assert (sweep.microbatches, sweep.forward_s, sweep.backward_s, sweep.json_path) == \
        ((1, 4, 16), 0.05, 0.1, "t.json")


def test_no_sweep_turns_it_off(configs):
    assert main(["demo", "--no-sweep"]) == 0
    assert configs[0].sweep is None


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
