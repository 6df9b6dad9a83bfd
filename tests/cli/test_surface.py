"""The command line's surface, frozen: every flag of every sub-command against
one table, one spelling per concept, and the deprecated spellings still
working for one release with a warning that names the new one.

A flag added, removed or renamed fails here until SURFACE says so: update the
table in the same change (and README/docs where they show the flag).
"""

from __future__ import annotations

import argparse
import warnings

import pytest

from conveyor.cli.main import build_parser, main
from conveyor.cli.names import _Deprecated

DEP = " (deprecated)"

SURFACE = {
    "": ["-h/--help", "--version"],
    "demo": ["-h/--help", "-P/--ranks", "--stages" + DEP, "-M/--microbatches", "-s/--schedule",
             "--epochs", "--batch-size", "--blocks", "--width", "--lr", "--seed", "--backend",
             "--out", "--no-progress", "--model", "--steps", "--no-sweep", "--sweep-json",
             "--sweep-m", "--sweep-device-ms"],
    "simulate": ["-h/--help", "-P/--ranks", "--stages" + DEP, "-M/--microbatches",
                 "-s/--schedule", "-v/--chunks", "--cap", "--budget", "--placement", "--file",
                 "--forward-only", "--forward", "--backward", "--input-grad", "--weight-grad",
                 "--latency", "--bandwidth", "--activation-bytes", "--dp", "--nodes",
                 "--param-bytes", "--inter-latency", "--inter-bandwidth", "--no-overlap",
                 "--decode", "--new-tokens", "--prefill-chunks",
                 "--json", "-o/--output", "--color", "--chart", "--width"],
    "schedules": ["-h/--help", "--json"],
    "viz": ["-h/--help", "-o/--output", "--plan", "--timeline", "--open", "-s/--schedule",
            "-P/--ranks", "-M/--microbatches", "--view", "--ratio", "--ratios", "--max-P",
            "--max-M", "--serve", "--port", "--no-cache", "--jobs"],
    "plot": ["-h/--help"],
    "plot gantt": ["-h/--help", "--timeline", "-s/--schedule", "-P/--ranks",
                   "-M/--microbatches", "--ratio", "--forward-only", "--compare", "-o/--output"],
    "plot bubble": ["-h/--help", "-s/--schedule", "-P/--ranks", "--max-M", "--ratio",
                    "--timeline", "-o/--output"],
    "trace": ["-h/--help", "--timeline", "-s/--schedule", "-P/--ranks", "-M/--microbatches",
              "--ratio", "--forward-only", "-o/--output"],
    "bench": ["-h/--help", "--workload", "-P/--ranks", "--stages" + DEP, "-M/--microbatches",
              "-s/--schedules", "--forward-ms", "--backward-ms", "--repeats", "--warmup",
              "--device", "--json"],
    "profile": ["-h/--help", "--model", "--repeats", "--warmup", "--optimizer", "--links",
                "--transport", "--alongside", "--threads", "--alone", "-o/--output"],
    "torchrun": [""],  # every argument is torchrun's own, passed through unparsed
    "plan": ["-h/--help", "--profile", "-P/--ranks", "--batch-size", "--batch" + DEP,
             "--memory", "-s/--schedules", "-M/--microbatches", "-v/--chunks", "--top",
             "--no-refine", "-o/--output", "--dp", "--nodes", "--inter-latency",
             "--inter-bandwidth", "--no-overlap"],
}

# The one spelling of each concept (conveyor/cli/names.py): a short flag, where
# one exists, always comes with the same long one.
CANONICAL = {"-P": "--ranks", "-M": "--microbatches", "-v": "--chunks", "-o": "--output"}
SCHEDULE = {"-s/--schedule", "-s/--schedules"}
RETIRED = {"--stages", "--batch"}  # only as deprecated aliases


def surface(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    flags = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.update(surface(sub, f"{prefix} {name}".strip()))
            continue
        flag = "/".join(action.option_strings)
        flags.append(flag + (DEP if isinstance(action, _Deprecated) else ""))
    out[prefix] = flags
    return out


def test_every_flag_of_every_command_is_in_the_table():
    got = surface(build_parser())
    assert sorted(got) == sorted(SURFACE), "sub-commands differ from SURFACE"
    for command, flags in SURFACE.items():
        assert got[command] == flags, f"conveyor {command}: update SURFACE if this is meant"


def test_one_spelling_per_concept():
    for command, flags in surface(build_parser()).items():
        for flag in flags:
            names = flag.removesuffix(DEP).split("/")
            if flag.endswith(DEP):
                assert names[0] in RETIRED, (command, flag)
                continue
            assert not set(names) & RETIRED, (command, flag)
            short = names[0] if len(names[0]) == 2 else None
            if short in CANONICAL:
                assert names == [short, CANONICAL[short]], (command, flag)
            if short == "-s" or "--schedule" in names or "--schedules" in names:
                assert flag in SCHEDULE, (command, flag)
            assert "--batch" not in names or flag.endswith(DEP), (command, flag)


def test_deprecated_flags_work_and_name_their_replacement(capsys):
    assert main(["simulate", "--stages", "2", "-M", "3", "--json"]) == 0
    old = capsys.readouterr()
    assert old.err == ("conveyor: warning: --stages is deprecated and will be removed in 0.3; "
                       "use -P/--ranks\n")
    assert main(["simulate", "-P", "2", "-M", "3", "--json"]) == 0
    new = capsys.readouterr()
    assert new.err == "" and new.out == old.out  # the same simulation


def test_deprecated_batch_of_plan_is_the_batch_size(tmp_path, capsys):
    from tests.plan._profiles import synthetic

    prof = tmp_path / "prof.json"
    synthetic([1, 2, 1, 1]).save(prof)
    runs = {}
    for flag in ("--batch", "--batch-size"):
        assert main(["plan", "--profile", str(prof), "-P", "2", flag, "8", "-s", "1f1b",
                     "-M", "4", "-o", str(tmp_path / f"{flag}.json")]) == 0
        runs[flag] = capsys.readouterr()
    assert runs["--batch"].err.startswith("conveyor: warning: --batch is deprecated")
    assert runs["--batch-size"].err == ""
    assert ((tmp_path / "--batch.json").read_text()
            == (tmp_path / "--batch-size.json").read_text())


def test_deprecated_keywords_of_the_api_warn_and_give_the_same_result():
    from conveyor.plan import plan_to_dict, search
    from tests.plan._profiles import synthetic

    prof = synthetic([1, 2, 1, 1])
    new = search(prof, P=2, batch_size=8, schedules=["1f1b"], microbatches=[4]).best
    with pytest.warns(DeprecationWarning, match=r"search\(batch=...\) is deprecated .* "
                                                r"use batch_size="):
        old = search(prof, P=2, batch=8, schedules=["1f1b"], microbatches=[4]).best
    assert (old.name, old.M, old.balance, old.step) == (new.name, new.M, new.balance, new.step)
    with pytest.warns(DeprecationWarning, match="plan_to_dict"):
        d_old = plan_to_dict(new, prof, batch=8, budget=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name warns about nothing
        assert plan_to_dict(new, prof, batch_size=8, budget=None) == d_old
    with pytest.raises(TypeError, match="pass only batch_size="):
        search(prof, P=2, batch=8, batch_size=8)
