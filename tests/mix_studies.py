"""Deployment studies without processes: a study opened as ``optimize --deployment`` opens it
(tuner.mix.study.open_mix_study), with trials whose results are planned on a fixture machine and
whose figures the test chooses. For the logic of reading deployment studies (race, document,
Pareto view) and for the import checks; real measurements are in tests/test_mix.py."""

from __future__ import annotations

import optuna

from tests.conftest import fixture_dirs, fixture_topology
from tuner.bench import stats
from tuner.bench.measure import MeasureSettings
from tuner.bench.model import ModelInfo
from tuner.machine.placement import Params
from tuner.machine.topology import Topology
from tuner.mix.deployment import Deployment, parse_deployment
from tuner.mix.division import division_choices, even_split, ort_defaults, plans
from tuner.mix.study import MixStudyConfig, open_mix_study
from tuner.results.mixrecords import MixConfig, MixResult, ModelFigures
from tuner.results.records import Interference, MachineInfo

SHARES = {"detector": 2.0, "ranker": 1.0}
BOUNDS_MS = {"detector": 50.0, "ranker": 100.0}
MACHINE = MachineInfo("fixture", "fixture CPU", "6.1", "3.12", "1.20.0", 16)


def sixteen_cores() -> Topology:
    """The 16-core, 8-node fixture machine."""
    return fixture_topology(next(p for p in fixture_dirs() if p.name.startswith("16amd64-8n2c")))


def deployment() -> Deployment:
    return parse_deployment({"models": [{"name": n, "model": f"{n}.onnx", "p99": f"{BOUNDS_MS[n]:g}ms",
                                         "share": SHARES[n]} for n in SHARES]}, "mix.yaml")


def searched_config(topology: Topology, division: str = "10+6", workers: int = 2) -> MixConfig:
    """A config the sampler could propose: ``division``, each model ``workers`` workers on its part."""
    parts = dict(zip(SHARES, division_choices(topology, deployment())[division], strict=True))
    params = {n: Params(workers=workers, cores_per_worker=len(cpus) // workers, intra_op_threads=len(cpus) // workers)
              for n, cpus in parts.items()}
    return MixConfig(division, parts, params)


def mix_result(topology: Topology, config: MixConfig, load_factor: float, p99_ratio: float = 0.5,
               verdict: str = stats.PASS) -> MixResult:
    """A result of ``config``: every model at ``load_factor`` x its share, its P99 at ``p99_ratio``
    of its bound."""
    models = {}
    for name, the_plan in plans(topology, config).items():
        rate, p99 = load_factor * SHARES[name], BOUNDS_MS[name] * p99_ratio
        models[name] = ModelFigures(
            throughput=rate, offered_rate=rate, p50_ms=p99 / 3, p90_ms=p99 / 2, p99_ms=p99,
            p99_ci_ms=(p99 * 0.9, p99 * 1.1), p99_bound_ms=BOUNDS_MS[name], verdict=verdict, capacity=rate * 1.2,
            unloaded_p99_ms=p99 / 2, cpu_util=1.0, interference=Interference(steal_pct=0.0, foreign_cpu=0.0),
            placement=(), plan=the_plan)
    return MixResult(config, config.label(), load_factor, (load_factor, load_factor * 1.1), verdict,
                     "" if verdict == stats.PASS else "no load factor was proven to pass", models, (), MACHINE, 1.0)


def open_study(storage: str, topology: Topology, name: str = "mix") -> optuna.Study:
    """A deployment study as ``optimize --deployment`` opens it (its kind, deployment and identity)."""
    models = {n: ModelInfo(n, f"/models/{n}.onnx", n[0] * 64, ()) for n in SHARES}
    return open_mix_study(MixStudyConfig(deployment(), models, topology, MeasureSettings(), storage, name))


def add_trial(study: optuna.Study, result: MixResult, baseline: str = "") -> optuna.trial.FrozenTrial:
    """A measured trial holding ``result`` (the user attrs tuner.mix.study records)."""
    divisions = optuna.distributions.CategoricalDistribution(["unpinned", "10+6", "11+5", "9+7"])
    attrs = {"label": result.label, "result": result.to_dict(), "host": "fixture:0", "hostname": "fixture"}
    if baseline:
        attrs["baseline"] = baseline
    study.add_trial(optuna.trial.create_trial(params={"division": result.config.division},
                                              distributions={"division": divisions}, value=result.load_factor,
                                              user_attrs=attrs))
    return study.trials[-1]


def study_with_baselines(storage: str, searched_lf: float = 120.0, even_lf: float = 100.0,
                         ort_lf: float = 50.0) -> tuple[optuna.Study, dict[str, optuna.trial.FrozenTrial]]:
    """Both baselines and two searched configs (``10+6``, and ``11+5`` a little below it); an
    ``ort_lf`` of 0 makes ORT's defaults a baseline that served no load factor."""
    topo = sixteen_cores()
    study = open_study(storage, topo)
    ort = add_trial(study, mix_result(topo, ort_defaults(deployment()), ort_lf,
                                      verdict=stats.PASS if ort_lf > 0 else stats.UNDECIDED), "ort_default")
    even = add_trial(study, mix_result(topo, even_split(topo, deployment()), even_lf), "even_split")
    best = add_trial(study, mix_result(topo, searched_config(topo), searched_lf, p99_ratio=0.8))
    other = add_trial(study, mix_result(topo, searched_config(topo, "11+5", 1), searched_lf * 0.9, p99_ratio=0.3))
    return study, {"ort_default": ort, "even_split": even, "best": best, "other": other}
