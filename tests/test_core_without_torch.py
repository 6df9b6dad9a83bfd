"""The core (schedules, simulator, views' text output, the CLI's parser) must
import and run with torch, numpy and matplotlib absent. A subprocess blocks
those imports outright, so the test cannot pass by accident on a machine that
has them installed. With them installed, importing the core must not load
them either; and a command whose extra is missing names the pip install."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BLOCKER = r"""
import importlib.abc, sys
BLOCKED = {"torch", "numpy", "matplotlib", "sklearn", "tqdm"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by test)", name=name)
sys.meta_path.insert(0, Block())
"""

PROGRAM = BLOCKER + r"""
import io, json, contextlib
import conveyor
from conveyor.schedule import build_schedule, add_comms, validate
from conveyor.sim import simulate
from conveyor.views.terminal import render_gantt
from conveyor.cli.main import main, build_parser

t = simulate(validate(add_comms(build_schedule("1f1b", 4, 8))))
assert render_gantt(t)
build_parser()  # every sub-command's module imports without torch
out = io.StringIO()
with contextlib.redirect_stdout(out):
    rc = main(["simulate", "-P", "4", "-M", "32", "-s", "gpipe", "--json"])
data = json.loads(out.getvalue())
import conveyor.views
errors = {}
for argv in (["plot", "bubble", "-o", "never-written.png"], ["demo"], ["bench"]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        errors[argv[0]] = [main(argv), err.getvalue()]
try:
    conveyor.Pipeline
    lazy = "no error"
except ImportError as e:  # the lazy runtime names say what to install
    lazy = str(e)
blocked_loaded = sorted(m for m in sys.modules if m.split(".")[0] in
                        {"torch", "numpy", "matplotlib", "sklearn"})
print(json.dumps({"rc": rc, "bubble": data["metrics"]["bubble"], "loaded": blocked_loaded,
                  "errors": errors, "lazy": lazy}))
"""

# Nothing blocked: importing the core must still load none of the heavy packages.
IMPORTS = r"""
import json, sys
import conveyor, conveyor.schedule, conveyor.sim, conveyor.views
from conveyor import *
from conveyor.cli.main import build_parser
build_parser()
# The runtime's names are listed (dir, help) without being imported.
assert {"Pipeline", "PipelineConfig", "launch", "is_driver"} <= set(dir(conveyor))
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & {"torch", "matplotlib", "sklearn",
                                                                  "numpy", "tqdm"})))
"""


def test_core_runs_without_torch():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0
    assert abs(result["bubble"] - 3 / 35) < 1e-12
    assert result["loaded"] == []
    assert result["errors"] == {
        "plot": [2, "conveyor: error: conveyor plot needs matplotlib: "
                    "pip install 'conveyor[viz]'\n"],
        "demo": [2, "conveyor: error: conveyor demo needs torch: pip install conveyor\n"],
        "bench": [2, "conveyor: error: conveyor bench needs torch: pip install conveyor\n"]}
    assert not (ROOT / "never-written.png").exists()
    assert result["lazy"] == "conveyor.Pipeline needs torch: pip install conveyor"


def test_importing_the_core_loads_no_heavy_package():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", IMPORTS], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_the_runtime_names_are_exported_lazily():
    # conveyor.Pipeline is conveyor.runtime's own object, imported on first use.
    program = ("import sys, conveyor\n"
               "assert 'torch' not in sys.modules\n"
               "from conveyor.runtime import Pipeline, launch, PipelineConfig\n"
               "assert conveyor.Pipeline is Pipeline and conveyor.launch is launch\n"
               "assert conveyor.PipelineConfig is PipelineConfig\n"
               "try:\n    conveyor.Pipelin\nexcept AttributeError as e:\n    print(e)\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "module 'conveyor' has no attribute 'Pipelin'\n"


def test_demo_names_its_extra_when_only_scikit_learn_is_missing():
    program = BLOCKER.replace('{"torch", "numpy", "matplotlib", "sklearn", "tqdm"}',
                              '{"sklearn"}') + (
        "from conveyor.cli.main import main\n"
        "raise SystemExit(main(['demo', '--epochs', '1']))\n")
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT, timeout=60)
    assert (proc.returncode, proc.stderr) == (
        2, "conveyor: error: conveyor demo needs scikit-learn: pip install 'conveyor[demo]'\n")
    assert proc.stdout == ""  # refused before any process started


def test_blocker_really_blocks():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", BLOCKER + "import torch"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode != 0 and "blocked by test" in proc.stderr
