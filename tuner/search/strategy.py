"""What a study measures next: a strategy proposes one config at a time, never one already measured,
being measured or queued.

- ``Exhaustive``: every config of the conditional space, once, in a fixed order. Chosen when the
  whole space (plus the baselines it cannot express) fits the budget (``--n-trials``), or with
  ``--sampler grid``: sampling a space you can afford to measure entirely only adds repeats.
- ``Sampled``: first a guided phase (``guided_proposal``): a line search along the diagonal of
  configs that fill the machine (how many cores per worker), then the neighbours of the best config
  so far (hill climbing, one dimension at a time) until none is left untaken; then an Optuna
  sampler (TPE by default) over the conditional space, proposing in a
  private in-memory study that holds a copy of every measured trial (throughput at the bound as
  its single objective). A proposal equal to a taken config is dropped there and the sampler asks
  again; after ``MAX_SAMPLER_RETRIES`` repeats in a row the untaken config nearest to the
  sampler's last wish is proposed instead. The study's own storage therefore only ever holds
  configs that are measured once.

- ``Screening``: wraps ``Sampled`` when the space is larger than the budget: what it proposes is
  measured short first (a screening trial, ``tuner/search/screening.py``); the top third of the
  screened configs that could still beat the best full result are promoted to a full measurement.
  The guided phase and the sampler learn from screened throughputs too (a full result, once there,
  takes precedence).

The baselines run first in all (the study enqueues them, at full fidelity); a strategy is asked only
when the queue is empty. ``None`` from ``propose`` means the space is exhausted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

import optuna

from tuner.machine.placement import NEIGHBOUR_ORDER, Params
from tuner.search import screening
from tuner.search.space import INT_DIMS, ORDER, SearchSpace

MAX_SAMPLER_RETRIES = 5  # asks per proposal: in simulated studies 20 asks almost always ended in the
# nearest fallback anyway (TPE repeats itself once it has converged), at ~10 ms an ask
SAMPLER_STARTUP_TRIALS = 5
_TAKEN = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)


@dataclass(frozen=True)
class Proposal:
    """One config to measure: the values its trial suggests (for ``enqueue_trial``), its Params,
    what proposed it, and how (``screening.FULL`` or ``screening.SCREEN``)."""

    values: dict
    params: Params
    source: str
    fidelity: str = screening.FULL


def trial_label(t: optuna.trial.FrozenTrial, space: SearchSpace) -> str | None:
    """The config label a trial has (or will have, for a queued one)."""
    if "label" in t.user_attrs:
        return t.user_attrs["label"]
    if "params" in t.user_attrs:
        return Params.from_dict(t.user_attrs["params"]).label()
    fixed = t.system_attrs.get("fixed_params")
    if fixed is not None:
        params = _from_values(space, fixed)
        return params.label() if params is not None else None
    return None


def taken_labels(trials: Iterable[optuna.trial.FrozenTrial], space: SearchSpace) -> set[str]:
    """Configs measured, screened, being measured or queued (a failed trial's config may be tried
    again)."""
    out = set()
    for t in trials:
        if (t.state in _TAKEN or screening.is_screened(t)) and "repeat_of" not in t.user_attrs:
            label = trial_label(t, space)
            if label is not None:
                out.add(label)
    return out


def _from_values(space: SearchSpace, values: dict) -> Params | None:
    try:
        return Params(**space.walk(lambda dim, opts: values[dim] if values.get(dim) in opts else opts[0])[0])
    except Exception:
        return None


class Exhaustive:
    """Every config of the space once, in the space's order."""

    name = "exhaustive"

    def __init__(self, space: SearchSpace):
        self.space = space
        self._configs = list(space.configurations())

    def propose(self, trials: list[optuna.trial.FrozenTrial]) -> Proposal | None:
        taken = taken_labels(trials, self.space)
        for values, params in self._configs:
            if params.label() not in taken:
                return Proposal(values, params, self.name)
        return None


def scratch_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    """The sampler a ``Sampled`` strategy proposes with (single objective: throughput at the bound)."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                          n_startup_trials=SAMPLER_STARTUP_TRIALS)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"no sampled strategy for sampler {name!r}")


class Sampled:
    """An Optuna sampler over the conditional space, without repeats (see the module docstring).
    ``space`` may be any define-by-run space whose ``suggest(trial)`` gives a config with a
    ``label()`` (a deployment's: tuner.mix.study.DeploymentSubject); the guided phase and the
    nearest-untaken fallback need a single model's ``SearchSpace``, and without them a space
    whose sampler only repeats itself is exhausted."""

    def __init__(self, space, sampler: str = "tpe", seed: int | None = None):
        self.space = space
        self.name = sampler
        self._scratch = optuna.create_study(direction="maximize", sampler=scratch_sampler(sampler, seed))
        self._copied: set[tuple] = set()
        self._configs: list[tuple[dict, Params, dict]] | None = None

    def _sync(self, trials: list[optuna.trial.FrozenTrial]) -> None:
        """Copy measured and screened trials (by anyone, baselines included) into the private study
        (a promoted config is in it twice: screened, then measured)."""
        for t in trials:
            key = (t.number, t.datetime_start)
            if key in self._copied or "repeat_of" in t.user_attrs:
                continue
            if t.state == optuna.trial.TrialState.COMPLETE and t.values and "result" in t.user_attrs:
                value = float(t.values[0])
            elif screening.is_screened(t):
                value = screening.screen_value(t)
            else:
                continue
            self._copied.add(key)
            self._scratch.add_trial(optuna.trial.create_trial(
                params=dict(t.params), distributions=dict(t.distributions), value=value))

    def propose(self, trials: list[optuna.trial.FrozenTrial]) -> Proposal | None:
        self._sync(trials)
        single = isinstance(self.space, SearchSpace)
        taken = taken_labels(trials, self.space)
        guided = guided_proposal(self.space, trials, taken) if single else None
        if guided is not None:
            return guided
        wish = None
        for _ in range(MAX_SAMPLER_RETRIES):
            trial = self._scratch.ask()
            wish = self.space.suggest(trial)
            self._scratch.tell(trial, state=optuna.trial.TrialState.FAIL)  # its result arrives via _sync
            if wish.label() not in taken:
                return Proposal(self.space.express(wish) or dict(trial.params), wish, self.name)
        return self._nearest_untaken(wish, taken) if single else None

    def _nearest_untaken(self, wish: Params, taken: set[str]) -> Proposal | None:
        if self._configs is None:  # each config's values once: a study asks this often
            self._configs = [(v, p, p.to_dict()) for v, p in self.space.configurations()]
        fresh = [c for c in self._configs if c[1].label() not in taken]
        if not fresh:
            return None
        wanted = wish.to_dict()
        values, params, _ = min(fresh, key=lambda c: dict_distance(wanted, c[2]))
        return Proposal(values, params, f"{self.name}+nearest")


def _measured(trials: list[optuna.trial.FrozenTrial]) -> list[tuple[float, Params]]:
    """(throughput at the bound, config) of each measured or screened config; a full result
    replaces its config's screened one."""
    full: dict[str, tuple[float, Params]] = {}
    screened: dict[str, tuple[float, Params]] = {}
    for t in trials:
        result = t.user_attrs.get("result")
        if t.state == optuna.trial.TrialState.COMPLETE and result and "repeat_of" not in t.user_attrs:
            params = Params.from_dict(result["params"])
            full[params.label()] = (result["throughput"] if result["feasible"] else 0.0, params)
        elif screening.is_screened(t):
            params = Params.from_dict(t.user_attrs["screen_result"]["params"])
            screened[params.label()] = (screening.screen_value(t), params)
    return list({**screened, **full}.values())


def _in_space(space: SearchSpace, values: dict) -> Params | None:
    try:
        params = Params(**values)
    except Exception:
        return None
    return params if space.express(params) is not None else None


def diagonal(space: SearchSpace) -> list[Params]:
    """The configs that fill the machine: for each cores-per-worker choice, as many workers as fit,
    one intra-op thread per core (the most it can have up to that), no SMT, spinning, sequential."""
    base = {"io_cores": space.options("io_cores", {})[0], "smt": False, "execution_mode": "sequential",
            "inter_op_threads": 1, "spinning": True, "max_batch": min(space.choices["max_batch"])}
    base["batch_timeout_ms"] = min(space.options("batch_timeout_ms", base))
    policies = space.choices["numa_policy"]
    base["numa_policy"] = "bind" if "bind" in policies else policies[0]
    out = []
    for cores in space.choices["cores_per_worker"]:
        workers = [w for w in space.options("workers", base)
                   if cores in space.options("cores_per_worker", {**base, "workers": w})]
        if not workers:
            continue
        values = {**base, "workers": max(workers), "cores_per_worker": cores}
        intra = space.options("intra_op_threads", values)
        values["intra_op_threads"] = max(t for t in intra if t <= cores) if min(intra) <= cores else min(intra)
        params = _in_space(space, values)
        if params is not None:
            out.append(params)
    return out


def neighbours(space: SearchSpace, params: Params) -> list[Params]:
    """Configs one step away: another choice of one dimension (the next integer choice up or down;
    intra-op threads follow a change of cores per worker; the batch timeout is the next choice up or
    down, and a batch size that starts batching starts with the shortest timeout)."""
    d = params.to_dict()
    out = []
    for dim in NEIGHBOUR_ORDER:  # how the CPUs are used first, then how requests are batched (Params)
        choices = space.choices[dim]
        if dim in INT_DIMS or dim == "batch_timeout_ms":
            i = choices.index(d[dim]) if d[dim] in choices else None
            others = [] if i is None else [choices[j] for j in (i - 1, i + 1) if 0 <= j < len(choices)]
        else:
            others = [c for c in choices if c != d[dim]]
        for value in others:
            candidate = {**d, dim: value}
            if dim == "cores_per_worker":
                candidate["intra_op_threads"] = max(1, round(d["intra_op_threads"] * value / d[dim]))
            if dim == "max_batch":
                candidate["batch_timeout_ms"] = (0.0 if value == 1 else d["batch_timeout_ms"] if d[dim] > 1
                                                 else min(space.choices["batch_timeout_ms"]))
            variants = [candidate]
            if dim == "smt" and space.shape is not None:  # SMT on: a thread on each sibling too (first)
                per_core = space.shape.pus_per_core
                threads = d["intra_op_threads"] * per_core if value else d["intra_op_threads"] // per_core
                variants.insert(0, {**candidate, "intra_op_threads": max(1, threads)})
            for variant in variants:
                params_ = _in_space(space, {k: variant[k] for k in ORDER})
                if params_ is not None and params_ not in out:
                    out.append(params_)
    return out


def guided_proposal(space: SearchSpace, trials: list[optuna.trial.FrozenTrial], taken: set[str]) -> Proposal | None:
    """Before the sampler: a line search along the diagonal (how many cores per worker, filling
    the machine), from its best measured point to its untaken neighbours up to two steps away
    (a cores-per-worker size that leaves cores idle can hide a better one beyond); then the untaken
    neighbours of the best config measured so far. None once both are exhausted."""
    measured = _measured(trials)
    by_label = {p.label(): thr for thr, p in measured}
    line = diagonal(space)
    if line:
        scored = [(by_label[p.label()], i) for i, p in enumerate(line) if p.label() in by_label]
        start = max(scored)[1] if scored else len(line) // 2
        for i in (start, start - 1, start + 1, start - 2, start + 2):  # 2 steps: idle cores make it bumpy
            if 0 <= i < len(line) and line[i].label() not in taken:
                return Proposal(space.express(line[i]), line[i], "diagonal")
    if measured:
        best = max(measured, key=lambda tp: tp[0])[1]
        for params in neighbours(space, best):
            if params.label() not in taken:
                return Proposal(space.express(params), params, "neighbour")
    return None


def distance(a: Params, b: Params) -> float:
    """How far apart two configs are: octaves for integer dimensions, 1 per differing choice."""
    return dict_distance(a.to_dict(), b.to_dict())


def dict_distance(da: dict, db: dict) -> float:
    """``distance`` of two configs' values (every dimension of ``ORDER`` in both)."""
    total = 0.0
    for dim in ORDER:
        x, y = da[dim], db[dim]
        if dim in INT_DIMS or dim == "batch_timeout_ms":  # octaves of (1 + ms) for the timeout
            total += abs(math.log2(x + 1) - math.log2(y + 1))
        elif x != y:
            total += 1.0
    return total


class Screening:
    """Screen what ``inner`` proposes, promote the promising screened configs to a full
    measurement (``screening.promotion``: ASHA's top ``1/eta`` that could beat the best full result)."""

    def __init__(self, inner: Sampled, eta: int = screening.ETA, margin: float = screening.PROMOTE_MARGIN,
                 screen_cost: float = screening.SCREEN_COST):
        self.inner = inner
        self.name = f"{inner.name}+screening"
        self.eta, self.margin, self.screen_cost = eta, margin, screen_cost

    def propose(self, trials: list[optuna.trial.FrozenTrial]) -> Proposal | None:
        screened, promoted, best_full = screening.rung(trials)
        label = screening.promotion([(lb, screening.screen_value(t)) for lb, t in screened.items()], promoted,
                                    best_full, self.eta, self.margin)
        if label is not None:
            t = screened[label]
            return Proposal(dict(t.params), Params.from_dict(t.user_attrs["screen_result"]["params"]),
                            "promotion", screening.FULL)
        proposal = self.inner.propose(trials)
        return replace(proposal, fidelity=screening.SCREEN) if proposal is not None else None


def choose_strategy(space: SearchSpace, sampler: str, seed: int | None, n_trials: int | None,
                    extra_baselines: int = 0, screen: bool = True):
    """Exhaustive when the whole space plus the ``extra_baselines`` it cannot express fit in
    ``n_trials`` measured configs (or ``sampler == "grid"``); else the sampler, without repeats,
    behind screening when ``screen`` and the budget is at least ``screening.SCREENING_MIN_TRIALS``
    (or unbounded): a space that cannot be measured in full is where cheap measurements pay."""
    if sampler == "grid" or (n_trials is not None and space.size() + extra_baselines <= n_trials):
        return Exhaustive(space)
    sampled = Sampled(space, sampler, seed)
    if screen and (n_trials is None or n_trials >= screening.SCREENING_MIN_TRIALS):
        return Screening(sampled)
    return sampled
