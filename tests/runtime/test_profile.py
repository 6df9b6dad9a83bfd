"""The profiler: bytes exactly, times of emulated layers, the CLI, and that
``import conveyor`` stays torch-free while ``conveyor.profile`` works."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import conveyor
from conveyor.cli.main import main
from conveyor.errors import PlanError
from conveyor.plan import transfer_charges
from conveyor.measure.emulated import EmulatedLayer, EmulatedTimes
from conveyor.measure.profile import fingerprint, profile
from conveyor.schedule import build_schedule
from conveyor.sim import simulate
from conveyor.sim.cost import CostModel
from tests.runtime import _models
from tests.test_core_without_torch import BLOCKER

ROOT = Path(__file__).resolve().parents[2]


def test_bytes_are_exact():
    model = _models.mlp(2)  # Linear(5,6) Tanh Linear(6,6) Tanh Linear(6,3), float64
    prof = conveyor.profile(model, _models.batch(8)[0], repeats=1, warmup=1, progress=False)
    assert prof.L == 5 and prof.input_bytes == 5 * 8
    assert [x.out_bytes for x in prof.layers] == [48, 48, 48, 48, 24]
    # Linear saves its input (not counted: it is the cut before it); Tanh its output
    assert [x.saved_bytes for x in prof.layers] == [0, 48, 0, 48, 0]
    assert [x.saves_output for x in prof.layers] == [False, True, False, True, False]
    assert prof.layers[0].param_bytes == (5 * 6 + 6) * 8
    assert prof.layers[0].optim_bytes == 2 * prof.layers[0].param_bytes  # Adam's two moments
    assert prof.model["fingerprint"] == fingerprint(model) != fingerprint(_models.mlp(3))


def test_times_of_emulated_layers():
    """Layers that sleep a set time: the profile finds at least that time, and
    which layer is heavy (no upper bound: the machine may be loaded)."""
    torch.manual_seed(0)
    light, heavy = EmulatedTimes(0.004, 0.008), EmulatedTimes(0.016, 0.032)
    model = nn.Sequential(EmulatedLayer(4, light), EmulatedLayer(4, heavy))
    prof = profile(model, torch.randn(4, 4), repeats=3, warmup=1, progress=False)
    f = [x.forward.at(4) for x in prof.layers]
    b = [x.backward.at(4) for x in prof.layers]
    assert f[0] >= 0.9 * 0.004 and f[1] >= 0.9 * 0.016 and f[1] > 2 * f[0]
    assert b[0] >= 0.9 * 0.008 and b[1] >= 0.9 * 0.032 and b[1] > 2 * b[0]


def test_in_context_timing_runs_the_layers_as_a_stage_does():
    """The in-context pass feeds every layer's backward the gradient the
    unsplit model gives it, adds into no leftover ``.grad``, and times emulated
    layers at least their set times; ``in_context=False`` is recorded too."""
    from conveyor.measure.chain import _chained_times

    torch.manual_seed(0)
    model = _models.mlp(2)
    x = _models.batch(6)[0]
    seen = {}
    def keep(j):
        def hook(module, grad_in, grad_out):
            seen.setdefault(j, grad_out[0].detach().clone())
        return hook

    hooks = [layer.register_full_backward_hook(keep(j)) for j, layer in enumerate(model)]
    _chained_times(list(model), x, repeats=1, warmup=0, device=torch.device("cpu"))
    chained, seen = seen, {}
    model(x.clone().requires_grad_()).sum().backward()
    for h in hooks:
        h.remove()
    assert sorted(chained) == sorted(seen) == list(range(len(model)))
    for j in seen:
        torch.testing.assert_close(chained[j], seen[j], rtol=0, atol=1e-12)
    model.zero_grad(set_to_none=True)
    _chained_times(list(model), x, repeats=2, warmup=1, device=torch.device("cpu"))
    assert all(p.grad is None for p in model.parameters())

    light, heavy = EmulatedTimes(0.004, 0.008), EmulatedTimes(0.012, 0.024)
    emu = nn.Sequential(EmulatedLayer(4, light), EmulatedLayer(4, heavy))
    times = _chained_times(list(emu), torch.randn(4, 4), repeats=3, warmup=1,
                           device=torch.device("cpu"))
    (f0, f1), (b0, b1) = times.forward, times.backward
    assert times.input_grad is None and times.loss is None  # not asked for
    assert f0 >= 0.9 * 0.004 and b0 >= 0.9 * 0.008 and f1 >= 0.9 * 0.012 and b1 >= 0.9 * 0.024
    assert f1 > 2 * f0 and b1 > 2 * b0
    prof = profile(emu, torch.randn(4, 4), repeats=1, warmup=0, progress=False)
    assert prof.meta["timing"] == "in context"
    prof = profile(emu, torch.randn(4, 4), repeats=1, warmup=0, progress=False, in_context=False)
    assert prof.meta["timing"] == "alone"


def _slow_loss(out, y):
    """A loss whose forward sleeps 3 ms and backward 6 ms (an emulated layer)."""
    return (_SLOW(out) - y).pow(2).mean()


_SLOW = EmulatedLayer(3, EmulatedTimes(0.003, 0.006))


def test_the_loss_is_timed_and_feeds_the_last_backward():
    """With a loss, the last layer's backward gets the loss's gradient (as
    the unsplit model's), the loss's own times are measured, and the profile
    keeps them; the split pass feeds every layer the same gradients."""
    from conveyor.measure.chain import _chained_times

    torch.manual_seed(0)
    model = _models.mlp(2)
    x, y = _models.batch(6)[0], torch.randn(6, 3, dtype=torch.float64)

    def loss_fn(out, t):
        return ((out - t) ** 2).mean()

    seen = []
    def keep(j):
        def hook(module, grad_in, grad_out):
            seen.append((j, grad_out[0].detach().clone()))
        return hook

    hooks = [layer.register_full_backward_hook(keep(j)) for j, layer in enumerate(model)]
    got = _chained_times(list(model), x, repeats=1, warmup=0, device=torch.device("cpu"),
                         loss=(loss_fn, y), split=True)
    assert all(p.grad is None for p in model.parameters())  # none left behind
    chained, seen = seen, []
    loss_fn(model(x.clone().requires_grad_()), y).backward()
    for h in hooks:
        h.remove()
    want = dict(seen)
    full, split = chained[:len(model)], chained[len(model):]  # the B pass, then I's
    assert [j for j, _ in full] == [j for j, _ in split] == sorted(want, reverse=True)
    for j, g in full + split:
        torch.testing.assert_close(g, want[j], rtol=0, atol=1e-12)
    assert got.loss is not None and len(got.input_grad) == len(got.weight_grad) == len(model)

    emu = nn.Sequential(EmulatedLayer(3, EmulatedTimes(0.002, 0.004)))
    prof = profile(emu, torch.randn(8, 3), repeats=3, warmup=1, progress=False,
                   loss_fn=_slow_loss, targets=torch.randn(8, 3))
    assert prof.loss.forward.at(8) >= 0.9 * 0.003 and prof.loss.backward.at(8) >= 0.9 * 0.006
    assert prof.meta["loss"] == "_slow_loss"
    assert prof.layers[0].forward.at(8) < prof.loss.forward.at(8) + 0.002  # not counted twice
    assert profile(emu, torch.randn(8, 3), repeats=1, warmup=0, progress=False).loss is None


def test_i_and_w_are_timed_as_the_runtime_splits_them(monkeypatch):
    """In context, I is ``splitgrad.backward_input`` on each layer and W runs
    what it kept: emulated layers with a separate weight branch show their
    set input- and weight-gradient times, each at least as set."""
    from conveyor.measure import chain, layer
    calls = []
    real = chain.backward_input
    for mod in (chain, layer):  # in context, and alone for the bytes I keeps for W
        monkeypatch.setattr(mod, "backward_input",
                            lambda *a, **k: calls.append(1) or real(*a, **k))
    times = EmulatedTimes(0.004, 0.012, input_grad=0.003, weight_grad=0.009)
    model = nn.Sequential(*[EmulatedLayer(4, times, split_backward=True) for _ in range(2)])
    prof = profile(model, torch.randn(8, 4), repeats=2, warmup=1, progress=False)
    # sizes 8/4/2 x 2 layers: repeats + warmup timed in context, and once
    # each to count the bytes I keeps for W
    assert len(calls) == 3 * 2 * (2 + 1) + 3 * 2
    for lay in prof.layers:
        i, w = lay.input_grad.at(8), lay.weight_grad.at(8)
        # Each at least as set: sleeps only overshoot, so a lower bound holds on
        # any machine, and I and W swapped would put W near I's 3 ms, below W's
        # bound. (Comparing the two failed under load: a 3 ms sleep took 5.8
        # and 11.6 ms.)
        assert i >= 0.9 * 0.003 and w >= 0.9 * 0.009


def test_a_loss_needs_its_targets_and_context():
    mlp, x = _models.mlp(1), torch.randn(4, 5, dtype=torch.float64)
    y = torch.randn(4, 3, dtype=torch.float64)
    for kw, message in (({"loss_fn": _slow_loss}, "got loss_fn but no targets"),
                        ({"targets": y}, "got targets but no loss_fn"),
                        ({"loss_fn": "mse", "targets": y}, "loss_fn='mse' is not callable"),
                        ({"loss_fn": _slow_loss, "targets": y[:2]},
                         r"targets of shapes \[\(2, 3\)\] do not cover the sample batch of 4"),
                        ({"loss_fn": _slow_loss, "targets": y, "in_context": False},
                         "timed in context only")):
        with pytest.raises(PlanError, match=message):
            profile(mlp, x, progress=False, **kw)


def test_bad_sample_batch_and_optimizer():
    with pytest.raises(PlanError, match="at least 2 samples"):
        profile(_models.mlp(1), torch.randn(1, 5, dtype=torch.float64), progress=False)
    with pytest.raises(PlanError, match="unknown optimizer 'lion'"):
        profile(_models.mlp(1), torch.randn(4, 5), optimizer="lion", progress=False)


def _children() -> list[int]:
    """Live processes whose parent is this one."""
    me, out = str(os.getpid()), []
    for d in Path("/proc").iterdir():
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[1] == me and fields[0] not in ("Z", "X"):
            out.append(int(d.name))
    return out


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux and 2 cores")
def test_alongside_times_the_layers_beside_a_busy_core(monkeypatch):
    """While the layers are timed, one forked process computes on a core of
    its own and this one is pinned to another; after, the process is gone
    and the affinity is as it was."""
    import conveyor.measure.profile as prof_mod

    cores = os.sched_getaffinity(0)
    seen = {}
    measure = prof_mod._measure_sizes

    def watched(*args, **kwargs):
        seen["children"] = [(pid, Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1]
                             .split()[0]) for pid in _children()]
        seen["mine"] = os.sched_getaffinity(0)
        seen["theirs"] = {pid: os.sched_getaffinity(pid) for pid, _ in seen["children"]}
        return measure(*args, **kwargs)

    monkeypatch.setattr(prof_mod, "_measure_sizes", watched)
    before = set(_children())
    prof = profile(_models.mlp(2), _models.batch(8)[0], repeats=1, warmup=1, progress=False,
                   alongside=1)
    new = [(pid, state) for pid, state in seen["children"] if pid not in before]
    assert len(new) == 1 and new[0][1] == "R", seen  # running, not waiting
    first, second = sorted(cores)[:2]
    # The new child's affinity (others may be the suite's own helpers).
    assert seen["mine"] == {first} and seen["theirs"][new[0][0]] == {second}
    assert prof.meta["alongside"] == 1
    assert not set(_children()) - before  # killed and reaped
    assert os.sched_getaffinity(0) == cores


def test_alongside_beyond_the_spare_cores_is_refused():
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    with pytest.raises(PlanError, match=f"alongside={n} needs {n + 1} cores, one each"):
        profile(_models.mlp(1), _models.batch(4)[0], alongside=n, progress=False)
    with pytest.raises(PlanError, match=r"alongside=-1; use an integer >= 0"):
        profile(_models.mlp(1), _models.batch(4)[0], alongside=-1, progress=False)


def test_import_conveyor_stays_torch_free():
    program = BLOCKER + (
        "import conveyor, conveyor.plan, conveyor.partition, conveyor.cli.plan, "
        "conveyor.cli.profile\n"
        "import sys; assert not [m for m in sys.modules if m.startswith('torch')]\n"
        "try:\n    conveyor.profile\nexcept ModuleNotFoundError as e:\n    print('lazy', e)\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "lazy" in proc.stdout and "torch" in proc.stdout  # only on use does it need torch


MODEL_FILE = """
import torch
from tests.runtime import _models

def make():
    return _models.mlp(3), _models.batch(8)[0]

def with_loss():
    x, y = _models.batch(8)
    return _models.mlp(3), x, _models.loss_fn, y

def three():
    return _models.mlp(3), _models.batch(8)[0], None
"""


def test_cli_profile_then_plan(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    (tmp_path / "m.py").write_text(MODEL_FILE)
    prof_path, plan_path = tmp_path / "prof.json", tmp_path / "plan.json"
    assert main(["profile", "--model", f"{tmp_path / 'm.py'}:make", "--repeats", "1",
                 "--alone", "-o", str(prof_path)]) == 0
    assert json.loads(prof_path.read_text())["meta"]["timing"] == "alone"
    capsys.readouterr()
    assert main(["profile", "--model", f"{tmp_path / 'm.py'}:make", "--repeats", "1",
                 "--links", "--transport", "shm", "-o", str(prof_path)]) == 0
    out, err = capsys.readouterr()
    # one bar over the whole command (a line per update off a terminal), naming
    # each phase as it starts, ending at 100 %
    bar = [line for line in err.splitlines() if line.startswith("profile [")]
    phases = [re.search(r"eta +(?:\?|\d+s)  ([^:]*)", line).group(1) for line in bar]
    seen = list(dict.fromkeys(phases))
    assert seen == ["starting", "warm-up", "layers alone, n=8", "every layer in order, n=8",
                    "layers alone, n=4", "every layer in order, n=4", "layers alone, n=2",
                    "every layer in order, n=2", "finishing", "links"], seen
    assert [line.split("links: ")[1] for line in bar if "  links: " in line] == [
        "starting 2 ranks", "ping-pong", "tiny pipelines (gpipe, 1f1b)",
        "send and receive times", "done"]
    shares = [int(re.search(r"\] +(\d+)%", line).group(1)) for line in bar]
    assert shares == sorted(shares) and shares[-1] == 100
    assert all(re.search(r"eta +\d+s", line) for line in bar[len(bar) // 2:])
    assert "profiled 7 layers at batch 8/4/2" in out and "links: latency" in out
    assert "per transfer across ranks: send " in out
    data = json.loads(prof_path.read_text())
    assert data["meta"]["timing"] == "in context"
    assert data["format"] == "conveyor.profile/1" and data["links"]["ping_pong_latency"] > 0
    assert data["links"]["transport"] == "shm"
    assert data["links"]["method"].startswith("bandwidth: shared-memory ping-pong")
    # fitted to tiny pipelines' steps: what a transfer and an action cost there;
    # the simulator with them gives back the measured steps (or, where no
    # latency fits both, 1F1B's by the latency alone)
    links = data["links"]
    assert links["latency"] >= 0 and data["overhead"] >= 0
    assert data["overhead"] == links["overhead"]
    # the runtime's own time per send and receive, measured at two sizes
    for key in ("send", "recv"):
        assert links[key]["fixed"] >= 0 and links[key]["per_byte"] >= 0
    assert links["send"]["fixed"] + links["send"]["per_byte"] * 16 > 0
    errs = []
    for name in ("gpipe", "1f1b"):
        f, b = transfer_charges((0, 1), [16.0], links)
        o = data["overhead"]
        cm = CostModel(forward=(o + f[0], o + f[1]), backward=(o + b[0], o + b[1]),
                       latency=links["latency"], bandwidth=links["bandwidth"] or float("inf"),
                       activation_bytes=16)
        t = simulate(build_schedule(name, 2, 8), cm, check=False, unit="s").step_time
        errs.append(t / links["tiny_steps"][name] - 1)
    if data["overhead"] > 0:
        assert errs == pytest.approx([0, 0], abs=1e-4)
    else:
        assert errs[1] == pytest.approx(0, abs=1e-4) and errs[0] <= 1e-4
    assert main(["profile", "--model", f"{tmp_path / 'm.py'}:with_loss", "--repeats", "1",
                 "-o", str(tmp_path / "loss.json")]) == 0
    assert "loss (on the last stage): forward" in capsys.readouterr().out
    assert json.loads((tmp_path / "loss.json").read_text())["loss"]["forward"]["fixed"] >= 0
    assert main(["profile", "--model", f"{tmp_path / 'm.py'}:three", "-o",
                 str(tmp_path / "x.json")]) == 2
    assert "or (model, sample_batch, loss_fn, targets)" in capsys.readouterr().err
    assert main(["plan", "--profile", str(prof_path), "-P", "2", "--batch-size", "16",
                 "--schedules", "gpipe,1f1b", "--memory", "1MiB", "-o", str(plan_path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:4] == ["#", "schedule", "M", "v"]
    assert "best: " in out and "budget 1.00 MiB" in out
    assert json.loads(plan_path.read_text())["format"] == "conveyor.plan/1"


@pytest.mark.parametrize("argv, message", [
    (["plan", "--profile", "x.json", "-P", "2", "--batch-size", "8", "--memory", "lots"],
     "'lots' is not a memory size; write e.g. 16GiB"),
    (["plan", "--profile", "missing.json", "-P", "2", "--batch-size", "8"],
     "cannot read profile 'missing.json'"),
    (["profile", "--model", "nofile.py:make"], "no file 'nofile.py'"),
    (["profile", "--model", "m.py:make", "--transport", "shm"],
     "--transport shm says what --links measures; add --links"),
])
def test_cli_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
