"""Registration of the schedules beyond naive, GPipe and 1F1B, with their
published bubble formulas, where they hold, and their memory bounds.

In every formula F, I, W are one stage's (chunk's) times for one
micro-batch and B = I + W; for the loop-placed schedules (v chunks per rank)
they are a whole rank's layers, so one chunk takes F/v. A bubble is idle
time per rank.
"""

from __future__ import annotations

from fractions import Fraction

from conveyor.schedule.auto import zb_auto
from conveyor.schedule.dualpipe import dualpipev
from conveyor.schedule.generators import register
from conveyor.schedule.interleaved import interleaved_1f1b, looped_bfs, rounds
from conveyor.schedule.vshape import peak_v_half, peak_v_min, v_budget, v_half, v_min
from conveyor.schedule.zerobubble import zb_h1, zb_h2, zbv

__all__: list[str] = []


def _loop_fraction(P: int, M: int, v: int = 2):
    return Fraction(P - 1, v * M + P - 1) if M >= P else None


def _interleaved_memory(P: int, M: int, v: int) -> int:
    return min(M * v, 2 * (P - 1) + (v - 1) * len(rounds(P, M)[0]) + 1)


_ZB = "Qi et al., Zero Bubble Pipeline Parallelism (ICLR 2024)"

# Interleaved and looped BFS share the bubble (Megatron's and the BFS paper's).
_LOOP = dict(bubble=_loop_fraction, formula="(P-1)/(vM+P-1)", bubble_formula="(P-1)(F+B)/v",
             bubble_time=lambda P, v, F, I, W: (P - 1) * (F + I + W) / v,
             scope="single step", holds_for="M >= P", min_M=lambda P, v: P, options={"v": 2})

register("interleaved-1f1b",
         "Megatron's interleaved 1F1B: v chunks per rank in a loop, 1F1B over chunks",
         source="Narayanan et al., Megatron-LM (SC'21)", memory=_interleaved_memory,
         memory_text="2(P-1)+(v-1)g+1 chunks (g = P when P | M)", **_LOOP)(interleaved_1f1b)

register("looped-bfs",
         "breadth-first: all micro-batches through a chunk before the next (v chunks, loop)",
         source="Lamy-Poirier, Breadth-First Pipeline Parallelism (MLSys 2023)",
         memory=lambda P, M, v: M * v, memory_text="M*v chunks", **_LOOP)(looped_bfs)

register("zb-h1", "zero bubble H1: B split into I and W, W held back into the drain; "
                  "P micro-batches per rank",
         bubble=lambda P, M: Fraction(P - 1, 3 * M + P - 1) if M >= P else None,
         formula="(P-1)/(3M+P-1) at F=I=W", bubble_formula="(P-1)(F+I-W)",
         bubble_time=lambda P, v, F, I, W: (P - 1) * (F + I - W), scope="single step",
         holds_for="M >= P", min_M=lambda P, v: P, source=_ZB,
         memory=lambda P, M, v: min(P, M), memory_text="min(P, M)")(zb_h1)

register("zb-h2", "zero bubble H2: 2(P-1-r) warm-up forwards, W fills the drain; "
                  "2P-1 micro-batches per rank",
         bubble_formula="(P-1)(F+I-2W)",
         bubble_time=lambda P, v, F, I, W: (P - 1) * (F + I - 2 * W), scope="steady state",
         holds_for="M >= 2P-1", min_M=lambda P, v: 2 * P - 1, source=_ZB,
         memory=lambda P, M, v: min(2 * P - 1, M), memory_text="min(2P-1, M)")(zb_h2)

register("zbv", "ZB-V: stages r and 2P-1-r on rank r, split backward, list-scheduled; "
                "2P chunks per rank",
         scope="", source="Qi et al., Pipeline Parallelism with Controllable Memory "
                          "(NeurIPS 2024); order: conveyor's list scheduler",
         memory=lambda P, M, v: min(2 * P, 2 * M), memory_text="min(2P, 2M) chunks",
         options={})(zbv)

register("dualpipev", "DeepSeek's DualPipeV: V placement, F&B pairs back to back, "
                      "W held back into the drain",
         bubble_formula="(PP/2-1)(F&B+B-3W), PP = 2P stages, F&B = F+B",
         bubble_time=lambda P, v, F, I, W: (P - 1) * (F + 2 * (I + W) - 3 * W),
         scope="upper bound", holds_for="M >= 2P", min_M=lambda P, v: 2 * P,
         source="DeepSeek-AI, DualPipe README (2025)",
         memory=lambda P, M, v: min(2 * P + 1, 2 * M), memory_text="min(2P+1, 2M) chunks")(
    dualpipev)

register("zb-auto", "automatic zero bubble: the shortest order found for the given costs, "
                    "link latency and memory cap",
         scope="", source="conveyor",
         memory=lambda P, M, v: P if v == 1 else 2 * P,
         memory_text="cap (default P) micro-batches per rank; 2 cap chunks with V",
         options={"cap": None, "placement": "line"})(zb_auto)

_CM = "Qi et al., Pipeline Parallelism with Controllable Memory (NeurIPS 2024)"

# The V family's bubble: the paper gives ~2P/3M (V-Min) and ~P/2M (V-Half) of
# the step at F = I = W, i.e. 2P/3 and P/2 of a rank's work per micro-batch,
# 2(F+I+W) with F, I, W a chunk's; the generated orders stay within those
# (tests/schedule/test_vshape.py).
register("v-min", "V-Min: stages r and 2P-1-r on rank r, split backward, the V building "
                  "blocks of least lifespan (k=1); ~1/3 of 1F1B's activations, ~2/3 of its bubble",
         formula="~2P/(3M) (F = I = W)", bubble_formula="4P(F+I+W)/3",
         bubble_time=lambda P, v, F, I, W: 4 * P * (F + I + W) / 3, scope="upper bound",
         holds_for="F = I = W, M >= 2P", min_M=lambda P, v: 2 * P, source=_CM,
         memory=lambda P, M, v: min(peak_v_min(P), 2 * M),
         memory_text="<= 2(P+4)/3 chunks, (P+4)/3 micro-batches of a rank's layers "
                     "(the paper's bound)",
         options={})(v_min)

register("v-half", "V-Half: stages r and 2P-1-r on rank r, split backward, the V building "
                   "blocks with k=2; ~1/2 of 1F1B's activations, ~1/2 of its bubble",
         formula="~P/(2M) (F = I = W)", bubble_formula="P(F+I+W)",
         bubble_time=lambda P, v, F, I, W: P * (F + I + W), scope="upper bound",
         holds_for="F = I = W, M >= 2P", min_M=lambda P, v: 2 * P, source=_CM,
         memory=lambda P, M, v: min(peak_v_half(P), 2 * M),
         memory_text="<= P+2 chunks, (P+2)/2 micro-batches of a rank's layers "
                     "(the paper's bound)",
         options={})(v_half)

register("v-budget", "controllable memory: stages r and 2P-1-r on rank r; the shortest "
                     "V-block order found within a budget of chunk-activations per rank",
         scope="", source=_CM + "; choice and reordering: conveyor",
         memory=lambda P, M, v: min(peak_v_half(P), 2 * M),
         memory_text="budget chunks (default V-Half's peak, <= P+2); V-Min's peak to 2P",
         options={"budget": None})(v_budget)
