"""``conveyor profile``: measure what each layer of a model costs."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from conveyor.cli.argtypes import check_outputs, int_at_least
from conveyor.errors import PlanError


def add_parser(sub) -> None:
    p = sub.add_parser("profile", help="measure per-layer time and memory of a model",
                       description="Time every layer's forward, input-gradient and weight-"
                                   "gradient backward (median after warm-up), and count its "
                                   "activation, saved, parameter and optimizer bytes. Writes "
                                   "a profile JSON for `conveyor plan`.")
    p.add_argument("--model", required=True, metavar="FILE.py:FN|module:FN",
                   help="a function returning (model, sample_batch): an nn.Sequential (or "
                        "list of layers) and the input of one step; or (model, sample_batch, "
                        "loss_fn, targets) to time the loss the last stage runs too")
    p.add_argument("--repeats", type=int_at_least(1), default=5,
                   help="timed calls per measurement, median taken (5)")
    p.add_argument("--warmup", type=int_at_least(0), default=2, help="untimed calls first (2)")
    p.add_argument("--optimizer", default="adam",
                   help="whose state to count: adam, adamw, momentum, sgd, none (adam)")
    p.add_argument("--links", action="store_true",
                   help="also measure latency and bandwidth between two local ranks (over "
                        "--transport) and the runtime's own time per action, per send and "
                        "per receive (tiny pipelines on them)")
    p.add_argument("--transport", choices=("dist", "shm"), default="dist",
                   help="with --links: what the run's transfers will go over, as "
                        "PipelineConfig(transport=...): dist (gloo) or shm (shared memory "
                        "between CPU ranks on one host) (dist)")
    p.add_argument("--alongside", type=int_at_least(0), default=0, metavar="N",
                   help="time the layers while N other processes run the model too, each on "
                        "a core of its own, as the other ranks of a run on this host will "
                        "(cores computing at once slow each other down); P-1 for P ranks (0)")
    p.add_argument("--threads", type=int_at_least(1), default=1,
                   help="torch CPU threads, as each rank of the run will use (1)")
    p.add_argument("--alone", action="store_true",
                   help="time each layer alone, call after call, instead of as a stage runs "
                        "the layers (in order, gradients adding up): faster to measure, but "
                        "on CPUs 5-30 %% below what a stage takes")
    p.add_argument("-o", "--output", default="profile.json", help="profile file to write")
    p.set_defaults(func=run)


def load_factory(spec: str):
    """``path/to/file.py:fn`` or ``package.module:fn`` -> the function."""
    target, _, fn = spec.rpartition(":")
    if not target or not fn:
        raise PlanError(f"--model {spec!r}: write FILE.py:FUNCTION or module:FUNCTION")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise PlanError(f"--model {spec!r}: no file {target!r}")
        mod_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as e:
            raise PlanError(f"--model {spec!r}: cannot import {target!r} ({e})") from None
    if not hasattr(module, fn):
        raise PlanError(f"--model {spec!r}: {target} has no function {fn!r}")
    return getattr(module, fn)


def run(args) -> int:
    import torch

    from conveyor.runtime.procs.heap import keep_freed_memory
    from conveyor.measure.links import LINK_STEPS
    from conveyor.measure.profile import OPTIMIZER_STATE, measure_links, profile
    from conveyor.progress import WeightedProgress

    # what can be checked before the model is built and timed
    check_outputs([args.output])
    if args.transport != "dist" and not args.links:
        raise PlanError(f"--transport {args.transport} says what --links measures; add --links")
    if args.optimizer not in OPTIMIZER_STATE:
        raise PlanError(f"--optimizer {args.optimizer!r} is unknown; choose one of "
                        f"{', '.join(OPTIMIZER_STATE)}")
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # time the layers with the heap the ranks will have (LaunchOptions)
    got = load_factory(args.model)()
    if not (isinstance(got, tuple) and len(got) in (2, 4)):
        raise PlanError(f"--model {args.model}: the function must return (model, sample_batch) "
                        f"or (model, sample_batch, loss_fn, targets)")
    model, batch, loss_fn, targets = got if len(got) == 4 else (*got, None, None)
    # One bar for the whole command, weighted by each step's expected time:
    # the layers first, then the links (their launch of 2 ranks, LINK_STEPS).
    bar = WeightedProgress(title="profile ")
    if args.links:
        bar.expect(sum(LINK_STEPS.values()), key="links")
    prof = profile(model, batch, repeats=args.repeats, warmup=args.warmup,
                   optimizer=args.optimizer, name=args.model, progress=bar,
                   in_context=not args.alone, alongside=args.alongside, loss_fn=loss_fn,
                   targets=targets)
    links = None
    if args.links:
        links = measure_links(transport=args.transport, progress=bar)
        prof.links, prof.overhead = links, float(links.get("overhead") or 0.0)
    bar.close()
    path = prof.save(args.output)
    total_f = sum(x.forward.at(prof.batch[0]) for x in prof.layers)
    total_b = sum(x.backward.at(prof.batch[0]) for x in prof.layers)
    heavy = max(range(prof.L), key=lambda j: prof.layers[j].forward.at(prof.batch[0])
                + prof.layers[j].backward.at(prof.batch[0]))
    print(f"profiled {prof.L} layers at batch {'/'.join(map(str, prof.batch))}, median of "
          f"{prof.repeats}: forward {total_f * 1e3:.2f} ms, backward {total_b * 1e3:.2f} ms; "
          f"heaviest layer {heavy} ({prof.layers[heavy].kind})")
    if prof.loss is not None:
        n = prof.batch[0]
        print(f"loss (on the last stage): forward {prof.loss.forward.at(n) * 1e3:.2f} ms, "
              f"backward {prof.loss.backward.at(n) * 1e3:.2f} ms at batch {n}")
    if links:
        bw = links["bandwidth"]
        print(f"links: latency {links['latency'] * 1e6:.0f} us in a pipeline (ping-pong "
              f"{links['ping_pong_latency'] * 1e6:.0f} us), bandwidth "
              f"{'n/a' if not bw else f'{bw / 2**20:.0f} MiB/s'}; runtime overhead "
              f"{prof.overhead * 1e6:.0f} us per action ({links['method']})")
        if links.get("send"):
            snd, rcv = links["send"], links["recv"]
            print(f"per transfer across ranks: send {snd['fixed'] * 1e6:.1f} us + "
                  f"{snd['per_byte'] * 2**20 * 1e6:.0f} us/MiB, receive "
                  f"{rcv['fixed'] * 1e6:.1f} us + {rcv['per_byte'] * 2**20 * 1e6:.0f} us/MiB")
    print(f"profile written to {path}")
    return 0
