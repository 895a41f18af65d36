"""Search spaces: YAML files resolved against a topology into a conditional (define-by-run) space.

The YAML gives each dimension's outer choices; the topology turns them into conditional bounds,
decided in ``ORDER`` (each dimension's choices depend on the ones before it):

- ``io_cores``: leaves at least one worker core (and room for every NUMA policy of the space);
- ``numa_policy``: only on a machine with several usable nodes;
- ``workers``: only counts that some ``cores_per_worker`` choice can place;
- ``cores_per_worker``: bounded by the cores left for that worker count after the io cores; with
  ``bind``, only sizes the planner can keep inside one node each (or that span nodes);
- ``smt``: only on a machine with SMT;
- ``intra_op_threads``: bounded by the worker's PUs (cores, times the threads per core with SMT);
- ``execution_mode``; ``inter_op_threads`` only in parallel mode, bounded by the worker's PUs;
- ``spinning`` only when something can spin (more than one intra-op thread, or parallel mode);
- ``max_batch`` (requests per ``session.run``); ``batch_timeout_ms`` only when ``max_batch`` > 1. A model
  that cannot batch has both collapsed (``SearchSpace.without_batching``, with a note saying why).

So every proposal is plannable (``plan`` never raises ``Infeasible``). With Optuna, integer
dimensions are ``suggest_int`` over the conditional range (rounded to the nearest allowed choice),
the others ``suggest_categorical`` over the space's fixed choices; a dimension with one choice in
a branch is not suggested in it (``suggest``).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import yaml

from tuner.errors import Infeasible, UsageError
from tuner.machine.placement import (
    EXECUTION_MODES,
    INT_SEARCHED,
    NUMA_POLICIES,
    SEARCH_ORDER,
    SEARCHED,
    Params,
    plan,
)
from tuner.machine.topology import Topology

# The YAML spaces ship inside the package (package data), so an installed wheel finds them; the
# top-level ``search_spaces/`` of a checkout is a link to this folder.
SPACES_DIR = Path(__file__).resolve().parents[1] / "search_spaces"
DIMENSIONS = SEARCHED  # derived from Params' field metadata (tuner.machine.placement)
ORDER = SEARCH_ORDER
INT_DIMS = INT_SEARCHED
BATCH_DIMS = ("max_batch", "batch_timeout_ms")
MAX_BATCH_AUTO = 32  # ``max_batch: {max: auto}``
_DENSE_INT_CHOICES = 16  # up to this many integers: every one; beyond: 1, 2, 3, 4, 6, 8, 12, 16, ...

Chooser = Callable[[str, tuple], object]


@dataclass(frozen=True)
class Shape:
    """What the conditional bounds need from the topology: each usable core's node, in the
    planner's order, and the most usable PUs one core has."""

    core_nodes: tuple[int, ...]
    pus_per_core: int

    @classmethod
    def of(cls, topology: Topology) -> Shape:
        cores = topology.cores()
        return cls(tuple(-1 if c.node is None else c.node for c in cores), max((len(c.cpus) for c in cores), default=1))

    def plannable(self, io_cores: int, policy: str, workers: int, cores_per_worker: int) -> bool:
        """The planner's feasibility rules (tuner/machine/placement.py ``plan``), without planning."""
        n = len(self.core_nodes)
        if io_cores >= n or workers * cores_per_worker > n - io_cores:
            return False
        if policy != "bind":
            return True
        per_node = _free_per_node(self, io_cores)
        largest_node = max(Counter(self.core_nodes).values())  # io cores included, as the planner judges it
        return cores_per_worker > largest_node or sum(v // cores_per_worker for v in per_node) >= workers


@lru_cache(maxsize=256)
def _free_per_node(shape: Shape, io_cores: int) -> tuple[int, ...]:
    """Free cores per node once the io cores (the last ones in planning order) are taken."""
    return tuple(Counter(shape.core_nodes[: len(shape.core_nodes) - io_cores]).values())


@dataclass(frozen=True)
class SearchSpace:
    name: str
    choices: dict[str, tuple]  # dimension -> outer choices (length 1 = fixed)
    shape: Shape | None = None
    log_dims: frozenset = field(default_factory=frozenset)  # integer dimensions suggested on a log scale
    notes: tuple[str, ...] = ()  # what was collapsed and why (e.g. batching, for a model that cannot batch)

    @property
    def batching(self) -> bool:
        """Whether some config of the space runs batches of more than one request."""
        return max(self.choices["max_batch"]) > 1

    def without_batching(self, reason: str) -> SearchSpace:
        """This space with ``max_batch`` 1 only (and no batch timeout), ``reason`` in its notes."""
        if not self.batching:
            return self
        return replace(self, choices={**self.choices, "max_batch": (1,), "batch_timeout_ms": (0.0,)},
                       notes=(*self.notes, f"batching disabled: {reason}"))

    @property
    def varying(self) -> dict[str, tuple]:
        return {k: v for k, v in self.choices.items() if len(v) > 1}

    @property
    def fixed(self) -> dict[str, object]:
        return {k: v[0] for k, v in self.choices.items() if len(v) == 1}

    # ---- the conditional space ------------------------------------------------------------------
    def options(self, dim: str, chosen: dict) -> tuple:
        """The choices of ``dim`` given the dimensions before it in ``ORDER`` (``chosen``)."""
        c = self.choices
        if self.shape is None:
            return c[dim]
        fits = self.shape.plannable
        if dim == "io_cores":
            return tuple(io for io in c[dim] if all(
                any(fits(io, p, w, k) for w in c["workers"] for k in c["cores_per_worker"])
                for p in c["numa_policy"]))
        if dim == "numa_policy":
            return c[dim]
        if dim == "workers":
            io, policy = chosen["io_cores"], chosen["numa_policy"]
            return tuple(w for w in c[dim] if any(fits(io, policy, w, k) for k in c["cores_per_worker"]))
        if dim == "cores_per_worker":
            io, policy = chosen["io_cores"], chosen["numa_policy"]
            return tuple(k for k in c[dim] if fits(io, policy, chosen["workers"], k))
        pus = chosen.get("cores_per_worker", 1) * (self.shape.pus_per_core if chosen.get("smt") else 1)
        if dim in ("intra_op_threads", "inter_op_threads"):
            if dim == "inter_op_threads" and chosen["execution_mode"] != "parallel":
                return (1,)
            return tuple(t for t in c[dim] if t <= pus) or (min(c[dim]),)
        if dim == "spinning" and chosen["intra_op_threads"] <= 1 and chosen["execution_mode"] != "parallel":
            return (True,)  # one intra-op thread and no inter-op pool: nothing spins
        if dim == "batch_timeout_ms" and chosen["max_batch"] == 1:
            return (0.0,)  # one request at a time: a worker never waits for a second
        return c[dim]

    def walk(self, choose: Chooser) -> tuple[dict, dict]:
        """One config, dimension by dimension: ``choose(dim, options)`` picks each dimension that
        has more than one option in its branch. Returns (all values, the chosen ones)."""
        values: dict = {}
        chosen: dict = {}
        for dim in ORDER:
            opts = self.options(dim, values)
            if not opts:
                raise Infeasible(f"no {dim} fits {values} in space {self.name}")
            if len(opts) == 1:
                values[dim] = opts[0]
            else:
                values[dim] = chosen[dim] = choose(dim, opts)
        return values, chosen

    def suggest(self, trial, prefix: str = "") -> Params:
        """Define-by-run: ask an Optuna trial for one config of this space (always plannable); each
        parameter's name is ``prefix`` + the dimension (a deployment's model: ``ranker.workers``)."""

        def choose(dim: str, opts: tuple):
            if dim not in INT_DIMS:
                return trial.suggest_categorical(prefix + dim, list(self.choices[dim]))
            raw = trial.suggest_int(prefix + dim, opts[0], opts[-1], log=dim in self.log_dims)
            return _nearest(raw, opts, dim in self.log_dims)

        return Params(**self.walk(choose)[0])

    def configurations(self) -> Iterator[tuple[dict, Params]]:
        """Every config of the conditional space, as (the values a trial suggests, Params), in a
        fixed order."""

        def visit(i: int, values: dict, chosen: dict):
            if i == len(ORDER):
                yield dict(chosen), Params(**values)
                return
            dim = ORDER[i]
            opts = self.options(dim, values)
            for v in opts:
                more = {dim: v} if len(opts) > 1 else {}
                yield from visit(i + 1, {**values, dim: v}, {**chosen, **more})

        yield from visit(0, {}, {})

    def size(self) -> int:
        """How many configs the conditional space holds (all of them plannable)."""
        return _count(self)

    def express(self, params: Params) -> dict | None:
        """The values a trial suggests to give ``params`` in this space, or None when the space
        cannot express it (an unpinned or ORT-default-threads baseline, another fixed value)."""
        if not params.pin or params.graph_optimization != Params().graph_optimization:
            return None
        wanted = params.to_dict()

        def choose(dim: str, opts: tuple):
            if wanted[dim] not in opts:
                raise LookupError(dim)
            return wanted[dim]

        try:
            values, chosen = self.walk(choose)
        except (LookupError, Infeasible):
            return None
        return chosen if Params(**values) == params else None

    # ---- the outer (static) product, kept for the YAML view and old callers ----------------------
    def combinations(self):
        """Every combination of the outer choices of the varying dimensions (plannable or not)."""
        keys = list(self.varying)
        for values in itertools.product(*(self.varying[k] for k in keys)):
            yield dict(zip(keys, values, strict=True))

    def params(self, values: dict) -> Params:
        merged = {**self.fixed, **values}
        if merged.get("execution_mode") != "parallel":
            merged["inter_op_threads"] = 1  # the inter-op pool exists only in parallel mode
            if merged.get("intra_op_threads", 1) <= 1:
                merged["spinning"] = True  # one intra-op thread and no inter-op pool: nothing spins
        if merged.get("max_batch", 1) == 1:
            merged["batch_timeout_ms"] = 0.0  # one request at a time: nothing to wait for
        return Params(**merged)


_sizes: dict[int, int] = {}


def _count(space: SearchSpace) -> int:
    key = hash((space.name, tuple(space.choices.items()), space.shape))
    if key not in _sizes:
        _sizes[key] = sum(1 for _ in space.configurations())
    return _sizes[key]


def _nearest(value: int, opts: tuple, log: bool) -> int:
    """The allowed choice closest to a sampled integer (on a log scale for log dimensions)."""
    def distance(o: int) -> float:
        return abs(math.log(o) - math.log(value)) if log and o > 0 and value > 0 else abs(o - value)

    return min(opts, key=lambda o: (distance(o), o))


def load_space(name_or_path: str, topology: Topology) -> SearchSpace:
    """Load ``search_spaces/NAME.yaml`` (or a path) and resolve it against ``topology``."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SPACES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SPACES_DIR.glob("*.yaml")))
        raise UsageError(f"search space {name_or_path!r} not found; use one of {known} or a YAML path")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UsageError(f"search space {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("dimensions"), dict):
        raise UsageError(f"search space {path} needs a 'dimensions:' mapping (see search_spaces/default.yaml)")
    return resolve(data.get("name", path.stem), data["dimensions"], topology, str(path))


def resolve(name: str, dims: dict, topology: Topology, where: str = "search space") -> SearchSpace:
    """The YAML's dimensions resolved against ``topology``: ``auto`` bounds, what the machine cannot
    vary collapsed, and the conditional bounds of ``SearchSpace.options``."""
    unknown = set(dims) - set(DIMENSIONS)
    if unknown:
        raise UsageError(f"{where}: unknown dimension(s) {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(DIMENSIONS)}")
    cores = len(topology.cores())
    pus = len(topology.usable_cpus)
    auto = {"workers": cores, "cores_per_worker": cores, "intra_op_threads": pus,
            "inter_op_threads": pus, "io_cores": max(0, cores - 1), "max_batch": MAX_BATCH_AUTO}
    defaults = {dim: [value] for dim, value in Params().to_dict().items() if dim in DIMENSIONS}  # Params' own
    choices: dict[str, tuple] = {}
    log_dims = set()
    for dim in DIMENSIONS:
        spec = dims.get(dim, defaults[dim])
        if isinstance(spec, dict) and dim in INT_DIMS:
            try:
                lo = int(spec.get("min", 1))
                hi_raw = spec.get("max", "auto")
                hi = auto[dim] if hi_raw == "auto" else int(hi_raw)
            except (TypeError, ValueError, KeyError):
                raise UsageError(f"{where}: {dim} bounds must be integers or 'auto', got {spec}") from None
            hi = min(hi, auto[dim]) if dim not in ("intra_op_threads", "max_batch") else hi
            hi = max(hi, lo)
            values = _spread(lo, hi, _landmarks(topology))
        elif isinstance(spec, list) and spec:
            values = list(spec)
        else:
            form = "a non-empty list or {min, max}" if dim in INT_DIMS else "a non-empty list"
            raise UsageError(f"{where}: {dim} must be {form}, got {spec!r}")
        _validate(dim, values, where)
        ordered = dim in INT_DIMS or dim == "batch_timeout_ms"
        choices[dim] = tuple(sorted(dict.fromkeys(values))) if ordered else tuple(dict.fromkeys(values))
        if dim in INT_DIMS and min(values) >= 1 and max(values) > _DENSE_INT_CHOICES:
            log_dims.add(dim)
    # collapse what this machine cannot vary
    if not topology.smt:
        choices["smt"] = (False,)
    if len(topology.usable_nodes) <= 1:
        choices["numa_policy"] = ("none",)
    if choices["execution_mode"] == ("sequential",):
        choices["inter_op_threads"] = (1,)
    if choices["max_batch"] == (1,):
        choices["batch_timeout_ms"] = (0.0,)  # nobody waits for a second request
    space = SearchSpace(name, choices, Shape.of(topology), frozenset(log_dims))
    if not space.options("io_cores", {}):
        raise UsageError(f"{where}: no combination of this space can be planned on this topology")
    return space


def _landmarks(topology: Topology) -> set[int]:
    """Counts the machine makes natural: divisors of the core count, a half, third and quarter of
    it, the number of NUMA nodes and the cores of each (what the baselines use)."""
    cores = topology.cores()
    n = len(cores)
    per_node = Counter(c.node for c in cores).values()
    return ({d for d in range(1, n + 1) if n % d == 0} | {n // k for k in (1, 2, 3, 4)}
            | {len(topology.usable_nodes)} | set(per_node)) - {0}


def _spread(lo: int, hi: int, landmarks: set[int] = frozenset()) -> list[int]:
    """All integers lo..hi when few, else lo, hi, the 1-2-3 ladder (1, 2, 3, 4, 6, 8, 12, ...)
    between them, so that powers of two and their halves are always choices, and the machine's
    ``landmarks`` in range."""
    if hi - lo + 1 <= _DENSE_INT_CHOICES:
        return list(range(lo, hi + 1))
    ladder = {lo, hi} | {v for v in landmarks if lo <= v <= hi}
    power = 1
    while power <= hi:
        ladder.update(v for v in (power, 3 * power // 2) if lo <= v <= hi)
        power *= 2
    return sorted(ladder)


def _validate(dim: str, values: list, where: str) -> None:
    if dim == "batch_timeout_ms":
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < math.inf:
                raise UsageError(f"{where}: batch_timeout_ms value {v!r} must be a number of milliseconds >= 0")
        return
    allowed = {"smt": (True, False), "spinning": (True, False), "numa_policy": NUMA_POLICIES,
               "execution_mode": EXECUTION_MODES}.get(dim)
    for v in values:
        if allowed is not None and v not in allowed:
            raise UsageError(f"{where}: {dim} value {v!r} is not one of {', '.join(map(str, allowed))}")
        if allowed is None and (not isinstance(v, int) or isinstance(v, bool) or v < (0 if dim == "io_cores" else 1)):
            raise UsageError(f"{where}: {dim} value {v!r} must be a positive integer")


def check(space: SearchSpace, topology: Topology, values: dict) -> str | None:
    """None when the planner accepts these (outer-space) values, else the planner's reason."""
    try:
        plan(topology, space.params(values))
    except (Infeasible, UsageError) as exc:
        return str(exc)
    return None
