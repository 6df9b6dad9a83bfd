"""Planning before launch (no torch): profiles, the planner's search, plan files.

    from conveyor.plan import load_profile, search
    result = search(load_profile("prof.json"), P=4, batch_size=64, memory=16 * 2**30)
    print(result.best.name, result.best.M, result.best.balance)

The profiler that writes profiles is ``conveyor.profile`` (needs torch).
"""

from conveyor.plan.costs import MicrobatchCostModel, stage_costs, transfer_charges
from conveyor.plan.kvmemory import KVLayer, fed_tokens, kv_cache_bytes, kv_tokens_within
from conveyor.plan.memory import rank_memory
from conveyor.plan.planfile import Plan, load_plan, plan_to_dict, save_plan
from conveyor.plan.profile import Affine, LayerProfile, LossProfile, Profile, load_profile
from conveyor.plan.search import Candidate, PlanResult, default_microbatches, search

__all__ = ["Affine", "LayerProfile", "LossProfile", "Profile", "load_profile", "search", "Candidate",
           "PlanResult", "default_microbatches", "MicrobatchCostModel", "stage_costs", "transfer_charges",
           "rank_memory", "KVLayer", "fed_tokens", "kv_cache_bytes", "kv_tokens_within", "Plan", "load_plan", "plan_to_dict", "save_plan"]
