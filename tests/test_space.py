"""The conditional search space: every proposal plannable, bounds that follow the machine."""

from __future__ import annotations

import optuna
import pytest

from tests.conftest import fixture_dirs, fixture_topology
from tuner.errors import Infeasible
from tuner.machine.placement import Params, plan
from tuner.search.space import load_space, resolve
from tuner.search.study import baselines

FIXTURES = fixture_dirs()


@pytest.mark.parametrize("machine", FIXTURES, ids=lambda p: p.name)
def test_500_default_space_proposals_are_all_plannable(machine):
    topo = fixture_topology(machine)
    space = load_space("default", topo)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(500):
        trial = study.ask()
        params = space.suggest(trial)
        plan(topo, params)  # raises Infeasible if the space let an unplannable config through
        study.tell(trial, float(params.workers * params.cores_per_worker))


@pytest.mark.parametrize("name", ["latency", "throughput"])
@pytest.mark.parametrize("machine", [p for p in FIXTURES if len(fixture_topology(p).cores()) <= 32][::2],
                         ids=lambda p: p.name)
def test_every_config_of_the_shipped_spaces_is_plannable_and_distinct(machine, name):
    topo = fixture_topology(machine)
    space = load_space(name, topo)
    labels = []
    for values, params in space.configurations():
        plan(topo, params)
        labels.append(params.label())
        assert space.express(params) == values
    assert len(labels) == len(set(labels)) == space.size()


@pytest.mark.parametrize("machine", FIXTURES, ids=lambda p: p.name)
def test_bounds_follow_the_earlier_choices(machine):
    topo = fixture_topology(machine)
    space = load_space("default", topo)
    cores = len(topo.cores())
    pus_per_core = max(len(c.cpus) for c in topo.cores())
    for workers in space.options("workers", {"io_cores": 0, "numa_policy": "none"}):
        cpw = space.options("cores_per_worker", {"io_cores": 0, "numa_policy": "none", "workers": workers})
        assert cpw and max(cpw) <= cores // workers
        for smt in space.choices["smt"]:
            intra = space.options("intra_op_threads", {"cores_per_worker": max(cpw), "smt": smt})
            assert max(intra) <= max(cpw) * (pus_per_core if smt else 1)
    assert space.options("inter_op_threads", {"execution_mode": "sequential"}) == (1,)
    assert space.options("spinning", {"intra_op_threads": 1, "execution_mode": "sequential"}) == (True,)


def test_a_2_core_machine_has_the_few_configs_it_can_run():
    topo = fixture_topology(next(p for p in FIXTURES if p.name.startswith("2arm")))
    space = load_space("default", topo)
    unbatched = sorted(p.label() for _, p in space.without_batching("test").configurations())
    # 1x1, 2x1 (one thread, nothing spins) and 1x2 with intra 1 or 2, spinning on/off when 2
    assert unbatched == sorted(["w1xc1-intra1", "w2xc1-intra1", "w1xc2-intra1", "w1xc2-intra2",
                                "w1xc2-intra2-nospin"])
    # each of them unbatched, or batching 2..32 requests with each of the 5 timeouts
    labels = {p.label() for _, p in space.configurations()}
    assert len(labels) == space.size() == 5 * (1 + 5 * 5)
    assert "w2xc1-intra1-batch8-wait0.5ms" in labels and "w2xc1-intra1-batch8" not in labels


@pytest.mark.parametrize("machine", FIXTURES, ids=lambda p: p.name)
def test_pinned_baselines_are_expressible_in_the_default_space(machine):
    topo = fixture_topology(machine)
    space = load_space("default", topo)
    for name, params in baselines(topo):
        try:
            plan(topo, params)
        except Infeasible:  # a baseline the planner refuses (10 x 4 cores bound to 10-core nodes)
            assert space.express(params) is None
            continue
        assert (space.express(params) is None) == (not params.pin), name


def test_a_yaml_list_is_kept_as_the_only_allowed_values():
    topo = fixture_topology(next(p for p in FIXTURES if p.name.startswith("16amd64")))
    space = resolve("t", {"workers": [1, 4, 16], "cores_per_worker": [1, 2, 4], "intra_op_threads": [1, 3]},
                    topo)
    seen = {(p.workers, p.cores_per_worker) for _, p in space.configurations()}
    assert seen == {(1, 1), (1, 2), (1, 4), (4, 1), (4, 2), (4, 4), (16, 1)}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(50):
        params = space.suggest(study.ask())
        assert (params.workers, params.cores_per_worker) in seen and params.intra_op_threads in (1, 3)
    assert Params(workers=4, cores_per_worker=4, intra_op_threads=3) in {p for _, p in space.configurations()}


def test_the_dimension_orders_come_from_params_each_searched_dimension_once():
    """A new dimension is one field of Params (its metadata: where a trial decides it, where a
    neighbour changes it) plus its use: both orders list every searched dimension once."""
    from tuner.machine.placement import NEIGHBOUR_ORDER, SEARCH_ORDER, SEARCHED

    assert sorted(NEIGHBOUR_ORDER) == sorted(SEARCH_ORDER) == sorted(SEARCHED)
    # a neighbour changes how the CPUs are used first, then how requests are batched
    assert NEIGHBOUR_ORDER[:2] == ("smt", "intra_op_threads")
    assert NEIGHBOUR_ORDER[-2:] == ("max_batch", "batch_timeout_ms")
