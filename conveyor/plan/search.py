"""The planner: search schedule x M x chunks x partition x checkpointing.

For every registered schedule (so schedules added later are searched too,
V-Min and V-Half among them, and v-budget at a few budgets between them and
ZB-V: ``candidates.budget_options``), every micro-batch count M in a small
geometric set (M need not divide the batch: sizes then differ by one), and
every chunk count the schedule offers, the planner

1. cuts the layers under the per-layer forward + backward times at the mean
   micro-batch size: with one stage per rank, the exact min-bottleneck
   split; with several (chunks), the split with the least largest rank
   total (``conveyor.partition.placed_partition``);
2. checks each rank's peak memory against the budget: parameters, their
   gradients, the optimizer state and the activations the schedule's order
   holds (``conveyor.plan.memory``); when a rank is over, it shards the
   optimizer state over the data-parallel replicas (dp > 1; the time model
   prices its reduce-scatter and all-gather as the all-reduce they replace,
   the same bytes), then re-cuts under the limit, then checkpoints the stages
   of the ranks over budget, then all stages;
3. optionally refines the cut by moving one boundary at a time and keeping
   what the simulator says is faster (the bottleneck ignores fill and drain);
4. simulates the step (profiled compute, measured link latency and bandwidth).

The fastest plan within the budget wins; every candidate keeps why it lost.
"""

from __future__ import annotations

from conveyor.deprecation import renamed
from conveyor.errors import ConveyorError, PlanError
from conveyor.partition import balanced_partition, placed_partition, uniform_balance
from conveyor.plan.candidates import (  # noqa: F401 (microbatch_sizes: imported from here)
    Candidate, PlanResult, budget_options, build, default_microbatches, in_flight,
    microbatch_sizes,
)
from conveyor.plan.costs import backward_times, inner_bytes, stage_costs
from conveyor.plan.memory import rank_memory
from conveyor.plan.messages import check_request, explain, fmt_bytes, fmt_time, over_budget
from conveyor.plan.profile import Profile
from conveyor.schedule.generators import schedule_names
from conveyor.schedule.ir import Schedule
from conveyor.sim.simulate import simulate

__all__ = ["Candidate", "PlanResult", "search", "default_microbatches", "microbatch_sizes",
           "fmt_bytes", "fmt_time"]


class _Searcher:
    def __init__(self, profile: Profile, P: int, batch: int, budget: float | None,
                 refine: bool, cluster: dict | None = None):
        self.prof, self.P, self.batch, self.budget, self.refine = profile, P, batch, budget, refine
        self.cluster = cluster or {}
        self._cuts: dict = {}
        layers = profile.layers
        self.cut_max = max([profile.input_bytes] + [x.out_bytes for x in layers])
        # Each layer's saved bytes plus, as a bound, the input it keeps
        self.saved_pre = _pre([x.saved_bytes + (inner_bytes(layers, j) if j else 0.0)
                               for j, x in enumerate(layers)])
        self.dp = int(self.cluster.get("dp", 1))
        # optimizer state divided by dp where it is sharded (index: shard flag)
        self.static_pre = {sh: _pre([2 * x.param_bytes + x.optim_bytes / (self.dp if sh else 1)
                                     for x in layers]) for sh in (False, True)}

    def layer_times(self, n: float, ckpt: bool) -> list[float]:
        """Forward (twice when checkpointed) + backward per layer; the layers
        that always sit on stage 0 need no input gradient (``backward_times``)."""
        layers = self.prof.layers
        back = [x.backward.at(n) for x in layers]
        head = backward_times(layers[:1], n, True)
        return [x.forward.at(n) * (2 if ckpt else 1) + b
                for x, b in zip(layers, head + back[1:])]

    def fits_fn(self, schedule: Schedule, n_max: int, checkpoint: list[bool],
                shard: bool = False):
        """A monotone per-stage memory check for the solver: the cut bytes are
        bounded by the largest cut, so a block keeps fitting as it shrinks."""
        if self.budget is None:
            return None
        flight = in_flight(schedule)
        per_rank = [len(schedule.stages_of(r)) for r in range(schedule.P)]
        share = [self.budget / per_rank[schedule.placement[s]] for s in range(schedule.S)]
        sp, st, cm = self.saved_pre, self.static_pre[shard], self.cut_max

        def fits(s, a, b):
            saved = sp[b] - sp[a]
            if checkpoint[s]:
                need = flight[s] * 2 * cm * n_max + saved * n_max
            else:
                need = flight[s] * (2 * cm + saved) * n_max
            return st[b] - st[a] + need <= share[s]

        return fits

    def cost(self, c: Candidate) -> Candidate:
        """Stage costs and a lower bound on the step, without the schedule.

        Rank r's first stage is f. It computes nothing before the forwards of
        stages 0..f-1 have run for some micro-batch (the head, plus a link
        latency per cut crossed), then it needs its own compute (busy). After
        its last backward on stage f, only its weight-gradient work W remains,
        while stages f-1..0 still run that micro-batch's backward (the tail).
        So step >= head + busy + max(0, tail - W of rank r).
        """
        sc = stage_costs(self.prof, c.balance, c.sizes, c.checkpoint, c.placement,
                         shard=self.dp if c.shard else 1)
        busy, wsum, first = [0.0] * c.P, [0.0] * c.P, [c.S] * c.P
        for s, r in enumerate(c.placement):
            back = sum(sc.input_grad[s]) + sum(sc.weight_grad[s]) if c.split \
                else sum(sc.backward[s])
            busy[r] += sum(sc.forward[s]) + back
            wsum[r] += sum(sc.weight_grad[s]) if c.split else 0.0
            first[r] = min(first[r], s)
        head, tail = [0.0] * (c.S + 1), [0.0] * (c.S + 1)
        for s in range(c.S):
            hop = self.prof.latency if s + 1 < c.S and c.placement[s] != c.placement[s + 1] \
                else 0.0
            back = sc.input_grad[s][-1] if c.split else sc.backward[s][-1]
            head[s + 1] = head[s] + sc.forward[s][-1] + hop
            tail[s + 1] = tail[s] + back + hop
        c.bound = max(head[first[r]] + busy[r] + max(0.0, tail[first[r]] - wsum[r])
                      for r in range(c.P))
        c._costs = sc
        return c

    def memory(self, c: Candidate) -> Candidate:
        """Each rank's peak and whether it fits. Without a budget everything
        fits: the replay (costly at large P) waits until a row shows it."""
        if self.budget is None:
            c.fits = True
            return c
        c.peak_bytes = rank_memory(c.schedule, c._costs)
        c.fits = max(c.peak_bytes) <= self.budget
        return c

    def peaks(self, c: Candidate) -> list[float]:
        """``c.peak_bytes``, replayed now if the search skipped it (building
        the schedule of a candidate that could not win, for the table)."""
        if not c.peak_bytes and c._costs is not None:
            if c.schedule is None:
                c.schedule = build(c.name, c.P, c.M, c.chunks, c.options)
            if c.schedule is not None and c.schedule.S == c.S:
                c.peak_bytes = rank_memory(c.schedule, c._costs)
        return c.peak_bytes

    def variant(self, c: Candidate, balance, checkpoint, shard: bool | None = None
                ) -> Candidate:
        """The same schedule with another cut, checkpointing or sharding, costed and sized."""
        new = Candidate(c.name, c.M, c.chunks, c.P, c.S, c.placement, c.split, list(balance),
                        list(checkpoint), c.sizes, schedule=c.schedule,
                        shard=c.shard if shard is None else shard, options=dict(c.options))
        return self.memory(self.cost(new))

    def time(self, c: Candidate) -> Candidate:
        costs = c._costs.cost_model(self.prof.latency, self.prof.bandwidth)
        if self.cluster:  # data parallelism: each stage all-reduces its parameters' gradients
            from dataclasses import replace
            params, j = [], 0
            for n in c.balance:  # layers per stage
                params.append(sum(x.param_bytes for x in self.prof.layers[j:j + n]))
                j += n
            costs = replace(costs, **self.cluster, param_bytes=params)
        tl = simulate(c.schedule, costs, check=False, unit="s")
        c.step, c.bubble = tl.step_time, tl.bubble_overall
        return c

    def solve(self, c: Candidate, checkpoint: list[bool], constrained: bool) -> list[int] | None:
        n = sum(c.sizes) / len(c.sizes)
        if all(x == checkpoint[0] for x in checkpoint):
            times = self.layer_times(n, checkpoint[0])
        else:  # mixed: charge the recompute everywhere (a bound), memory decides the rest
            times = self.layer_times(n, True)
        if not constrained:  # the same for every schedule of this placement at this size
            key = (tuple(c.placement), n, tuple(checkpoint))
            if key not in self._cuts:
                self._cuts[key] = self._partition(times, c.placement, None)
            return self._cuts[key]
        return self._partition(times, c.placement,
                               self.fits_fn(c.schedule, max(c.sizes), checkpoint, c.shard))

    @staticmethod
    def _partition(times, placement, fits) -> list[int] | None:
        """One stage per rank: the least bottleneck. Several (chunks): the
        least largest rank total, a rank's stages summed."""
        try:
            if len(set(placement)) == len(placement):
                return balanced_partition(times, len(placement), fits=fits)
            # A small search budget, smaller as S grows (each node costs O(P)):
            # large S rarely closes the gap to the bound, and the simulator
            # (and ``improve``) decide among near ties.
            budget = max(300, 24_000 // len(placement))
            return placed_partition(times, placement, fits=fits, budget=budget)[0]
        except ConveyorError:
            return None

    def alternates(self, c: Candidate) -> list[Candidate]:
        """With several chunks per rank, ``c`` cut two other ways, where they
        differ and fit: by the least stage bottleneck, and evenly (the seed's
        rule, Pipeline's default). The least largest rank total can pair a
        long and a short chunk on each rank, which the V orders (built for
        chunks of equal cost) run slowly (V-Min on 16 equal layers, P = 4,
        M = 8: 8 % slower than the even cut, tests/plan/test_vplan.py), and
        which chunk holds the wide layers moves the peak; the simulator picks."""
        if c.v < 2:
            return []
        n = sum(c.sizes) / len(c.sizes)
        cuts = [uniform_balance(self.prof.L, c.S)]
        try:
            cuts.append(balanced_partition(self.layer_times(n, any(c.checkpoint)), c.S))
        except ConveyorError:
            pass
        out = []
        for bal in cuts:
            if bal != c.balance and all(bal != x.balance for x in out):
                alt = self.variant(c, bal, c.checkpoint)
                if alt.fits:
                    out.append(alt)
        return out

    def fit(self, c: Candidate) -> Candidate:
        """Memory of the built candidate; when a rank is over the budget, shard
        the optimizer state over the replicas (dp > 1), then re-cut under the
        limit, then checkpoint the ranks over it, then all stages."""
        self.memory(c)
        if c.fits:
            return c
        if self.dp > 1 and not c.shard:  # free in the time model: kept from here on
            c = self.variant(c, c.balance, c.checkpoint, shard=True)
            if c.fits:
                return c
        best, S = c, c.S
        over = {r for r, b in enumerate(c.peak_bytes) if b > self.budget}
        for ck in ([False] * S, [c.placement[s] in over for s in range(S)], [True] * S):
            bal = self.solve(c, ck, constrained=True) or c.balance
            c2 = self.variant(c, bal, ck)
            if c2.fits:
                return c2
            if max(c2.peak_bytes) < max(best.peak_bytes):
                best = c2
        return best

    def improve(self, cand: Candidate, rounds: int = 2) -> Candidate:
        """Move one boundary by one layer at a time while the simulated step falls."""
        if cand.S > 16:
            return cand
        for _ in range(rounds):
            better = False
            for c in range(cand.S - 1):
                for d in (-1, 1):
                    bal = list(cand.balance)
                    bal[c] += d
                    bal[c + 1] -= d
                    if min(bal) < 1:
                        continue
                    trial = self.variant(cand, bal, cand.checkpoint)
                    if not trial.fits or trial.bound >= cand.step:
                        continue
                    self.time(trial)
                    if trial.fits and trial.step < cand.step * (1 - 1e-9):
                        cand, better = trial, True
            if not better:
                break
        return cand


def _pre(values) -> list[float]:
    out = [0.0]
    for x in values:
        out.append(out[-1] + x)
    return out


@renamed(batch="batch_size")
def search(profile: Profile, *, P: int, batch_size: int, memory: float | None = None,
           schedules: list[str] | None = None, microbatches: list[int] | None = None,
           chunks: tuple[int, ...] = (1, 2), refine: bool = True,
           cluster: dict | None = None) -> PlanResult:
    """The fastest plan for ``profile`` on P ranks, ``batch_size`` samples per
    step and ``memory`` bytes per rank (None: unlimited); ``cluster``: the
    CostModel fields of dp and nodes (each stage then all-reduces its
    gradients in the simulated step). Returns a PlanResult, fastest first.
    Raises PlanError when P, the batch size or M are invalid, when the budget
    is below what one layer alone needs, or when no candidate fits (naming
    the shortfall and the smallest budget that would fit).
    """
    batch = batch_size
    check_request(profile, P, batch, memory, microbatches)
    names = schedules or [n for n in schedule_names()]
    Ms = microbatches or default_microbatches(P, batch)
    srch = _Searcher(profile, P, batch, memory, refine, cluster)
    cands: list[Candidate] = []
    for name, opts in [(n, o) for n in names for o in budget_options(n, P)]:
        seen_S: set[int] = set()
        for v in chunks:
            probe = next((sc for M in Ms if (sc := build(name, P, M, v, opts)) is not None),
                         None)
            if probe is None or probe.S in seen_S or probe.S > profile.L:
                continue
            seen_S.add(probe.S)
            for M in ([1] if name == "naive" else Ms):  # naive ignores M
                c = Candidate(name, M, v, P, probe.S, probe.placement, probe.splits_backward,
                              [], [False] * probe.S, microbatch_sizes(batch, M),
                              options=dict(opts))
                c.balance = srch.solve(c, c.checkpoint, constrained=False)
                if c.balance is not None:
                    cands.append(srch.cost(c))
    if not cands:
        raise PlanError(f"no schedule among {names} builds for P={P}, M in {Ms} with "
                        f"{profile.L} layers; use fewer ranks or other micro-batch counts")
    cands = _build_and_time(srch, cands)
    if refine:
        top = [srch.improve(c) for c in cands[:3] if c.fits]
        cands = sorted(top + cands[len(top):], key=_rank)
    best = cands[0]
    if not best.fits:
        raise PlanError(over_budget(best, memory, P))
    srch.peaks(best)
    explain(cands, best, memory)
    return PlanResult(best, cands, memory, srch.peaks)


def _rank(c: Candidate):
    """Fitting and simulated by step; then those skipped by their bound; then
    those over budget, leanest first."""
    if c.fits and c.step < float("inf"):
        return (0, c.step)
    if c.fits is not False:  # never built, or built and fitting but never simulated
        return (1, c.bound)
    return (2, max(c.peak_bytes))


def _build_and_time(srch: _Searcher, cands: list[Candidate]) -> list[Candidate]:
    """From the smallest bound up: build the schedule, fit the memory, simulate.
    Once a bound reaches the best step found, the rest cannot win and are
    neither built nor simulated. Returns the candidates, best first."""
    best = float("inf")
    out = []
    for c in sorted(cands, key=lambda c: c.bound):
        if c.bound >= best:
            out.append(c)
            continue
        sched = build(c.name, c.P, c.M, c.chunks, c.options)
        if sched is None:
            continue
        c.schedule = sched
        if sched.S != c.S or tuple(sched.placement) != tuple(c.placement) \
                or sched.splits_backward != c.split:
            c.S, c.placement, c.checkpoint = sched.S, sched.placement, [False] * sched.S
            c.split = sched.splits_backward
            c.balance = srch.solve(c, c.checkpoint, constrained=False)
            if c.balance is None:
                continue
            srch.cost(c)
        c = srch.fit(c)
        if c.fits and c.bound < best:
            srch.time(c)
            for alt in srch.alternates(c):
                if srch.time(alt).step < c.step:
                    c = alt
            best = min(best, c.step)
        out.append(c)
    return sorted(out, key=_rank)
