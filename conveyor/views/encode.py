"""A compact, generic text encoding of one rank's action order.

The explorer page embeds the order of every (schedule, P, M) the engine
produced, so it must be small. This is a compression of the order, not a
schedule generator: it knows nothing about any schedule, only that orders are
long runs of "the next micro-batch of the same stage and kind".

Index letters as in ``conveyor.schedule.ir``: s stage, mb micro-batch, and c the
chunk, the position of a stage among the stages its rank holds (ascending).

A token is one action written as a symbol, one letter per (chunk, kind), from
``ALPHABET`` (letter i is chunk i // 4, kind "FBIW"[i % 4]). The micro-batch is
implicit: each (chunk, kind) counts up from 0, and a token emits the next one.
Where an order skips or goes back, ``@mb`` before the letter sets it. Repeated
token runs are written ``X<n>`` or ``(...)<n>``::

    order  := item*
    item   := ("@" digits)? letter digits?      one token, repeated n times
            | "(" order ")" digits             a group, repeated n times

So GPipe's rank row for M = 64 is ``F64B64`` and 1F1B's rank 0 at P = 4 is
``F4(BF)60B4``. Decoding expands the groups to tokens, then assigns micro-
batches left to right; the JavaScript decoder on the page does the same.
"""

from __future__ import annotations

from typing import Sequence

from conveyor.errors import ScheduleError
from conveyor.schedule.ir import COMPUTE_KINDS, Action

__all__ = ["ALPHABET", "encode_row", "decode_row", "encode_rows", "decode_rows"]

# Chunk 0 reads like the IR ("F", "B", "I", "W"), chunk 1 is its lower case; the
# rest of the letters serve deeper interleaving (up to 13 chunks per rank).
ALPHABET = "FBIWfbiw" + "ACDEGHJKLMNOPQRSTUVXYZacdeghjklmnopqrstuvxyz"
_KINDS = "FBIW"
assert set(_KINDS) == set(COMPUTE_KINDS) and len(set(ALPHABET)) == len(ALPHABET) == 52

# Longest repeated unit the compressor looks for. Steady states of the known
# schedules repeat every 2 (1F1B) to 4*v tokens (interleaved, zero-bubble).
_MAX_PERIOD = 16

Token = tuple[int, "int | None"]  # (symbol index, explicit mb or None)


def _text(row: Sequence[Action], stages: Sequence[int]) -> tuple[str, dict[str, Token]]:
    """The row as a string with one character per distinct token, and the
    token of each character: finding repeats is then done by str methods in C
    (the page's build encodes ~10 million actions, so this loop is lean)."""
    # kind -> stage -> symbol for this rank
    sym_of: dict[str, dict[int, int]] = {k: {s: c * 4 + j for c, s in enumerate(stages)}
                                         for j, k in enumerate(_KINDS)}
    expected = [0] * (4 * max(len(stages), 1))
    plain = [chr(0x100 + sym) for sym in range(len(expected))]  # the next mb, implied
    jumps: dict[Token, str] = {}                                # an explicit @mb
    out: list[str] = []
    add = out.append
    for a in row:
        s, kind, mb = a
        sym = sym_of.get(kind, {}).get(s)
        if sym is None or sym >= len(ALPHABET):
            _refuse(a, stages)
        if mb == expected[sym]:
            add(plain[sym])
        else:
            ch = jumps.get((sym, mb))
            if ch is None:
                ch = jumps[(sym, mb)] = chr(0x100 + len(plain) + len(jumps))
            add(ch)
        expected[sym] = mb + 1
    token_of: dict[str, Token] = {c: (sym, None) for sym, c in enumerate(plain)}
    token_of.update({c: t for t, c in jumps.items()})
    return "".join(out), token_of


def _refuse(a: Action, stages: Sequence[int]) -> None:
    if a.kind not in _KINDS:
        raise ScheduleError(f"cannot encode {a}: only compute actions (F, B, I, W) are "
                            f"drawn; pass schedule.compute_only()")
    if a.stage not in stages:
        raise ScheduleError(f"cannot encode {a}: stage {a.stage} is not one of this rank's "
                            f"stages {list(stages)}")
    raise ScheduleError(f"cannot encode {a}: rank holds {len(stages)} stages, the "
                        f"encoding supports at most {len(ALPHABET) // 4}")


def _write_token(tok: Token) -> str:
    sym, jump = tok
    return ("" if jump is None else f"@{jump}") + ALPHABET[sym]


def _compress(text: str, token_of: dict[str, Token]) -> str:
    """Greedy run-length coding of repeated token groups, one level of nesting
    (a group's body is itself run-length coded): at each position, the unit of
    up to ``_MAX_PERIOD`` tokens whose repeats cover the most tokens."""
    parts: list[str] = []
    i, n = 0, len(text)
    while i < n:
        best_p, best_k = 1, 1
        first = text[i]
        for p in range(1, min(_MAX_PERIOD, (n - i) // 2) + 1):
            if text[i + p] != first:   # cannot repeat: skip the slice
                continue
            unit = text[i:i + p]
            k = 1
            while text.startswith(unit, i + k * p):
                k += 1
            if k >= 2 and p * k > best_p * best_k:
                best_p, best_k = p, k
        count = "" if best_k == 1 else str(best_k)
        if best_p == 1:
            parts.append(_write_token(token_of[first]) + count)
        else:
            parts.append("(" + _compress(text[i:i + best_p], token_of) + ")" + count)
        i += best_p * best_k
    return "".join(parts)


def encode_row(row: Sequence[Action], stages: Sequence[int]) -> str:
    """Encode one rank's compute actions; ``stages`` are the rank's stages in
    ascending order. Raises ScheduleError for comm actions or foreign stages."""
    return _compress(*_text(row, stages))


def _parse(text: str, i: int, depth: int) -> tuple[list[Token], int]:
    out: list[Token] = []
    n = len(text)

    def number(j: int) -> tuple[int | None, int]:
        k = j
        while k < n and text[k].isdigit():
            k += 1
        return (int(text[j:k]) if k > j else None), k

    while i < n and text[i] != ")":
        if text[i] == "(":
            body, i = _parse(text, i + 1, depth + 1)
            if i >= n or text[i] != ")":
                raise ScheduleError(f"bad order code {text!r}: unclosed '('")
            i += 1
        else:
            jump = None
            if text[i] == "@":
                jump, i = number(i + 1)
                if jump is None:
                    raise ScheduleError(f"bad order code {text!r}: '@' without a number")
            sym = ALPHABET.find(text[i]) if i < n else -1
            if sym < 0:
                raise ScheduleError(f"bad order code {text!r} at position {i}")
            body, i = [(sym, jump)], i + 1
        count, i = number(i)
        out.extend(body * (1 if count is None else count))
    if depth == 0 and i < n:
        raise ScheduleError(f"bad order code {text!r}: unmatched ')' at position {i}")
    return out, i


def decode_row(text: str, stages: Sequence[int]) -> list[Action]:
    """Inverse of ``encode_row``. Raises ScheduleError on malformed text."""
    tokens, _ = _parse(text, 0, 0)
    expected: dict[int, int] = {}
    row = []
    for sym, jump in tokens:
        c, k = divmod(sym, 4)
        if c >= len(stages):
            raise ScheduleError(f"order code {text!r} names chunk {c}; the rank holds "
                                f"{len(stages)} stage(s)")
        mb = expected.get(sym, 0) if jump is None else jump
        expected[sym] = mb + 1
        row.append(Action(stages[c], _KINDS[k], mb))
    return row


def encode_rows(actions: Sequence[Sequence[Action]], placement: Sequence[int]) -> list[str]:
    """Encode every rank's row; rank r's stages come from ``placement``."""
    return [encode_row(row, [s for s, rr in enumerate(placement) if rr == r])
            for r, row in enumerate(actions)]


def decode_rows(codes: Sequence[str], placement: Sequence[int]) -> list[list[Action]]:
    """Inverse of ``encode_rows``."""
    return [decode_row(code, [s for s, rr in enumerate(placement) if rr == r])
            for r, code in enumerate(codes)]
