"""Docs that cannot rot: every fenced block of README.md and docs/*.md is run
here, its output compared with what the page shows, or marked illustrative
with its reason (the convention: docs/contributing.md, tests/docs/snippets.py).

One test per page runs its blocks in order in one scratch folder; the
processes they start are small (P = 2, tiny models, a few steps).
"""

from __future__ import annotations

import re
import textwrap

import pytest

import conveyor
from tests.docs.snippets import (
    PAGES, ROOT, blocks, check_illustrative, environment, mismatch, run_command, sessions,
    shims,
)

ALL = {page: blocks(page) for page in PAGES}
RUN_PAGES = [p for p, bs in ALL.items() if any(b.kind == "run" for b in bs)]
HOW = "mark it: see docs/contributing.md (<!-- snippet: run --> or illustrative: REASON)"


def test_every_block_is_run_or_marked_illustrative():
    problems = []
    for page, bs in ALL.items():
        for k, b in enumerate(bs):
            if b.kind is None:
                problems.append(f"{b.where}: a block neither run nor marked; {HOW}")
            problems += [f"{b.where}: {p}" for p in b.problems]
            if b.kind == "run" and not (b.console or b.lang == "python"):
                problems.append(f"{b.where}: a run block is a console session ($ lines) or "
                                f"python; this is {b.lang or 'plain'} without $ lines")
            if b.kind == "output":
                prev = bs[k - 1] if k else None
                if prev is None or prev.kind != "run" or prev.lang != "python" or _named(prev):
                    problems.append(f"{b.where}: an output block follows the python block "
                                    f"it is the output of")
    assert not problems, "\n".join(problems)


def test_the_marker_convention_finds_what_it_should(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("<!-- snippet: run; vary -->\n```\n$ conveyor schedules\n```\n\n"
                    "```python\nx = 1\n```\n"
                    "<!-- snippet: illustrative: needs a cluster -->\n  ```yaml\n  a: 1\n  ```\n"
                    "<!-- snippet: illustrative -->\n```\n```\n")
    got = blocks(page)
    assert [(b.line, b.kind, b.vary, b.lang) for b in got] == [
        (2, "run", True, ""), (6, None, False, "python"), (10, "illustrative", False, "yaml"),
        (14, "illustrative", False, "")]
    assert got[2].body == ["a: 1"] and got[2].reason == "needs a cluster"
    assert got[3].problems and not got[2].problems  # a reason is required


def test_output_comparison():
    out = ["step 0 loss 2.31", "step 10 loss 1.20", "done in 3.1 s"]
    assert mismatch(["step 0 loss 2.31", "...", "done in 3.1 s"], out, vary=False) is None
    assert mismatch(["step 0 loss 9.99", "..."], out, vary=True) is None
    assert mismatch(["step 0 loss 9.99", "..."], out, vary=False) is not None
    assert mismatch(["step 0 loss 2.31"], out, vary=False) is not None  # lines left over
    assert mismatch(["...", "step 10  loss 1.20", "..."], out, vary=False) is None
    assert mismatch(["step 0 loss", "..."], out, vary=True) is not None  # words must match


def test_illustrative_blocks_still_parse():
    problems = []
    for bs in ALL.values():
        for b in bs:
            if b.kind == "illustrative":
                problems += [f"{b.where}: {p}" for p in check_illustrative(b)]
    assert not problems, "\n".join(problems)


def _named(block) -> str | None:
    m = re.match(r"#\s*([\w.-]+\.py)\s*(?::|$)", block.body[0]) if block.body else None
    return m.group(1) if m else None


@pytest.mark.runtime
@pytest.mark.parametrize("page", RUN_PAGES, ids=[str(p.relative_to(ROOT)) for p in RUN_PAGES])
def test_page_runs_as_shown(page, tmp_path):
    env = environment(shims(tmp_path / "bin"))
    work = tmp_path / "work"
    work.mkdir()
    bs = ALL[page]
    for k, b in enumerate(bs):
        if b.kind != "run":
            continue
        if b.lang == "python":
            name = _named(b) or f"snippet_{b.line}.py"
            (work / name).write_text("\n".join(b.body) + "\n")
            if _named(b):
                continue  # a script a later console line runs
            ran = run_command(f"python {name}", work, env, b.timeout)
            assert ran.rc == 0, f"{b.where}: exit {ran.rc}\n{ran.err[-3000:]}"
            nxt = bs[k + 1] if k + 1 < len(bs) else None
            if nxt is not None and nxt.kind == "output":
                diff = mismatch(nxt.body, ran.out.splitlines(), nxt.vary)
                assert diff is None, f"{nxt.where}: the output differs\n{diff}"
            continue
        for command, expected in sessions(b):
            ran = run_command(command, work, env, b.timeout)
            shown_error = any("error" in line.lower() for line in expected)
            assert ran.rc == 0 or shown_error, \
                f"{b.where}: `{command}` exited {ran.rc}\n{ran.out[-2000:]}\n{ran.err[-3000:]}"
            got = ran.out if ran.rc == 0 else ran.out + ran.err
            diff = mismatch(expected, got.splitlines(), b.vary)
            assert diff is None, f"{b.where}: `{command}` printed otherwise\n{diff}"


@pytest.mark.runtime
def test_the_package_docstring_quick_start_runs(tmp_path):
    # help(conveyor) opens with a script: it must run as printed
    code = textwrap.dedent(conveyor.__doc__.split("::", 1)[1].split("\n\nMain names")[0])
    (tmp_path / "train.py").write_text(code)
    env = environment(shims(tmp_path / "bin"))
    ran = run_command("python train.py", tmp_path, env, 120)
    assert ran.rc == 0, ran.err[-3000:]
    losses = [float(x) for x in re.findall(r"[-+]?\d+\.\d+(?:e[-+]\d+)?", ran.out)]
    assert len(losses) == 5 and losses[-1] < losses[0], ran.out  # printed once: 5 losses
    assert len(conveyor.__doc__.splitlines()) <= 30
