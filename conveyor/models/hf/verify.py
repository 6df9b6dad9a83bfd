"""The check a chain passes before it is used: its pieces, run in order in
one process, against the model's own forward.

The probe: 2 sequences of T = min(16, the model's longest) tokens drawn with
a fixed seed (``torch.Generator().manual_seed(0)``), the last token of the
second one padding; the attention mask as the side input, position ids left
to their default (``arange(T)``, counted from the mask for OPT). (One pad
token: the library's eager attention turns a query row with no key in its
window into NaN, which then spreads to the whole sequence.)
Model and chain run in eval mode (no dropout), without gradients, in the
model's dtype and on its device. A sliding window at least as long as the
probe would hide a chain that drops it, so for the probe the config's
``sliding_window`` is shortened to T / 2 and then restored: model and chain
read it from the same config object. With ``output_router_logits`` the
router loss the chain adds is compared with the model's ``aux_loss`` too.

The relative difference, max |chain - model| / max |model| over the logits of
unpadded tokens, must not exceed TOLERANCE for the dtype: 1e-10 (float64),
1e-5 (float32), 1e-2 (bfloat16, float16). A chain runs the model's own
modules with the model's own masks, so it agrees to the last bit where the
kernels are the same, and a dropped piece of the model (a window, a
multiplier, a soft cap) shows far above these (0.68, 7.3, ... on tiny random
models). A difference smaller than the tolerance passes: e.g. a soft cap far
above a random model's logits changes them by less than bf16 resolves.
"""

from __future__ import annotations

import torch

from conveyor.errors import PartitionError
from conveyor.runtime.execute.aux import collect_aux

__all__ = ["TOLERANCE", "probe_batch", "verify_chain", "relative_error"]

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1e-2,
             torch.float16: 1e-2}
PROBE_T = 16


def _longest(config) -> int:
    for attr in ("max_position_embeddings", "n_positions", "seq_length"):
        v = getattr(config, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return PROBE_T


def probe_batch(config, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (2, T), mask (2, T)) of the probe; see the module docstring."""
    T = max(2, min(PROBE_T, _longest(config)))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (2, T), generator=g)
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, T - 1:] = 0
    return ids.to(device), mask.to(device)


def relative_error(got: torch.Tensor, want: torch.Tensor, keep: torch.Tensor) -> float:
    """max |got - want| / max |want| over the positions where ``keep`` is 1."""
    sel = keep.bool()
    a, b = got[sel].double(), want[sel].double()
    scale = b.abs().max().item() or 1.0
    return float((a - b).abs().max().item() / scale)


class _Window:
    """The config's sliding window shortened to T / 2 inside the block."""

    def __init__(self, config, T: int):
        self.config, self.T = config, T
        self.old = getattr(config, "sliding_window", None)
        self.short = (isinstance(self.old, int) and not isinstance(self.old, bool)
                      and self.old >= T // 2 and T >= 4)

    def __enter__(self):
        if self.short:
            self.config.sliding_window = self.T // 2
        return self

    def __exit__(self, *exc):
        if self.short:
            self.config.sliding_window = self.old


def verify_chain(chain, model, family, *, router: bool = False) -> float:
    """Run the probe (module docstring); returns the relative difference.

    Raises PartitionError naming the family, the config fields it does not
    model, and what to do, when the chain's logits (or router loss) differ
    from the model's beyond TOLERANCE."""
    from conveyor.models.hf.families import fields_set

    p = next(model.parameters())
    dtype = next((q.dtype for q in model.parameters() if q.is_floating_point()), p.dtype)
    tol = TOLERANCE.get(dtype, 1e-2)
    ids, mask = probe_batch(model.config, p.device)
    modes = [(m, m.training) for m in model.modules()] + [(m, m.training) for m in chain.modules()]
    extra = {"output_router_logits": True} if router else {}
    try:
        model.eval()
        chain.eval()
        devices = [p.device] if p.device.type == "cuda" else []
        with _Window(model.config, ids.shape[1]) as win, torch.no_grad(), \
                torch.random.fork_rng(devices=devices):
            torch.manual_seed(0)
            out = model(input_ids=ids, attention_mask=mask, **extra)
            torch.manual_seed(0)
            with collect_aux() as terms:
                got = chain(ids, attention_mask=mask)
    finally:
        for m, mode in modes:
            m.train(mode)
    if not bool(torch.isfinite(out.logits[mask.bool()]).all()):
        raise PartitionError(
            f"cannot check the {family.name!r} chain of {type(model).__name__}: the model's own "
            f"forward gives NaN or Inf logits on the probe batch; check the model's weights, or "
            f"pass verify=False to skip the check")
    err = relative_error(got, out.logits, mask)
    what = "logits"
    if router and err <= tol:
        want = (model.config.router_aux_loss_coef * out.aux_loss).double()  # as the model adds it
        have = sum((v.double() for n, v in terms if n == "router"), torch.zeros((), dtype=torch.float64))
        err = abs(float(have - want)) / (abs(float(want)) or 1.0)
        what = "router loss"
    if not err <= tol:  # NaN too
        raise PartitionError(_refusal(family, model, err, tol, dtype, what, ids.shape, win,
                                      fields_set(model.config)))
    return err


def _refusal(family, model, err, tol, dtype, what, shape, win, set_fields) -> str:
    missing = {f: v for f, v in set_fields.items() if f not in family.models}
    named = (", ".join(f"{f}={v!r}" for f, v in missing.items()) if missing
             else "none of the fields it knows to look for")
    dt = str(dtype).replace("torch.", "")
    window = f", sliding window shortened to {win.T // 2}" if win.short else ""
    return (
        f"the {family.name!r} chain of {type(model).__name__} does not compute what the model "
        f"computes: on a probe batch ({shape[0]} x {shape[1]} tokens, {dt}, seed 0{window}) its "
        f"{what} differ from the model's own by {err:.3g} (relative; the tolerance for {dt} is "
        f"{tol:.0e}), so it is refused rather than trained wrong. Config fields set that this "
        f"adaptation does not model: {named}. What to do: adapt the family with the building "
        f"blocks of conveyor.models.hf (causal_lm_chain(model, family=Family(...)), "
        f"https://github.com/conveyor-pp/conveyor/blob/main/docs/models.md, 'Adapting a "
        f"family'), or cut the model yourself with split_by_names; "
        f"verify=False skips this check and trains whatever the chain computes")
