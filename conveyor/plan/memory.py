"""Each rank's peak activation bytes, as the runtime's counter sees them.

``rank_memory`` replays one rank's lowered action list with the interpreter's
own rules (``conveyor.schedule.rankplan``: receives posted ahead in list order,
send buffers let go once delivery is proven) and counts, each storage once,
what ``conveyor.runtime.execute.recorder.ActivationMemory`` counts:

- per micro-batch in flight on a stage (F done, B or W not yet): its input,
  what its layers saved, its output (on the last stage, the weighted loss);
- a send's buffer until it is let go (an activation send shares its storage
  with the stage output, so it costs only once that output is dropped by B);
- a receive's buffer from posting until consumed (an activation receive then
  becomes the next stage's input; a gradient receive is let go by B or I);
- from a split backward's I to its W, the gradients I recorded for W
  (``StageCosts.w_kept``: the received gradient itself, or gradients made
  inside the stage, as the profile measured them per layer);
- while a checkpointed stage runs its backward, its recomputed activations
  (``recompute=True``; the counter does not see them). On the first stage
  that is W, since its I has nothing to do.

Not modelled: the loss function's own saved tensors (the counter does not
see them either).
"""

from __future__ import annotations

from conveyor.schedule.ir import B, F, I, RECV_B, RECV_F, SEND_B, SEND_F, W, Action, Schedule
from conveyor.schedule.lowering import add_comms
from conveyor.schedule.rankplan import plan_rank

__all__ = ["rank_memory"]


class _Held:
    """Holders of named storages, each storage counted once (as the counter)."""

    def __init__(self) -> None:
        self.by: dict = {}      # holder -> [storage names]
        self.refs: dict = {}    # storage name -> [holders, bytes]
        self.current = self.peak = 0.0

    def hold(self, key, storages) -> None:
        mine = self.by.setdefault(key, [])
        for name, n in storages:
            if n <= 0 or name in mine:
                continue
            mine.append(name)
            ref = self.refs.setdefault(name, [0, n])
            if ref[0] == 0:
                self.current += n
            ref[0] += 1
        self.peak = max(self.peak, self.current)

    def release(self, key) -> None:
        for name in self.by.pop(key, []):
            ref = self.refs[name]
            ref[0] -= 1
            if ref[0] == 0:
                del self.refs[name]
                self.current -= ref[1]


def _rank_peak(low: Schedule, r: int, costs, recompute: bool, prepost: bool) -> float:
    """Peak activation bytes of rank r running its lowered list ``low.actions[r]``."""
    sizes, last = costs.sizes, low.S - 1
    row, plan = low.actions[r], plan_rank(low, r, prepost)
    h = _Held()
    known: set = set()     # (cut, size) whose handshake this rank has received
    done_f: set = set()    # (stage, mb) whose forward ran here
    nxt = 0                # index into plan.recvs of the next receive to post

    def cut(c: int, mb: int):
        """The activation at cut c (output of stage c, input of c+1); c=-1: the batch."""
        per = costs.in_per_sample[0] if c < 0 else costs.in_per_sample[c + 1]
        return (("cut", c, mb), per * sizes[mb])

    def kept(s: int, mb: int):
        """What I keeps for W (see ``StageCosts.w_kept``), as named storages."""
        n = sizes[mb]
        return [(("gout", s, mb), costs.out_per_sample[s] * n) if tag == "gout"
                else (("wkept", s, mb, tag), per * n)
                for tag, per in (costs.w_kept[s] if costs.w_kept else ())]

    def post(a: Action) -> bool:
        s, n = a.stage, sizes[a.mb]
        if a.kind == RECV_F:
            if (s - 1, n) not in known:
                return False
            h.hold(a, [cut(s - 1, a.mb)])
        else:
            if (s, a.mb) not in done_f:
                return False
            h.hold(a, [(("gout", s, a.mb), costs.out_per_sample[s] * n)])
        return True

    for i, a in enumerate(row):
        while nxt < len(plan.recvs) and plan.recvs[nxt] <= plan.post_limit[i]:
            if not post(row[plan.recvs[nxt]]):
                break
            nxt += 1
        s, mb, kind = a.stage, a.mb, a.kind
        n = sizes[mb]
        if kind in (RECV_F, RECV_B) and a not in h.by:
            if kind == RECV_F:
                known.add((s - 1, n))  # learnt here, at the receive's own place
            post(a)
            nxt += 1
        elif kind == F:
            inner = costs.held_per_sample[s] - costs.in_per_sample[s] - costs.out_per_sample[s]
            out = ((("loss", mb), costs.loss_bytes) if s == last else cut(s, mb))
            h.hold((s, mb), [cut(s - 1, mb), (("inner", s, mb), inner * n), out])
            h.release(Action(s, RECV_F, mb))
            done_f.add((s, mb))
        elif kind in (B, I):
            if recompute and (kind == B or s > 0):
                h.peak = max(h.peak, h.current + costs.recompute_per_sample[s] * n)
            if kind == B:
                h.release((s, mb))
            else:
                h.hold(("W", s, mb), kept(s, mb))
            h.release(Action(s, RECV_B, mb))
        elif kind == W:
            if recompute and s == 0:
                h.peak = max(h.peak, h.current + costs.recompute_per_sample[s] * n)
            h.release((s, mb))
            h.release(("W", s, mb))
        elif kind == SEND_F:
            h.hold(a, [cut(s, mb)])
        elif kind == SEND_B:
            h.hold(a, [(("gin", s, mb), costs.in_per_sample[s] * n)])
        for sent in plan.release_after[i]:
            h.release(sent)
    return h.peak


def rank_memory(schedule: Schedule, costs, *, static: bool = True, recompute: bool = True,
                prepost: bool = True) -> list[float]:
    """Peak bytes per rank: static bytes of its stages (parameters, optimizer
    state; ``static=False`` leaves them out) plus the most activation bytes
    held at once (see the module doc). ``prepost`` as the runtime's option of
    that name. In: a schedule, lowered or not, and its StageCosts."""
    low = add_comms(schedule)
    peaks = []
    for r in range(low.P):
        fixed = sum(costs.static_bytes[s] for s in low.stages_of(r)) if static else 0.0
        peaks.append(fixed + _rank_peak(low, r, costs, recompute, prepost))
    return peaks
