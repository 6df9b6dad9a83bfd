"""The interpreter's per-rank plan; it lives in ``conveyor.schedule.rankplan``
(torch-free, so that the planner's memory model walks the same plan)."""

from conveyor.schedule.rankplan import RankPlan, plan_rank, vector_clocks

__all__ = ["RankPlan", "plan_rank", "vector_clocks"]
