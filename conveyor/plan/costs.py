"""From a profile to what the simulator and the memory check need.

For one configuration (a balance, the micro-batch sizes, which stages are
checkpointed, the schedule's placement) this gives:

- a cost model whose F/B/I/W times are per stage *and* per micro-batch (sizes
  may differ by one when M does not divide the batch), each as profiled, with
  the recomputed forward of a checkpointed stage charged to its backward (to B;
  when the backward is split, to I and again to W once per backward call W
  makes, since torch's checkpoint recomputes per backward call);
- the bytes per sample each stage keeps for a micro-batch in flight, its
  input and output, and its recomputed bytes, from which
  ``conveyor.plan.memory.rank_memory`` gives each rank's peak.

The last stage also pays the loss function's forward and backward where the
profile timed them (``Profile.loss``), and, given the placement, every F
and B (or I) beside a transfer across ranks pays the runtime's time to send
or receive it where the links measured it (``transfer_charges``).

Every action's time also carries the profile's ``overhead``: what the
runtime adds per action beyond the layers' compute (dispatch, posting and
waiting on sends and receives), measured by ``measure_links``. It is charged
once per F, B, I and W, so the simulator needs no field of its own for it.

Activations held per micro-batch of n samples on a stage of layers a..b-1:
the stage's input (the cut before a), every layer's saved tensors other than
its input, the inputs its inner layers save (a layer's output that the next
layer keeps), and the stage's output unless its last layer saved it already (the
last stage's output turns into the loss). A checkpointed stage keeps only its
input and output.
"""

from __future__ import annotations

from dataclasses import dataclass

from conveyor.partition import stage_ranges
from conveyor.plan.profile import Profile
from conveyor.schedule.ir import B, F, I, W
from conveyor.sim.cost import CostModel

__all__ = ["StageCosts", "MicrobatchCostModel", "stage_costs", "inner_bytes", "backward_times",
           "transfer_charges"]


@dataclass(frozen=True)
class MicrobatchCostModel(CostModel):
    """A CostModel whose compute times differ per micro-batch.

    per_mb: ``{kind: [[time of (stage s, micro-batch mb)] for s]}``; the scalar
    fields hold the means, for reports. Links use ``activation_bytes`` (the
    largest micro-batch's) as in CostModel.
    """

    per_mb: dict | None = None

    def duration_fn(self, S: int):
        base, link = super().duration_fn(S)
        table = self.per_mb
        if not table:
            return base, link

        def duration(rank, a):
            per = table.get(a.kind)
            return per[a.stage][a.mb] if per is not None else 0.0

        return duration, link

    def to_dict(self) -> dict:
        d = super().to_dict()
        d.pop("per_mb", None)  # the means above describe it; the table can be large
        return d


@dataclass(frozen=True)
class StageCosts:
    """Per stage: times at micro-batch size n, bytes, for one configuration."""

    balance: tuple[int, ...]
    checkpoint: tuple[bool, ...]
    sizes: tuple[int, ...]
    forward: tuple[tuple[float, ...], ...]      # [s][mb]
    backward: tuple[tuple[float, ...], ...]
    input_grad: tuple[tuple[float, ...], ...]
    weight_grad: tuple[tuple[float, ...], ...]
    held_per_sample: tuple[float, ...]          # activation bytes kept per sample, per stage
    recompute_per_sample: tuple[float, ...]     # transient bytes per sample in a recompute
    static_bytes: tuple[float, ...]             # parameters + gradients + optimizer state
    cut_per_sample: tuple[float, ...]           # bytes per sample at each of the S-1 cuts
    in_per_sample: tuple[float, ...] = ()       # the stage's input, per sample
    out_per_sample: tuple[float, ...] = ()      # its output kept for B (0 on the last stage)
    loss_bytes: float = 0.0                     # the weighted loss the last stage keeps
    w_kept: tuple = ()  # per stage: ((tag, bytes per sample), ...) kept from I for W
    param_bytes: tuple[int, ...] = ()           # per stage: parameters (as many of gradients)
    optim_bytes: tuple[float, ...] = ()         # per stage: optimizer state held on the rank

    def cost_model(self, latency: float = 0.0, bandwidth: float = float("inf")
                   ) -> MicrobatchCostModel:
        n_max = max(self.sizes)
        fw = [list(row) for row in self.forward]
        ig = [list(row) for row in self.input_grad]
        wg = [list(row) for row in self.weight_grad]
        bw = [list(row) for row in self.backward]

        def mean(rows):
            return [sum(r) / len(r) for r in rows]

        return MicrobatchCostModel(
            forward=mean(fw), backward=mean(bw), input_grad=mean(ig), weight_grad=mean(wg),
            latency=latency, bandwidth=bandwidth,
            activation_bytes=[c * n_max for c in self.cut_per_sample],
            per_mb={F: fw, B: bw, I: ig, W: wg})


def inner_bytes(layers, j: int) -> float:
    """Bytes per sample that layer j keeps of the activation before it, inside
    a stage: its input, when it saves it and layer j-1 has not saved it already."""
    prev = layers[j - 1]
    return prev.out_bytes if layers[j].saves_input and not prev.saves_output else 0.0


def backward_times(layers, n: float, first: bool) -> list[float]:
    """Per layer of a block, the full backward the runtime runs at n samples.

    On the first stage the model's input needs no gradient, so the layers up
    to and including the first one with parameters run only their
    weight-gradient part (what the profile's ``weight_grad`` measured: the
    gradient of the parameters alone); a layer after one with parameters
    must pass the input gradient down, so it runs its whole backward."""
    out, seen = [], not first
    for x in layers:
        out.append(x.backward.at(n) if seen else x.weight_grad.at(n))
        seen = seen or x.param_bytes > 0
    return out


def _block_times(ls, n: float, first: bool) -> tuple[float, float, float, float]:
    """(F, B, I, W) of a block of layers at n samples, each as profiled.

    I and W are what the runtime's split backward (``splitgrad``) took on each
    layer in the profile; their sum is about B, not exactly (I walks the graph
    first, and each is a call of its own).

    On the first stage (``first``) no input gradient is wanted: the runtime's
    I does nothing there and W runs the whole backward from the stage's
    outputs to its parameters (``backward_times``), which is also B."""
    f = sum(x.forward.at(n) for x in ls)
    if first:
        b = sum(backward_times(ls, n, True))
        return f, b, 0.0, b
    return (f, sum(x.backward.at(n) for x in ls),
            sum(x.input_grad.at(n) for x in ls), sum(x.weight_grad.at(n) for x in ls))


def _kept_for_w(layers, r: range, s: int, S: int) -> tuple:
    """What a split backward keeps from I until W on the stage of layers r, as
    (tag, bytes per sample): tag "gout" is the gradient the stage received
    (the same storage), an int j a gradient made inside the stage at layer j.

    On the first stage no input wants a gradient: I keeps just the received
    gradient and W runs from the outputs (``splitgrad``). Elsewhere each
    layer keeps what the profile measured at its frontier nodes; the output
    gradient of the stage's last layer is the received one (on the last
    stage it comes from the loss, a new tensor)."""
    if s == 0:
        return (("gout", 1.0),) if S > 1 else ()
    out = []
    for j in r:
        lay = layers[j]
        if lay.w_out_bytes > 0:
            own = j == r.stop - 1 and s < S - 1
            out.append(("gout", 1.0) if own else ((j, "out"), lay.w_out_bytes))
        if lay.w_bytes > 0:
            out.append(((j, "inner"), lay.w_bytes))
    return tuple(out)


def transfer_charges(placement, cut_bytes, host: dict | None) -> tuple[list[float], list[float]]:
    """Per stage, the seconds its F and its B (or I) spend sending and
    receiving across ranks, with ``cut_bytes[c]`` bytes crossing cut c (one
    micro-batch) and ``host`` the runtime's time per transfer (``{"send":
    {"fixed": s, "per_byte": s}, "recv": {...}}``; None: nothing).

    Stage c's F sends its output to stage c+1's F, which receives it first;
    stage c+1's B sends the gradient back to stage c's B, which receives it
    first. A cut inside one rank moves nothing."""
    S = len(placement)
    f, b = [0.0] * S, [0.0] * S
    if not host:
        return f, b
    (s0, s1), (r0, r1) = ((float(host[k]["fixed"]), float(host[k]["per_byte"]))
                          for k in ("send", "recv"))
    for c in range(S - 1):
        if placement[c] == placement[c + 1]:
            continue
        n = cut_bytes[c]
        send, recv = s0 + s1 * n, r0 + r1 * n
        f[c] += send
        f[c + 1] += recv
        b[c + 1] += send
        b[c] += recv
    return f, b


def stage_costs(profile: Profile, balance, sizes, checkpoint, placement=None, *,
                shard: int = 1) -> StageCosts:
    """Costs of ``balance`` (layer counts per stage) for micro-batches of
    ``sizes`` samples, with ``checkpoint[s]`` recomputing stage s's forward.
    With ``placement`` (the rank of each stage) and a profile whose links
    carry the runtime's time per send and receive, each F and B (and I)
    beside a transfer across ranks pays it (``transfer_charges``).

    Static bytes per stage: its parameters, their gradients (as many bytes)
    and the optimizer state, divided by ``shard`` when it is sharded over
    that many data-parallel replicas (``PipelineConfig(shard_optimizer=True)``)."""
    layers = profile.layers
    cut_in = [profile.input_bytes] + [lay.out_bytes for lay in layers]  # cut before layer j
    fw, bw, ig, wg, held, rec, static, outs = [], [], [], [], [], [], [], []
    pb: list[int] = []
    ob: list[float] = []
    S = len(balance)
    cuts = [cut_in[r.stop] for r in stage_ranges(balance)[:-1]]
    host = profile.host_transfers if placement is not None else None
    # per distinct size: (F charges, B charges) per stage
    moved = {n: transfer_charges(placement, [x * n for x in cuts], host)
             for n in set(sizes)} if host else None
    for s, r in enumerate(stage_ranges(balance)):
        ls = layers[r.start:r.stop]
        # Sizes differ by at most one: price each distinct size once.
        per = {n: _block_times(ls, n, s == 0) for n in set(sizes)}
        f, b, i, w = ([per[n][k] for n in sizes] for k in range(4))
        saved = sum(x.saved_bytes for x in ls) + sum(
            inner_bytes(layers, j) for j in range(r.start + 1, r.stop))
        # The last stage's output becomes the loss: only what the loss saves stays.
        kept_out = 0.0 if s == S - 1 else ls[-1].out_bytes
        out = 0.0 if ls[-1].saves_output else kept_out
        outs.append(kept_out)
        if checkpoint[s]:  # the forward runs again before B (or I; W on stage 0)
            b = [x + y for x, y in zip(b, f)]
            if s == 0:
                w = [x + y for x, y in zip(w, f)]
            else:
                # torch's checkpoint recomputes once per backward call: once
                # for I, and once for each call W makes (one per weight group)
                calls = sum(x.w_backward_calls for x in ls)
                i = [x + y for x, y in zip(i, f)]
                w = [x + calls * y for x, y in zip(w, f)]
            held.append(cut_in[r.start] + kept_out)
            rec.append(saved)
        else:
            held.append(cut_in[r.start] + saved + out)
            rec.append(0.0)
        if s == S - 1 and profile.loss is not None:
            # The loss runs after the stage's forward (never recomputed) and its
            # backward first in B; it has no weights, so a split backward runs
            # it in I (in W on a lone first stage, where I does nothing).
            lf = [profile.loss.forward.at(n) for n in sizes]
            lb = [profile.loss.backward.at(n) for n in sizes]
            f = [x + y for x, y in zip(f, lf)]
            b = [x + y for x, y in zip(b, lb)]
            if s == 0:
                w = [x + y for x, y in zip(w, lb)]
            else:
                i = [x + y for x, y in zip(i, lb)]
        if moved:  # sends and receives across ranks, never recomputed
            cf = [moved[n][0][s] for n in sizes]
            cb = [moved[n][1][s] for n in sizes]
            f = [x + y for x, y in zip(f, cf)]
            b = [x + y for x, y in zip(b, cb)]
            if s == 0:  # stage 0's I does nothing: W receives its gradient
                w = [x + y for x, y in zip(w, cb)]
            else:
                i = [x + y for x, y in zip(i, cb)]
        # once per action, after the recompute above added a forward's compute
        f, b, i, w = ([x + profile.overhead for x in xs] for xs in (f, b, i, w))
        fw.append(tuple(f))
        bw.append(tuple(b))
        ig.append(tuple(i))
        wg.append(tuple(w))
        pb.append(sum(x.param_bytes for x in ls))
        ob.append(sum(x.optim_bytes for x in ls) / shard)
        static.append(2 * pb[-1] + ob[-1])
    return StageCosts(tuple(balance), tuple(bool(c) for c in checkpoint), tuple(sizes),
                      tuple(fw), tuple(bw), tuple(ig), tuple(wg), tuple(held), tuple(rec),
                      tuple(static), tuple(cuts),
                      tuple(cut_in[r.start] for r in stage_ranges(balance)), tuple(outs),
                      float(profile.meta.get("loss_bytes", 0.0)),
                      tuple(_kept_for_w(layers, r, s, S)
                            for s, r in enumerate(stage_ranges(balance))), tuple(pb), tuple(ob))
