"""The explorer's decode entry: the decode schedule (``conveyor.schedule.
decode``: a prefill round, then one round per token, M lanes) for P = 1..P_max
and M = 1..M_max lanes, as the page takes every schedule (orders, placement,
Python's metrics), plus ``rounds`` so that the page gives each round's stage a
whole P-th of the model (``assets/costs.js``) and counts tokens per time unit.

The closed-form idle fraction, unit stage time and free links: a round takes
max(M, P) slots, so (K rounds) idle = 1 - MK / (K max(M, P) + min(M, P) - 1):
(P-1)/P at M = 1, the fill and drain alone at M >= P.
"""

from __future__ import annotations

from fractions import Fraction

from conveyor.schedule.decode import decode_schedule

__all__ = ["NAME", "TOKENS", "decode_info", "decode_configs", "decode_bubble"]

NAME = "decode"
TOKENS = 8  # new tokens per sequence in the page: 1 prefill round + 7 token rounds


def decode_bubble(P: int, M: int, rounds: int = TOKENS) -> Fraction:
    """The idle fraction above, exact."""
    return 1 - Fraction(M * rounds, rounds * max(M, P) + min(M, P) - 1)


def decode_info() -> dict:
    return {"name": NAME, "summary": f"generation in KV-cache lanes: a prefill round, then one "
                                     f"round per token ({TOKENS} tokens), M lanes in flight; "
                                     f"the last stage sends each token back to stage 0",
            "formula": "1 - MK/(K max(M,P) + min(M,P) - 1), K rounds",
            "holds_for": "one lane: (P-1)/P idle; M >= P lanes: the fill and drain",
            "source": "conveyor: https://github.com/conveyor-pp/conveyor/blob/main/docs/"
                      "generation.md", "rounds": TOKENS}


def decode_configs(P: int, M_max: int, record) -> list[dict]:
    """One record per M = 1..M_max, made by ``record(name, P, M, sched)``
    (data.config_record), with the closed form as the formula bubble."""
    out = []
    for M in range(1, M_max + 1):
        rec = record(NAME, P, M, decode_schedule(P, M, new_tokens=TOKENS))
        fb = decode_bubble(P, M)
        rec["fb"] = f"{fb.numerator}/{fb.denominator}"
        out.append(rec)
    return out
