"""``conveyor plan``: pick schedule, M, chunks, split and checkpointing from a profile."""

from __future__ import annotations

from conveyor.cli.argtypes import bytes_arg, check_outputs, int_at_least, int_list
from conveyor.cli.dpargs import add_dp_options, dp_fields
from conveyor.cli.names import add_deprecated


def add_parser(sub) -> None:
    p = sub.add_parser("plan", help="choose schedule, M, split and checkpointing from a profile",
                       description="Search every registered schedule, micro-batch count, "
                                   "chunks per rank, the partition and checkpointing with the "
                                   "simulator; print the best plans and write the winner.")
    p.add_argument("--profile", required=True, metavar="FILE",
                   help="profile JSON written by `conveyor profile`")
    p.add_argument("-P", "--ranks", type=int_at_least(1), required=True, help="pipeline ranks")
    p.add_argument("--batch-size", type=int_at_least(1), default=None,
                   help="samples per step (required)")
    add_deprecated(p, "--batch", dest="batch_size", use="--batch-size", type=int_at_least(1))
    p.add_argument("--memory", type=bytes_arg, default=None,
                   help="memory budget per rank, e.g. 16GiB (default: unlimited)")
    p.add_argument("-s", "--schedules", default=None,
                   help="comma-separated schedule names (default: every registered one)")
    p.add_argument("-M", "--microbatches", type=int_list, default=None,
                   help="M values to try, e.g. 4,8,12 (default: a geometric set)")
    p.add_argument("-v", "--chunks", type=int_list, default=[1, 2],
                   help="chunks per rank to try, e.g. 1,2 (1,2)")
    p.add_argument("--top", type=int_at_least(1), default=8, help="rows of the table (8)")
    p.add_argument("--no-refine", action="store_true",
                   help="skip the simulated refinement of the split")
    p.add_argument("-o", "--output", default=None, metavar="FILE",
                   help="write the best plan to FILE (without -o nothing is written); an "
                        "existing FILE must be a conveyor plan, which is replaced")
    add_dp_options(p, param_bytes=False)  # each stage's parameter bytes come from the profile
    p.set_defaults(func=run)


def run(args) -> int:
    from conveyor.errors import PlanError
    from conveyor.plan import load_profile, plan_to_dict, save_plan, search
    from conveyor.plan.report import plan_table

    if args.batch_size is None:
        raise PlanError("--batch-size is required: the samples per step the plan is for")
    if args.output is not None:  # before the search, which can take a while
        check_outputs([args.output])
        check_replaceable(args.output)
    cluster = dp_fields(args, args.ranks) if args.dp > 1 or args.nodes > 1 else None
    prof = load_profile(args.profile)
    schedules = args.schedules.split(",") if args.schedules else None
    if schedules:
        from conveyor.schedule.generators import get_spec
        for name in schedules:
            get_spec(name)  # unknown names fail here, with close matches
    result = search(prof, P=args.ranks, batch_size=args.batch_size, memory=args.memory,
                    schedules=schedules, microbatches=args.microbatches,
                    chunks=tuple(args.chunks), refine=not args.no_refine, cluster=cluster)
    print(plan_table(result, top=args.top))
    if result.best.shard:
        print(f"run it with dp={args.dp} and PipelineConfig(shard_optimizer=True): the plan "
              f"fits only with the optimizer state sharded over the replicas")
    note = cpu_caveat(prof.device, result.best.v, (prof.links or {}).get("transport"))
    if note:
        print(note)
    if args.output is None:
        print("not written: add -o plan.json to save it (then run it: Pipeline(model, "
              "plan='plan.json'); draw it: conveyor viz --plan plan.json -o plan.svg)")
        return 0
    path = save_plan(plan_to_dict(result.best, prof, batch_size=args.batch_size,
                                  budget=args.memory), args.output)
    print(f"plan written to {path} (run it: Pipeline(model, plan={str(path)!r}); "
          f"draw it: conveyor viz --plan {path} -o plan.svg)")
    return 0


def check_replaceable(output: str) -> None:
    """Raise PlanError when ``output`` exists and is not a conveyor plan: -o
    replaces an earlier plan, never a profile or any other file."""
    import json
    from pathlib import Path

    from conveyor.errors import PlanError
    from conveyor.plan.planfile import FORMAT

    path = Path(output)
    if not path.exists():
        return
    try:
        kind = json.loads(path.read_text()).get("format")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        kind = None
    if kind != FORMAT:
        what = f"a {kind} file" if isinstance(kind, str) else "something other than a plan"
        raise PlanError(f"-o {output!r} exists and holds {what}, not a conveyor plan; "
                        f"-o replaces only an earlier plan: choose another file name")


def cpu_caveat(device: str, v: int, transport: str | None = None) -> str | None:
    """What to expect of the prediction of a plan with ``v`` stages per rank
    on CPU ranks (benchmarks/planner.md), given the transport the profile's
    links were measured over; None where there is nothing to add."""
    if not str(device).startswith("cpu") or v < 2:
        return None
    if transport == "shm":
        return (f"note: on CPU ranks over shared memory, plans with {v} stages per rank "
                f"measured +0.5 % to +6.2 % over their prediction on the real-compute benchmark "
                f"(benchmarks/planner.md); run it with PipelineConfig(transport='shm')")
    return (f"note: on CPU ranks over gloo, plans with {v} stages per rank measured up to "
            f"13.1 % over their prediction (gloo's transfers take the ranks' own cores); over "
            f"shared memory +0.5 % to +6.2 %: profile with --links --transport "
            f"shm and run with PipelineConfig(transport='shm') (benchmarks/planner.md)")
