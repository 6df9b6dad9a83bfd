"""Every blocking torch.distributed call in conveyor runs under the hang
deadline (``with bounded(...)``, conveyor/runtime/procs/deadline.py), except
the set-up calls listed here with the reason each may stay outside.

A new collective written without ``bounded`` fails this test, instead of
hanging a job whose peer froze (issue 33: the step agreement's all-gather was
outside the watch, and a SIGSTOPped peer hung the job for good)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

BLOCKING = {"all_reduce", "all_gather", "all_gather_object", "all_gather_into_tensor",
            "broadcast", "broadcast_object_list", "barrier", "monitored_barrier", "gather",
            "gather_object", "scatter", "scatter_object_list", "reduce", "reduce_scatter",
            "reduce_scatter_tensor", "all_to_all", "all_to_all_single", "send", "recv",
            "batch_isend_irecv"}

# (module, function): why it stays outside the deadline. Building a pipeline
# and the profiler's own jobs run before any pipeline is watched: the process
# group's timeout (LaunchOptions.timeout_s) bounds them, and slow start-up is
# not a hang.
SETUP = {
    ("conveyor/runtime/execute/recorder.py", "estimate_clock_offset"): "pipeline set-up",
    ("conveyor/runtime/train/trainloop.py", "__init__"): "pipeline set-up (tie detection)",
    ("conveyor/runtime/train/tied.py", "_check_and_align"): "pipeline set-up",
    ("conveyor/runtime/train/dataparallel.py", "broadcast_from_replica0"): "pipeline set-up",
    ("conveyor/runtime/transport/shm.py", "__init__"): "pipeline set-up",
    ("conveyor/measure/links.py", "send"): "the link profiler, no pipeline",
    ("conveyor/measure/links.py", "recv"): "the link profiler, no pipeline",
}


def _is_bounded(item: ast.withitem) -> bool:
    e = item.context_expr
    return isinstance(e, ast.Call) and getattr(e.func, "id", getattr(e.func, "attr", "")) \
        == "bounded"


def unbounded_calls(path: Path) -> list[tuple[str, int, str]]:
    """(function, line, call) of each blocking ``dist.<name>(...)`` call in
    ``path`` that is neither inside ``with bounded(...)`` nor async."""
    found = []

    def visit(node, func: str, inside: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            func, inside = node.name, False  # a nested function runs when called
        if isinstance(node, ast.With) and any(_is_bounded(i) for i in node.items):
            inside = True
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "dist"
                and node.func.attr in BLOCKING and not inside
                and not any(k.arg == "async_op" for k in node.keywords)):
            found.append((func, node.lineno, f"dist.{node.func.attr}"))
        for child in ast.iter_child_nodes(node):
            visit(child, func, inside)

    visit(ast.parse(path.read_text()), "<module>", False)
    return found


def test_every_blocking_call_runs_under_the_deadline():
    bad = []
    for path in sorted((ROOT / "conveyor").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for func, line, call in unbounded_calls(path):
            if (rel, func) not in SETUP:
                bad.append(f"{rel}:{line} {call} in {func}()")
    assert not bad, ("blocking torch.distributed calls outside `with bounded(...)` "
                     "(conveyor.runtime.procs.deadline); wrap them, or list a set-up call "
                     "in SETUP with the reason:\n" + "\n".join(bad))


def test_the_check_sees_a_call_outside_and_accepts_one_inside(tmp_path):
    # The check itself must be able to fail.
    src = tmp_path / "m.py"
    src.write_text("def f(t, g):\n    dist.all_reduce(t, group=g)\n"
                   "def h(t, g):\n    with bounded('x', g):\n        dist.all_reduce(t)\n"
                   "    dist.all_reduce(t, async_op=True)\n")
    assert unbounded_calls(src) == [("f", 2, "dist.all_reduce")]


@pytest.mark.parametrize("entry", sorted(SETUP))
def test_each_setup_exception_still_exists(entry):
    # A stale entry would silently allow a new call of the same name.
    rel, func = entry
    assert any(f == func for f, _, _ in unbounded_calls(ROOT / rel)), entry
