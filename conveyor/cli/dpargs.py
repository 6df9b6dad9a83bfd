"""Data-parallel and node flags shared by ``conveyor simulate`` and ``conveyor plan``.

Times are in the unit of the other costs (slots for `conveyor simulate`,
seconds for `conveyor plan`), bandwidths in bytes per that unit, sizes in bytes
with an optional suffix (``1.5GiB``, ``2e9``).
"""

from __future__ import annotations

import argparse

from conveyor.cli.argtypes import byte_sizes, bytes_arg, int_at_least
from conveyor.errors import CostModelError
from conveyor.limits import MAX_P

__all__ = ["add_dp_options", "dp_fields", "dp_report"]


def _time(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"{text!r}: give a finite time >= 0")
    return value


def add_dp_options(p: argparse.ArgumentParser, *, param_bytes: bool = True) -> None:
    """The flags; ``param_bytes`` False where the caller knows the parameters
    (``conveyor plan`` reads them from the profile)."""
    g = p.add_argument_group("data parallelism and nodes (one replica is simulated, the "
                             "all-reduces are added)")
    g.add_argument("--dp", type=int_at_least(1, MAX_P), default=1, metavar="N",
                   help="data-parallel replicas of the pipeline (1)")
    g.add_argument("--nodes", type=int_at_least(1, MAX_P), default=1, metavar="K",
                   help="nodes the dp x P ranks fill in order, global rank d*P + r (1)")
    if param_bytes:
        g.add_argument("--param-bytes", type=byte_sizes, default=None, metavar="BYTES",
                       help="gradient bytes all-reduced per stage: one size or one per stage, "
                            "e.g. 1.5GiB (0)")
    g.add_argument("--inter-latency", type=_time, default=None, metavar="T",
                   help="fixed time per transfer between nodes (as --latency)")
    g.add_argument("--inter-bandwidth", type=bytes_arg, default=None, metavar="BYTES/T",
                   help="bytes per time unit between nodes, e.g. 25GB (as --bandwidth)")
    g.add_argument("--no-overlap", action="store_true",
                   help="all-reduce after each rank's whole step, not as each stage's "
                        "last backward ends")


def dp_fields(args, P: int) -> dict:
    """CostModel fields from the flags for P pipeline ranks.

    Raises CostModelError when the nodes do not divide the dp x P ranks, or a
    flag needs another that is missing (one line, the CLI's exit 2)."""
    world = args.dp * P
    if world % args.nodes:
        divisors = [k for k in range(2, min(world, 64) + 1) if world % k == 0][:6]
        raise CostModelError(f"--nodes {args.nodes} does not divide the {world} ranks (dp "
                             f"{args.dp} x P {P}); give a divisor of {world}"
                             + (f", e.g. {', '.join(map(str, divisors))}" if divisors else ""))
    param = getattr(args, "param_bytes", None)
    needs = [("--inter-latency", args.inter_latency is not None, args.nodes > 1, "--nodes 2"),
             ("--inter-bandwidth", args.inter_bandwidth is not None, args.nodes > 1,
              "--nodes 2"),
             ("--param-bytes", param is not None, args.dp > 1, "--dp 2"),
             ("--no-overlap", args.no_overlap, args.dp > 1, "--dp 2")]
    for flag, given, applies, fix in needs:
        if given and not applies:
            raise CostModelError(f"{flag} has no effect with --dp {args.dp} --nodes "
                                 f"{args.nodes}; give {fix} or more, or drop {flag}")
    out: dict = {"dp": args.dp, "allreduce_overlap": not args.no_overlap}
    if args.nodes > 1:
        out.update(ranks_per_node=world // args.nodes, inter_latency=args.inter_latency,
                   inter_bandwidth=args.inter_bandwidth)
    if param is not None:
        out["param_bytes"] = param
    return out


def dp_report(timeline) -> list[str]:
    """Report lines on the all-reduce of a simulated timeline (none without DP)."""
    info = timeline.meta.get("allreduce")
    if not info:
        return []
    costs = timeline.meta.get("costs", {})
    unit = timeline.unit + "s"
    per_rank = [0.0] * timeline.P
    for c in timeline.collectives:
        per_rank[c.rank] += c.end - c.start
    r = max(range(timeline.P), key=per_rank.__getitem__)
    inter = info["inter_node"]
    where = ("across nodes" if all(inter) else "within a node" if not any(inter)
             else f"across nodes on {sum(inter)} of {timeline.P} ranks")
    per_node = costs.get("ranks_per_node")
    nodes = 1 if per_node is None else -(-info["dp"] * timeline.P // per_node)
    exposed = timeline.step_time - (info["pipeline_end"] - timeline.t0)
    saved = info["end_after_step"] - info["end_overlapped"]
    lines = [f"data parallel       dp={info['dp']} replicas x P={timeline.P} ranks on {nodes} "
             f"node{'s' if nodes > 1 else ''}; one replica simulated, all-reduces added",
             f"all-reduce          {per_rank[r]:g} {unit} on rank {r} (the longest), ring over "
             f"{info['dp']} replicas {where}"
             + ("" if per_rank[r] else " (no bytes or free links: give --param-bytes and a bandwidth)"),
             f"  exposed           {exposed:g} {unit}: the step ends that long after the "
             f"pipeline ({info['pipeline_end'] - timeline.t0:g} {unit})"]
    if info["overlap"]:
        lines.append(f"  hidden by overlap {saved:g} {unit} (all-reduce after the step: "
                     f"step {info['end_after_step'] - timeline.t0:g} {unit})")
    else:
        lines.append(f"  overlap off       starting each at its stage's last backward "
                     f"would save {saved:g} {unit}")
    return lines
