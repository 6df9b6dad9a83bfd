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
