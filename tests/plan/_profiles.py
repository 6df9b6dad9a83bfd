"""Synthetic profiles (no torch): layers with set times and bytes."""

from __future__ import annotations

from conveyor.plan import Affine, LayerProfile, Profile


def synthetic(units, *, fixed: float = 0.0, per_sample: float = 1e-3, act: float = 1000.0,
              params: int = 10_000, name: str = "synthetic") -> Profile:
    """One layer per entry of ``units``: forward = units * (fixed + per_sample * n)
    seconds, backward twice that (I and W half each); ``act`` bytes per sample
    at every cut and saved per layer; ``params`` bytes of parameters (Adam: 2x
    more of state)."""
    layers = []
    for j, u in enumerate(units):
        f = Affine(u * fixed, u * per_sample)
        half = Affine(u * fixed, u * per_sample)
        layers.append(LayerProfile(str(j), "Block", f, Affine(2 * u * fixed, 2 * u * per_sample),
                                   half, half, act, act, False, params, 2 * params))
    return Profile({"name": name, "layers": len(units), "fingerprint": name}, layers,
                   input_bytes=act, batch=[16, 8, 4])


# embedding-heavy first layer, 8 narrow blocks, 4 wide blocks, a head 3x a block
UNEQUAL = [6] + [1] * 8 + [2] * 4 + [3]
