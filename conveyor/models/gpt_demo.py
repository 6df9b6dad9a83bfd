"""``conveyor demo --model gpt``: a small GPT trained on real text across P processes.

The text is the Python standard library's own source (``*.py`` files under
``sysconfig.get_paths()["stdlib"]``), read as bytes: it is on every machine
that runs Python, so nothing is downloaded. Every rank reads it and draws the
same random windows (same seed); the pipeline cuts the model by name
(``embed``, ``blocks.i``, ``head``), ties the head to the embedding across
the first and last rank, clips the global gradient norm and follows a
warm-up + cosine LR schedule. At the end the ranks sample from the trained
model through the pipeline (``Pipeline.generate``: one lane per rank, each
continuing its own prompt), and every rank returns the samples.
"""

from __future__ import annotations

import math
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["GPTDemoConfig", "corpus", "batches", "run_gpt_demo", "train_rank", "train_reference"]


@dataclass(frozen=True)
class GPTDemoConfig:
    """stages: P; microbatches: M; schedule: a registered name; steps: updates;
    batch: windows per step; context: window length (bytes); layers, heads,
    width: the model; lr: peak Adam LR; corpus_bytes: how much stdlib text to
    read; eval_every: steps between held-out evaluations, each over
    eval_batches batches; seed; dtype:
    "float32" or "float64"; sample: bytes to generate at the end."""

    stages: int = 4
    microbatches: int = 4
    schedule: str = "1f1b"
    steps: int = 300
    batch: int = 32
    context: int = 64
    layers: int = 4
    heads: int = 4
    width: int = 128
    lr: float = 3e-3
    corpus_bytes: int = 2_000_000
    eval_every: int = 50
    eval_batches: int = 4
    seed: int = 0
    dtype: str = "float32"
    sample: int = 200


def corpus(limit: int) -> bytes:
    """Up to ``limit`` bytes of the standard library's top-level ``.py`` files,
    in sorted order (the same on every rank)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, n = [], 0
    for path in sorted(root.glob("*.py")):
        data = path.read_bytes()
        parts.append(data)
        n += len(data)
        if n >= limit:
            break
    text = b"".join(parts)[:limit]
    if len(text) < 10_000:
        raise RuntimeError(f"found only {len(text)} bytes of Python source under {root}")
    return text


def batches(data: torch.Tensor, cfg: GPTDemoConfig, *, seed: int):
    """Endless (inputs, targets) windows of ``cfg.context`` bytes, drawn by a
    generator seeded alike on every rank."""
    g = torch.Generator().manual_seed(seed)
    T = cfg.context
    while True:
        start = torch.randint(0, len(data) - T - 1, (cfg.batch,), generator=g)
        idx = start[:, None] + torch.arange(T + 1)[None]  # (B, T+1)
        win = data[idx]
        yield win[:, :-1], win[:, 1:]


def _setup(cfg: GPTDemoConfig):
    from conveyor.models.gpt import GPT, GPTConfig

    text = torch.frombuffer(bytearray(corpus(cfg.corpus_bytes)), dtype=torch.uint8).long()
    cut = int(0.95 * len(text))
    torch.manual_seed(cfg.seed)
    model = GPT(GPTConfig(vocab=256, context=cfg.context, layers=cfg.layers, heads=cfg.heads,
                          width=cfg.width)).to(getattr(torch, cfg.dtype))
    return model, text[:cut], text[cut:]


def _optimizer(cfg):
    return lambda ps: torch.optim.AdamW(ps, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)


def _schedule(cfg):
    warm = max(1, cfg.steps // 10)

    def factor(k):  # linear warm-up, then cosine to a tenth
        if k < warm:
            return (k + 1) / warm
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (k - warm) / max(1, cfg.steps - warm)))
    return lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _loss(logits, targets):
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             targets.reshape(-1))


def train_rank(ctx, cfg: GPTDemoConfig, quiet: bool = False):
    """One rank's training. Returns {"losses", "evals", "state"} (its stages'
    weights under the model's names, for the parent to join)."""
    from conveyor.runtime import Pipeline, PipelineConfig
    from conveyor.runtime.execute.split import split_by_names

    model, train, val = _setup(cfg)
    points = [f"blocks.{i}" for i in _cuts(cfg.layers, ctx.world_size)]
    pipe = Pipeline.from_stages(
        split_by_names(model, split_points=points), loss_fn=_loss, optimizer=_optimizer(cfg),
        schedule=cfg.schedule, microbatches=cfg.microbatches, ctx=ctx,
        config=PipelineConfig(max_grad_norm=1.0), scheduler=_schedule(cfg))
    data, held = batches(train, cfg, seed=cfg.seed + 1), batches(val, cfg, seed=cfg.seed + 2)
    losses, evals = [], []
    t0 = time.perf_counter()
    for k in range(cfg.steps):
        x, y = next(data)
        losses.append(pipe.step(x, y).loss)
        if (k + 1) % cfg.eval_every == 0 or k + 1 == cfg.steps:
            ev = sum(pipe.evaluate(*next(held)) for _ in range(cfg.eval_batches))
            ev /= cfg.eval_batches
            evals.append((k + 1, ev))
            if ctx.rank == 0 and not quiet:
                recent = sum(losses[-cfg.eval_every:]) / len(losses[-cfg.eval_every:])
                print(f"step {k + 1:4d}/{cfg.steps}  train loss {recent:.3f}  val loss "
                      f"{ev:.3f}  val perplexity {math.exp(ev):6.2f}  "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
    samples, stats = sample_rank(pipe, cfg, ctx.world_size)
    return {"losses": losses, "evals": evals, "samples": samples, "generate": stats}


PROMPTS = (b"def ", b"class ", b"import ", b"for ", b"if ", b"return ", b"with ", b"# ")


def sample_rank(pipe, cfg: GPTDemoConfig, lanes: int) -> tuple[list[bytes], dict]:
    """``cfg.sample`` bytes after each of ``lanes`` prompts, sampled at
    temperature 0.8 through the pipeline, one lane each. The model's context
    holds ``cfg.context`` positions, so a long sample is made in windows:
    each call continues the last half-context of what came before (a fresh
    prefill), until ``cfg.sample`` bytes are there. Collective."""
    seqs = [list(PROMPTS[i % len(PROMPTS)]) for i in range(lanes)]
    made, calls, t0 = 0, 0, time.perf_counter()
    while made < cfg.sample:
        window = [q[-(cfg.context // 2):] for q in seqs]
        room = cfg.context - max(len(w) for w in window) + 1  # positions left to feed
        n = min(room, cfg.sample - made)
        g = pipe.generate(window, n, lanes=lanes, temperature=0.8, seed=cfg.seed + calls)
        for q, new in zip(seqs, g.tokens.tolist()):
            q.extend(new)
        made, calls = made + n, calls + 1
    wall = time.perf_counter() - t0
    return [bytes(q) for q in seqs], {"calls": calls, "tokens": made * lanes, "wall_s": wall}


def _cuts(layers: int, P: int) -> list[int]:
    """Blocks where stages 1..P-1 begin: blocks spread evenly, embed with the
    first stage and head with the last."""
    if layers < P:
        from conveyor.errors import PartitionError
        raise PartitionError(f"{layers} blocks cannot fill {P} stages; use at least {P} "
                             f"layers or fewer stages")
    return [round(s * layers / P) for s in range(1, P)]


def train_reference(cfg: GPTDemoConfig) -> list[float]:
    """The same training on the unsplit model in one process: its losses."""
    model, train, _ = _setup(cfg)
    opt = _optimizer(cfg)(model.parameters())
    sched = _schedule(cfg)(opt)
    data = batches(train, cfg, seed=cfg.seed + 1)
    losses = []
    for _ in range(cfg.steps):
        x, y = next(data)
        opt.zero_grad()
        loss = _loss(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def run_gpt_demo(cfg: GPTDemoConfig, *, backend: str | None = None,
                 quiet: bool = False) -> dict:
    """Train across ``cfg.stages`` local processes, print progress, then join
    the stages and print a sample. Returns the rank-0 result."""
    from conveyor.runtime import LaunchOptions, launch
    text = corpus(cfg.corpus_bytes)
    print(f"GPT demo: {cfg.layers} blocks, width {cfg.width}, {cfg.heads} heads, context "
          f"{cfg.context} bytes; {len(text) / 1e6:.1f} MB of Python stdlib source "
          f"({sys.version.split()[0]}); {cfg.stages} processes, schedule {cfg.schedule}, "
          f"M={cfg.microbatches}, {cfg.steps} steps of {cfg.batch} windows", flush=True)
    results = launch(train_rank, nprocs=cfg.stages, args=(cfg, quiet),
                     options=LaunchOptions(backend=backend))
    first, last = results[0]["evals"][0][1], results[0]["evals"][-1][1]
    print(f"val loss {first:.3f} -> {last:.3f} nats/byte, perplexity {math.exp(first):.2f} "
          f"-> {math.exp(last):.2f}")
    st = results[0]["generate"]
    print(f"sampled through the pipeline: {cfg.stages} lanes (one prompt each) of "
          f"{cfg.sample} bytes, {st['calls']} generate call(s), "
          f"{st['tokens'] / st['wall_s']:.0f} bytes/s")
    print("sample:\n" + results[0]["samples"][0].decode("utf-8", errors="replace"))
    return results[0]


def run_cli(args) -> int:
    """``conveyor demo --model gpt``: the demo's shared options (-P, -M,
    --schedule, --seed, --backend) and --steps; the rest keep their defaults."""
    from conveyor.errors import ConveyorError

    for name in ("stages", "microbatches", "steps"):
        if getattr(args, name) < 1:
            raise ConveyorError(f"--{name} must be at least 1, got {getattr(args, name)}")
    cfg = GPTDemoConfig(stages=args.stages, microbatches=args.microbatches,
                        schedule=args.schedule, steps=args.steps, seed=args.seed,
                        eval_every=max(1, min(50, args.steps // 6)))
    run_gpt_demo(cfg, backend=args.backend)
    return 0
