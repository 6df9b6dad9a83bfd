"""The shape handshake's message: what a receiver needs to allocate the
tensors that cross a cut (shape, dtype on the wire, the sender's own dtype,
whether it needs a gradient), packed into one fixed-size int64 tensor so the
handshake is one isend/irecv pair (see ``comm``)."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from conveyor.runtime.errors import StageError

__all__ = ["TensorMeta", "meta_of", "encode_meta", "decode_meta", "nbytes", "META_LEN",
           "MAX_TENSORS"]

# A fixed-size metadata message keeps the handshake to one isend/irecv pair.
MAX_TENSORS = 16
MAX_DIMS = 8
_FIELDS = 3 + MAX_DIMS  # dtype code, requires_grad, ndim, dims...
META_LEN = 1 + MAX_TENSORS * _FIELDS
_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64,
           torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool,
           torch.complex64, torch.complex128]
_CODE = {dt: i for i, dt in enumerate(_DTYPES)}
# dtype field: wire code + _WIDEN * (the sender's code + 1, or 0). Far apart, so
# that a stray number (a header from other code) does not decode as a pair.
_WIDEN = 1000

class TensorMeta(NamedTuple):
    """What the receiver needs to allocate one incoming tensor: ``dtype`` is
    the one on the wire; ``orig``, when it differs, the one the sender
    computed (the receiver widens the tensor back to it, see ``wire``)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    requires_grad: bool
    orig: torch.dtype | None = None


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def meta_of(tensors: Sequence[torch.Tensor], wire: torch.dtype | None = None
            ) -> tuple[TensorMeta, ...]:
    out = []
    for t in tensors:
        sent = _on_wire(t.dtype, wire)
        out.append(TensorMeta(tuple(t.shape), sent, bool(t.requires_grad),
                              t.dtype if sent != t.dtype else None))
    return tuple(out)


def _on_wire(dtype: torch.dtype, wire: torch.dtype | None) -> torch.dtype:
    """The dtype a tensor of ``dtype`` crosses a cut in: ``wire`` for
    floating tensors when set (ids and masks keep theirs)."""
    return wire if wire is not None and dtype.is_floating_point else dtype


def encode_meta(metas: Sequence[TensorMeta], *, stage: int) -> torch.Tensor:
    """Pack metadata into one int64 tensor of length META_LEN.

    Raises StageError when the structure is larger than the fixed message.
    """
    if len(metas) > MAX_TENSORS:
        raise StageError(f"stage {stage} outputs {len(metas)} tensors; at most {MAX_TENSORS} "
                         f"may cross a cut: pack them into fewer tensors", stage=stage)
    out = torch.zeros(META_LEN, dtype=torch.int64)
    out[0] = len(metas)
    for i, m in enumerate(metas):
        if m.dtype not in _CODE:
            raise StageError(f"stage {stage} outputs a {m.dtype} tensor, which cannot cross a "
                             f"cut; use one of {', '.join(map(str, _DTYPES))}", stage=stage)
        if len(m.shape) > MAX_DIMS:
            raise StageError(f"stage {stage} outputs a tensor with {len(m.shape)} dimensions; "
                             f"at most {MAX_DIMS} may cross a cut: reshape it", stage=stage)
        base = 1 + i * _FIELDS
        # The dtype field carries the wire dtype, and the sender's own (plus
        # one; 0: the same) in its upper bits.
        code = _CODE[m.dtype] + _WIDEN * (0 if m.orig is None else _CODE[m.orig] + 1)
        out[base:base + 3] = torch.tensor([code, int(m.requires_grad), len(m.shape)])
        out[base + 3:base + 3 + len(m.shape)] = torch.tensor(m.shape, dtype=torch.int64)
    return out


def decode_meta(t: torch.Tensor) -> tuple[TensorMeta, ...]:
    """Unpack a shape header. Raises ValueError saying what in it is not a
    header this conveyor writes (a peer running other code, or a message
    paired with the wrong receive)."""
    vals = t.tolist()
    if not 0 <= vals[0] <= MAX_TENSORS:
        raise ValueError(f"it announces {vals[0]} tensors (at most {MAX_TENSORS})")
    metas = []
    for i in range(int(vals[0])):
        base = 1 + i * _FIELDS
        code, rg, ndim = vals[base:base + 3]
        orig, code = divmod(code, _WIDEN) if code >= 0 else (-1, code)
        dims = vals[base + 3:base + 3 + ndim] if 0 <= ndim <= MAX_DIMS else None
        widened = 0 < orig <= len(_DTYPES) and _DTYPES[code % len(_DTYPES)].is_floating_point \
            and _DTYPES[orig - 1].is_floating_point and orig - 1 != code
        if not 0 <= code < len(_DTYPES) or not (orig == 0 or widened) or rg not in (0, 1) \
                or dims is None or any(d < 0 for d in dims):
            raise ValueError(f"tensor {i}: dtype code {code}, requires_grad {rg}, {ndim} "
                             f"dimensions {dims} is not a tensor description")
        metas.append(TensorMeta(tuple(dims), _DTYPES[code], bool(rg),
                                _DTYPES[orig - 1] if orig else None))
    return tuple(metas)
