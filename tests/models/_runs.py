"""One launch per P for every model test: process start-up (torch and
transformers imported by each rank) is the expensive part, so each rank runs
every job's configurations in turn and the tests read the cached rows."""

from __future__ import annotations

from conveyor.runtime import launch
_RUNS: dict[int, dict] = {}


def all_jobs(ctx, plan: dict) -> dict:
    from tests.models import _generate_jobs, _hf_jobs, _jobs, _model_jobs, _varlen
    jobs = {"tied": _jobs.tied_job, "predict": _jobs.predict_job,
            "generate": _generate_jobs.generate_job,
            "families": _model_jobs.model_job, "varlen": _varlen.varlen_job,
            "undeclared": _jobs.undeclared_job, "hf": _hf_jobs.family_job,
            "hf_own": lambda ctx, fams: [_hf_jobs.own_loss_job(ctx, f) for f in fams],
            "hf_export": _hf_jobs.export_job}
    return {name: jobs[name](ctx, arg) for name, arg in plan.items()}


def runs(P: int) -> dict:
    """{job name: [rows of rank 0, rows of rank 1, ...]} for this P."""
    if P not in _RUNS:
        from tests.models import _families as fam, test_families, test_tied, test_varlen
        plan = {"tied": test_tied.grid(P), "predict": 4, "families": test_families.grid(),
                "undeclared": None}
        if P in (2, 4):
            from tests.models import test_generate
            plan["generate"] = test_generate.plan(P)
        if P == 2:
            plan["varlen"] = test_varlen.CONFIGS
            if fam.have_transformers():
                from tests.models import _hf_families as H, test_hf_families
                plan.update(hf=test_hf_families.grid(), hf_own=list(H.ROUTED),
                            hf_export="llama")
        per_rank = launch(all_jobs, nprocs=P, args=(plan,))
        _RUNS[P] = {name: [rows[name] for rows in per_rank] for name in plan}
    return _RUNS[P]


def by_id(per_rank: list[list[dict]]) -> dict[str, list[dict]]:
    """{config id: [row of each rank]}."""
    out: dict[str, list] = {}
    for rows in per_rank:
        for row in rows:
            out.setdefault(row["id"], []).append(row)
    return out
