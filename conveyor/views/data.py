"""The explorer's default data: every registered schedule for P = 1..P_max and
M = 1..M_max, as the Python engine produced and simulated it.

Per (schedule, P, M) the page gets the compute-action order of every rank
(``encode.py``), the placement where it is not one stage per rank, and the
metrics Python computed: the closed-form bubble, and for the forward-only view
and each embedded backward/forward cost ratio (default B = 2F) the step time
and the simulated bubble. The page replays the order under any costs the user
types to place the cells (see ``assets/replay.js``) and compares with the
Python metrics where they exist; a browser test checks the replay against
simulate() under random costs.

Schedules whose order depends on the costs (zb-auto) are not built here: the
page re-solves them for the typed costs with a port of their solver
(``assets/solver.js``; ``PAGE_SOLVED``), which a browser test holds equal to
the Python solver.

The build takes seconds, so the result is cached on disk, keyed by the source
of everything it depends on.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from fractions import Fraction
from pathlib import Path
from typing import Callable, Sequence

import conveyor
from conveyor.errors import ConveyorError, ScheduleError, ValidationError
from conveyor.schedule import Schedule, build_schedule, get_spec, schedule_names
from conveyor.schedule.deps import replay
from conveyor.sim import CostModel, formula_bubble
from conveyor.userfiles import read_json
from conveyor.views import decodedata
from conveyor.views.encode import ALPHABET, encode_rows
from conveyor.views.errors import ViewError
from conveyor.views.metrics import MAX_DEN

__all__ = ["FORMAT", "DEFAULT_RATIOS", "PAGE_SOLVED", "build_data", "checked_M", "config_record",
           "cache_dir", "spec_info"]

FORMAT = "conveyor.viz/2"
# Python's metrics are embedded at B = 2F only (what `conveyor plot bubble`
# draws): the page replays any other costs itself (a browser test checks it
# against simulate()), and each extra ratio would cost build time and bytes.
DEFAULT_RATIOS = (2.0,)
# Schedules whose order is solved for the costs at hand: the page runs its port
# of the solver (assets/solver.js) for the typed costs instead of embedding
# Python's orders for the default costs (name -> the page's solver).
PAGE_SOLVED = {"zb-auto": "zb-auto"}


def checked_M(M: int) -> bool:
    """Whether Python's metrics are embedded for M: powers of two only. The page
    compares its replay with them on every redraw there (and a browser test
    replays every one); replaying every M in Python took most of the build's
    time, and the replay's equality at any costs is tested in the browser."""
    return M & (M - 1) == 0


def _number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x


def _metrics(sched: Schedule, costs: CostModel) -> list:
    """[step time, bubble] of ``sched`` under ``costs``, for embedding; the
    bubble is "n/d" when exact and small, else a float (as ``bubble_code``).

    The same replay as simulate(), without building a Timeline: this runs for
    every configuration of the page, so it is most of the build's time. A
    stuck replay is a broken generator and raises ValidationError."""
    duration, link = costs.duration_fn(sched.S)
    run = replay(sched, duration, link)
    if run.stuck:
        r, (step, a, dep) = min(run.stuck.items())
        raise ValidationError(f"schedule {sched.name!r} (P={sched.P}, M={sched.M}) cannot "
                              f"finish: rank {r} waits at step {step} ({a}) for {dep}",
                              rank=r, step=step, action=a)
    t0, T = min(run.starts, default=0.0), max(run.ends, default=0.0)
    T -= t0
    if T <= 0:
        return [0, "0/1"]
    busy = math.fsum(e - s for s, e in zip(run.starts, run.ends))
    frac = 1 - Fraction(busy) / (sched.P * Fraction(T))
    code = f"{frac.numerator}/{frac.denominator}" if frac.denominator <= MAX_DEN \
        else round(float(frac), 6)
    return [_number(T), code]


def config_record(name: str, P: int, M: int, ratios: Sequence[float],
                  sched: Schedule | None = None, *, metrics: bool = True) -> dict:
    """Everything the page needs for one (schedule, P, M), computed in Python.

    Keys: ``o`` order code per rank; ``pl`` placement (only when not one stage
    per rank in order); ``M`` the schedule's own M where it differs (naive is
    always one batch); ``fb`` closed-form bubble "n/d" or None; ``fw`` and
    ``r[i]`` [step time, bubble] of the forward-only view and of the step at
    ``ratios[i]``, only with ``metrics``. (Where the generator refuses P and M,
    the record is ``{"err": its message}`` instead; see ``_one_P``.)
    ``sched``: the schedule when already built (else it is built here).
    """
    sched = (sched or build_schedule(name, P, M)).compute_only()
    rec: dict = {"o": encode_rows(sched.actions, sched.placement)}
    if sched.placement != tuple(range(P)):
        rec["pl"] = list(sched.placement)
    if sched.M != M:
        rec["M"] = sched.M
    fb = formula_bubble(name, P, M) if name in schedule_names() else None
    rec["fb"] = None if fb is None else f"{fb.numerator}/{fb.denominator}"
    if metrics:
        rec["r"] = [_metrics(sched, CostModel(forward=1.0, backward=float(ratio)))
                    for ratio in ratios]
        rec["fw"] = _metrics(sched.without_backward(), CostModel(forward=1.0))
    return rec


def _one_P(name: str, P: int, M_max: int, ratios: tuple[float, ...]) -> list[dict]:
    if name == decodedata.NAME:
        return decodedata.decode_configs(P, M_max, lambda n, P, M, s: config_record(
            n, P, M, ratios, s, metrics=checked_M(M)))
    seen: dict[tuple, dict] = {}
    out = []
    for M in range(1, M_max + 1):
        try:
            sched = build_schedule(name, P, M)
        except ValidationError:
            raise  # a generator that builds a broken schedule is a bug: say so loudly
        except ScheduleError as e:
            # Some schedules exist only for some P and M (e.g. M a multiple of P);
            # the page shows the generator's reason for the others.
            out.append({"err": str(e)})
            continue
        # Some schedules ignore M (naive runs one batch): simulate each order once.
        key = (sched.M, sched.placement, sched.actions, checked_M(M))
        if key not in seen:
            seen[key] = config_record(name, P, M, ratios, sched, metrics=checked_M(M))
        out.append(seen[key])
    return out


def spec_info(name: str) -> dict:
    """What the page shows about a registered schedule: every plain field of its
    spec (name, summary, formula, and whatever a spec adds later, e.g. a memory
    bound), without the callables. Generic, so that a schedule registered with
    new text fields shows them without this code changing."""
    spec = get_spec(name)
    fields = getattr(spec, "__dataclass_fields__", None) or vars(spec)
    out: dict = {}
    for key in fields:
        value = getattr(spec, key, None)
        if callable(value) or value is None or value == "":
            continue
        if isinstance(value, (str, int, float, bool)):
            out[key] = value
        elif isinstance(value, (list, tuple)) and value and all(
                isinstance(x, (str, int, float)) for x in value):
            out[key] = list(value)
        elif isinstance(value, dict) and value and all(isinstance(x, (str, int, float))
                                                       for x in value.values()):
            out[key] = {str(k): x for k, x in value.items()}
    out["name"] = name
    out.setdefault("summary", "")
    out.setdefault("formula", None)
    return out


def _check_options(P_max: int, M_max: int, ratios: Sequence[float]) -> tuple[float, ...]:
    for letter, value, top in (("P_max", P_max, 64), ("M_max", M_max, 256)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
            raise ViewError(f"{letter}={value!r} is out of range; use 1..{top}")
    if not ratios:
        raise ViewError("no backward/forward cost ratios given; offer at least one, e.g. 2")
    out = []
    for x in ratios:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 < x <= 100:
            raise ViewError(f"backward/forward cost ratio {x!r} is not valid; "
                               f"use a number in (0, 100], e.g. 2")
        out.append(float(x))
    return tuple(out)


def cache_dir() -> Path:
    """Where built data is cached: $CONVEYOR_CACHE_DIR, else $XDG_CACHE_HOME/conveyor,
    else ~/.cache/conveyor."""
    env = os.environ.get("CONVEYOR_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "conveyor"


def _cache_key(names: list[str], P_max: int, M_max: int, ratios: tuple[float, ...]) -> str:
    """Hash of the options and of every source file the data depends on: the
    schedule and sim packages, this package, and each generator's module (so a
    schedule registered from elsewhere invalidates too)."""
    h = hashlib.sha256(json.dumps([FORMAT, conveyor.__version__, names, P_max, M_max,
                                   ratios]).encode())
    root = Path(__file__).resolve().parent.parent
    files = set()
    for pkg in ("schedule", "sim", "views"):
        files.update((root / pkg).glob("*.py"))
    for name in names:
        if name == decodedata.NAME:
            continue  # its source is in the packages above
        src = inspect.getsourcefile(get_spec(name).build)
        if src:
            files.add(Path(src).resolve())
    for f in sorted(files):
        h.update(str(f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:24]


def build_data(*, names: Sequence[str] | None = None, P_max: int = 16, M_max: int = 64,
               ratios: Sequence[float] = DEFAULT_RATIOS, jobs: int | None = None,
               cache: bool = True, on_build: Callable[[], None] | None = None,
               on_progress: Callable[[str, int, int, float], None] | None = None) -> dict:
    """Build (or load from the cache) the explorer's data for ``names`` (default:
    every registered schedule, and the decode schedule: ``decodedata``), P = 1..P_max, M = 1..M_max and the offered
    backward/forward ``ratios``.

    ``jobs`` worker processes share the work (default: one per CPU);
    ``on_build`` is called when the data is computed rather than read from the
    cache, and ``on_progress(name, done, total, seconds)`` each time a
    schedule's configurations are all built (the CLI prints them). Schedules in
    ``PAGE_SOLVED`` get no configurations: the page solves them. Raises
    ViewError on bad options, ScheduleError for an unknown schedule and
    ValidationError when a generator produces a broken schedule.
    """
    ratios = _check_options(P_max, M_max, ratios)
    names = list(schedule_names() + [decodedata.NAME] if names is None else names)
    for name in names:
        if name != decodedata.NAME:
            get_spec(name)
    path = cache_dir() / f"viz-{_cache_key(names, P_max, M_max, ratios)}.json" if cache else None
    if path is not None and path.exists():
        try:
            return read_json(path, what="cached page data")
        except ConveyorError:
            pass  # a broken cache entry (or something else in its place) is rebuilt below
    if on_build is not None:
        on_build()
    built = [n for n in names if n not in PAGE_SOLVED]
    # Schedule by schedule (progress can name them), the largest P first in
    # each: they take longest, so the pool's workers end together.
    tasks = [(name, P) for name in built for P in range(P_max, 0, -1)]
    results: dict[tuple[str, int], list[dict]] = {}
    left = {name: P_max for name in built}
    t_start = time.perf_counter()

    def done(task) -> None:
        left[task[0]] -= 1
        if not left[task[0]] and on_progress is not None:
            finished = sum(1 for n in built if not left[n])
            on_progress(task[0], finished, len(built), time.perf_counter() - t_start)

    jobs = max(1, min(jobs or os.cpu_count() or 1, len(tasks) or 1))
    # Workers are forked so that schedules registered at run time are known to
    # them; where fork is unavailable the build runs in this process.
    if jobs > 1 and "fork" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
            futures = {pool.submit(_one_P, t[0], t[1], M_max, ratios): t for t in tasks}
            for f in as_completed(futures):
                results[futures[f]] = f.result()
                done(futures[f])
    else:
        for t in tasks:
            results[t] = _one_P(t[0], t[1], M_max, ratios)
            done(t)
    schedules = []
    for name in names:
        info = decodedata.decode_info() if name == decodedata.NAME else spec_info(name)
        if name in PAGE_SOLVED:
            info["solver"] = PAGE_SOLVED[name]
        else:
            info["configs"] = [results[(name, P)] for P in range(1, P_max + 1)]
        schedules.append(info)
    data = {"format": FORMAT, "alphabet": ALPHABET, "P_max": P_max, "M_max": M_max,
            "ratios": [_number(x) for x in ratios], "schedules": schedules}
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(data, separators=(",", ":")))
            os.replace(tmp, path)
        except OSError:
            pass  # the cache only saves time; an unwritable one is not an error
    return data
