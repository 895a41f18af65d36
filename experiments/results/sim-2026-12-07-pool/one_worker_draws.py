import sys

import numpy as np

from experiments.replay_tail import BOUND_S, calm_samples
from experiments.sim import machines
from experiments.sim.model import ServiceModel, worker_models
from experiments.sim.presets import PRESETS
from experiments.sim.truth import true_throughput
from tuner.bench import replay
from tuner.machine.placement import plan
from tuner.search.study import baselines

machine = sys.argv[1]
ns = [int(x) for x in sys.argv[2].split(",")]
reps = int(sys.argv[3])
poolmult = int(sys.argv[4]) if len(sys.argv) > 4 else 1
topology = machines.load(machine)
noise = PRESETS["vm"]
quiet = noise.without_episodes()
service = ServiceModel()
configs = dict((n if isinstance(n, str) else n, p) for n, p in baselines(topology))
names = [k for k in configs]
print(names)
fillk = [k for k in names if "one_per_core" in k][0]
ortk = [k for k in names if "ort" in k.lower() or "default" in k][0]
fill_models = worker_models(plan(topology, configs[fillk]), topology, quiet, service)
models = worker_models(plan(topology, configs[ortk]), topology, quiet, service)
truth = true_throughput(configs[ortk], topology, noise, BOUND_S, precision=4)
for n in ns:
    ratios = []
    cov = 0
    w = []
    for r in range(reps):
        rng = np.random.default_rng(90000 + r)
        pool = replay.TailPool()
        fs = calm_samples(fill_models, quiet, service, 250 * poolmult, rng)
        pool.put("fill", np.concatenate([replay.excesses(s) for s in fs]))
        e = replay.estimate(calm_samples(models, quiet, service, n, rng), BOUND_S, 0.99, seed=r, pool=pool, key="this")
        ratios.append(e.rate / truth)
        cov += e.low <= truth <= e.high
        w.append(np.log(e.high / e.low))
    q = np.quantile(ratios, [0.1, 0.5, 0.9])
    print(
        f"n={n} med {q[1]:.3f} 10-90 {q[0]:.2f}-{q[2]:.2f} geo {np.exp(np.mean(np.log(ratios))):.3f} cov {cov / reps:.2f} width {np.median(w):.2f}",
        flush=True,
    )
