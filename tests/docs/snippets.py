"""Find, run and check the fenced code blocks of README.md and docs/*.md.

The convention (docs/contributing.md): a comment right above each fence says
what the block is.

    <!-- snippet: run -->                   run it and compare its output
    <!-- snippet: run; vary -->             ... numbers in the output may differ
    <!-- snippet: output -->                the output of the python block above
    <!-- snippet: illustrative: REASON -->  not run, for the reason given

A ``run`` block is either a console session (lines ``$ command``, each
followed by the output it prints, where a line ``...`` stands for any lines)
or a python block: one whose first line is ``# NAME.py`` is saved as NAME.py
for a later ``$ python NAME.py``; any other is run as a script. Each page's
blocks run in order in one scratch folder, so a later block sees the files an
earlier one wrote. ``conveyor``, ``python`` and ``torchrun`` in commands are
this checkout's (the test's interpreter, the checkout first on PYTHONPATH).
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
MARKER = re.compile(r"^\s*<!--\s*snippet:\s*(.*?)\s*-->\s*$")
NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)*")
KINDS = ("run", "output", "illustrative")
IN_PROCESS = {"simulate", "schedules", "plan", "trace"}  # torch-free sub-commands


@dataclass
class Block:
    page: Path
    line: int                   # of the opening fence, 1-based
    lang: str
    body: list[str]
    kind: str | None = None     # run, output, illustrative; None: unmarked
    reason: str = ""
    vary: bool = False
    timeout: float = 120.0
    problems: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def console(self) -> bool:
        return any(line.startswith("$ ") for line in self.body)


def _marker(block: Block, text: str) -> None:
    head, _, reason = text.partition(":")
    if head.strip() == "illustrative":  # the rest is the reason, semicolons and all
        parts = ["illustrative"]
        block.reason = reason.strip()
    else:
        parts = [p.strip() for p in text.split(";")]
    block.kind = parts[0].strip()
    if block.kind not in KINDS:
        block.problems.append(f"unknown snippet kind {block.kind!r}; use one of {KINDS}")
    if block.kind == "illustrative" and len(block.reason.split()) < 2:
        block.problems.append("an illustrative block needs a reason: "
                              "<!-- snippet: illustrative: why it is not run -->")
    for opt in parts[1:]:
        if opt == "vary":
            block.vary = True
        elif opt.startswith("timeout="):
            block.timeout = float(opt.split("=", 1)[1])
        else:
            block.problems.append(f"unknown snippet option {opt!r}; use vary or timeout=S")


def blocks(page: Path) -> list[Block]:
    """Every fenced block of ``page``, with the marker right above its fence."""
    lines = page.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.groups()
        block = Block(page, i + 1, lang, [])
        if i > 0 and (mk := MARKER.match(lines[i - 1])):
            _marker(block, mk.group(1))
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body = lines[i]
            block.body.append(body[len(indent):] if body.startswith(indent) else body.strip())
            i += 1
        i += 1
        out.append(block)
    return out


# -- comparing output --------------------------------------------------------------

def _pattern(line: str, vary: bool) -> re.Pattern:
    words = line.split()
    parts = []
    for w in words:
        if vary:
            pieces = NUMBER.split(w)
            parts.append(r"[-+]?\d+(?:[.,]\d+)*".join(re.escape(p) for p in pieces))
        else:
            parts.append(re.escape(w))
    return re.compile(r"\s*" + r"\s+".join(parts) + r"\s*$")


def mismatch(expected: list[str], actual: list[str], vary: bool) -> str | None:
    """None when ``actual`` matches ``expected``: line by line, blanks and
    runs of spaces ignored, a line ``...`` standing for any lines, and with
    ``vary`` any number for any number. Else what differs."""
    actual = [a for a in actual if a.strip()]
    chunks: list[list[str]] = [[]]
    for line in expected:
        if line.strip() == "...":
            chunks.append([])
        elif line.strip():
            chunks[-1].append(line)
    free_start, free_end = not chunks[0], not chunks[-1]
    chunks = [c for c in chunks if c]
    at = 0
    for k, chunk in enumerate(chunks):
        pats = [_pattern(line, vary) for line in chunk]
        first = k == 0 and not free_start
        last = k == len(chunks) - 1 and not free_end
        starts = [at] if first else range(at, len(actual) - len(pats) + 1)
        found = None
        for s in starts:
            window = actual[s:s + len(pats)]
            if len(window) == len(pats) and all(p.match(a) for p, a in zip(pats, window)):
                if last and s + len(pats) != len(actual):
                    continue
                found = s
                break
        if found is None:
            near = actual[at:at + len(chunk) + 3]
            return ("expected these lines" + (" (numbers may vary)" if vary else "") + ":\n  "
                    + "\n  ".join(chunk) + "\ngot, from there on:\n  " + "\n  ".join(near)
                    + ("\n  ..." if len(actual) > at + len(near) else ""))
        at = found + len(pats)
    return None


# -- running ------------------------------------------------------------------------

def shims(folder: Path) -> Path:
    """A bin folder whose ``conveyor``, ``python`` and ``torchrun`` are this
    checkout's, on this test's interpreter."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, run in (("python", ""), ("python3", ""), ("conveyor", "-m conveyor"),
                      ("torchrun", "-m torch.distributed.run")):
        path = folder / name
        path.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {run} \"$@\"\n")
        path.chmod(0o755)
    return folder


def environment(bin_dir: Path) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]]
                                                      if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"  # ranks' and the launcher's lines in the order printed
    env.pop("CI", None)
    return env


@dataclass
class Ran:
    rc: int
    out: str
    err: str


def run_command(command: str, cwd: Path, env: dict, timeout: float) -> Ran:
    """One console line. A torch-free ``conveyor`` command runs in this
    process (its entry point, ``conveyor.cli.main.main``: the same code,
    without a process start per line); anything else, ``conveyor profile``
    included (it sets torch's threads and the heap for its process), through
    the shell."""
    argv = shlex.split(command, comments=True)
    if argv[:1] == ["conveyor"] and argv[1:2] and argv[1] in IN_PROCESS \
            and not set(command) & set("|&;<>`$"):
        from conveyor.cli.main import main

        out, err = io.StringIO(), io.StringIO()
        old = Path.cwd()
        os.chdir(cwd)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    rc = main(argv[1:])
                except SystemExit as e:  # --help, --version
                    rc = int(e.code or 0)
        finally:
            os.chdir(old)
        return Ran(rc, out.getvalue(), err.getvalue())
    done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    return Ran(done.returncode, done.stdout, done.stderr)


def sessions(block: Block) -> list[tuple[str, list[str]]]:
    """(command, the output lines shown after it) of a console block."""
    out: list[tuple[str, list[str]]] = []
    for line in block.body:
        if line.startswith("$ "):
            out.append((line[2:].strip(), []))
        elif out:
            out[-1][1].append(line)
    return out


def check_command_line(line: str) -> str | None:
    """For a ``conveyor ...`` line of an illustrative block: None when it
    parses with today's flags (no deprecated one) and its ``--model`` names
    an importable function of the installed package; else what is wrong."""
    from conveyor.cli.main import build_parser

    argv = shlex.split(line, comments=True)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args = build_parser().parse_args(argv[1:])
    except SystemExit:
        return None  # --help
    except Exception as e:  # noqa: BLE001 - the parser's one-line error
        return f"{line!r} does not parse: {e}"
    if err.getvalue():
        return f"{line!r}: {err.getvalue().strip()}"
    model = getattr(args, "model", None)
    if isinstance(model, str) and model.startswith("conveyor.") and ":" in model:
        from conveyor.cli.profile import load_factory

        try:
            load_factory(model)
        except Exception as e:  # noqa: BLE001
            return f"{line!r}: --model does not load: {e}"
    return None


def check_illustrative(block: Block) -> list[str]:
    """What an illustrative block can still be checked for without running
    it: a python block parses; every conveyor command line parses."""
    problems = []
    if block.lang == "python":
        try:
            tree = ast.parse("\n".join(block.body))
        except SyntaxError as e:
            problems.append(f"python that does not parse (line {e.lineno}): {e.msg}; fence "
                            f"it as text if it is not python")
        else:
            problems += _missing_imports(tree)
    for line in block.body:
        if block.console and not line.startswith("$ "):
            continue  # output, not a command
        text = line[2:] if line.startswith("$ ") else line
        if text.startswith("conveyor "):
            if (msg := check_command_line(text)) is not None:
                problems.append(msg)
    return problems


def _defined_names(module: str) -> set[str] | None:
    """The names ``module`` defines or imports anywhere in its source (so its
    lazy exports too), read without importing it (no torch, no transformers);
    None when there is no such module."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(module)
    except ImportError:
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    names: set[str] = set()
    for node in ast.walk(ast.parse(Path(spec.origin).read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    if spec.submodule_search_locations:  # a package: its submodules too
        for loc in spec.submodule_search_locations:
            names.update(p.stem for p in Path(loc).iterdir() if p.suffix == ".py" or p.is_dir())
    return names


def _missing_imports(tree: ast.AST) -> list[str]:
    """The ``from conveyor... import name`` of a block that would fail now."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("conveyor"):
            names = _defined_names(node.module)
            if names is None:
                out.append(f"from {node.module} import ...: no module {node.module}")
                continue
            out += [f"from {node.module} import {a.name}: no such name" for a in node.names
                    if a.name not in names]
    return out
