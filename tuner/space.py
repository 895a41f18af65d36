"""Search spaces: YAML files resolved against a topology into fixed, finite choices.

Every dimension becomes a categorical list of choices that depends only on the topology, never
on other parameters, so Optuna's distributions are the same in every trial (no dynamic-range
pitfall). Combinations the planner rejects are detected before any measurement (``check``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from tuner.errors import Infeasible, UsageError
from tuner.placement import EXECUTION_MODES, NUMA_POLICIES, Params, plan
from tuner.topology import Topology

SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"
DIMENSIONS = ("workers", "cores_per_worker", "smt", "intra_op_threads", "inter_op_threads",
              "execution_mode", "numa_policy", "spinning", "io_cores")
_MAX_INT_CHOICES = 12


@dataclass(frozen=True)
class SearchSpace:
    name: str
    choices: dict[str, tuple]  # dimension -> choices (length 1 = fixed)

    @property
    def varying(self) -> dict[str, tuple]:
        return {k: v for k, v in self.choices.items() if len(v) > 1}

    @property
    def fixed(self) -> dict[str, object]:
        return {k: v[0] for k, v in self.choices.items() if len(v) == 1}

    def size(self) -> int:
        n = 1
        for v in self.choices.values():
            n *= len(v)
        return n

    def express(self, params: Params) -> dict | None:
        """The varying dimensions' values that give ``params`` in this space, or None when the
        space cannot express it (an unpinned or ORT-default-threads baseline, another fixed value)."""
        d = params.to_dict()
        values = {}
        for dim, choices in self.choices.items():
            if d.get(dim) not in choices:
                return None
            if len(choices) > 1:
                values[dim] = d[dim]
        try:
            return values if self.params(values) == params else None
        except Exception:
            return None

    def combinations(self):
        """Every combination of the varying dimensions, in a fixed order."""
        import itertools

        keys = list(self.varying)
        for values in itertools.product(*(self.varying[k] for k in keys)):
            yield dict(zip(keys, values, strict=True))

    def params(self, values: dict) -> Params:
        merged = {**self.fixed, **values}
        if merged.get("execution_mode") != "parallel":
            merged["inter_op_threads"] = 1  # the inter-op pool exists only in parallel mode
            if merged.get("intra_op_threads", 1) <= 1:
                merged["spinning"] = True  # one intra-op thread and no inter-op pool: nothing spins
        return Params(**merged)


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
    unknown = set(dims) - set(DIMENSIONS)
    if unknown:
        raise UsageError(f"{where}: unknown dimension(s) {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(DIMENSIONS)}")
    cores = len(topology.cores())
    pus = len(topology.usable_cpus)
    auto = {"workers": cores, "cores_per_worker": cores, "intra_op_threads": pus,
            "inter_op_threads": pus, "io_cores": max(0, cores - 1)}
    defaults = {"workers": [1], "cores_per_worker": [1], "smt": [False], "intra_op_threads": [1],
                "inter_op_threads": [1], "execution_mode": ["sequential"], "numa_policy": ["none"],
                "spinning": [True], "io_cores": [0]}
    choices: dict[str, tuple] = {}
    for dim in DIMENSIONS:
        spec = dims.get(dim, defaults[dim])
        if isinstance(spec, dict):
            try:
                lo = int(spec.get("min", 1))
                hi_raw = spec.get("max", "auto")
                hi = auto[dim] if hi_raw == "auto" else int(hi_raw)
            except (TypeError, ValueError, KeyError):
                raise UsageError(f"{where}: {dim} bounds must be integers or 'auto', got {spec}") from None
            hi = min(hi, auto[dim]) if dim != "intra_op_threads" else hi
            if hi < lo:
                hi = lo
            values = _spread(lo, hi)
        elif isinstance(spec, list) and spec:
            values = list(spec)
        else:
            raise UsageError(f"{where}: {dim} must be a non-empty list or {{min, max}}, got {spec!r}")
        _validate(dim, values, where)
        choices[dim] = tuple(dict.fromkeys(values))
    # collapse what this machine cannot vary
    if not topology.smt:
        choices["smt"] = (False,)
    if len(topology.usable_nodes) <= 1:
        choices["numa_policy"] = ("none",)
    if choices["execution_mode"] == ("sequential",):
        choices["inter_op_threads"] = (1,)
    space = SearchSpace(name, choices)
    if not any(_plannable(space, topology, w) for w in choices["workers"]):
        raise UsageError(f"{where}: no combination of this space can be planned on this topology")
    return space


def _spread(lo: int, hi: int) -> list[int]:
    """All integers lo..hi when few, else a geometric ladder that keeps both ends."""
    if hi - lo + 1 <= _MAX_INT_CHOICES:
        return list(range(lo, hi + 1))
    values = {lo, hi}
    v = float(lo)
    ratio = (hi / lo) ** (1 / (_MAX_INT_CHOICES - 1))
    while v < hi:
        values.add(int(round(v)))
        v *= ratio
    return sorted(values)


def _validate(dim: str, values: list, where: str) -> None:
    allowed = {"smt": (True, False), "spinning": (True, False), "numa_policy": NUMA_POLICIES,
               "execution_mode": EXECUTION_MODES}.get(dim)
    for v in values:
        if allowed is not None and v not in allowed:
            raise UsageError(f"{where}: {dim} value {v!r} is not one of {', '.join(map(str, allowed))}")
        if allowed is None and (not isinstance(v, int) or isinstance(v, bool) or v < (0 if dim == "io_cores" else 1)):
            raise UsageError(f"{where}: {dim} value {v!r} must be a positive integer")


def _plannable(space: SearchSpace, topology: Topology, workers: int) -> bool:
    try:
        plan(topology, space.params({"workers": workers, "cores_per_worker": space.choices["cores_per_worker"][0],
                                     "io_cores": space.choices["io_cores"][0]}))
        return True
    except (Infeasible, UsageError):
        return False


def check(space: SearchSpace, topology: Topology, values: dict) -> str | None:
    """None when the planner accepts these values, else the planner's reason."""
    try:
        plan(topology, space.params(values))
    except (Infeasible, UsageError) as exc:
        return str(exc)
    return None
