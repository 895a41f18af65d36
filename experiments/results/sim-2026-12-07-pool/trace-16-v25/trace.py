import sys

import tuner.bench.measure as ms
import tuner.bench.replay as rp
from experiments import simulate as sm
from experiments.sim import machines

orig = rp.estimate


def est(samples, bound_s, quantile, seed=0, replicates=4, pool=None, key=None):
    if len(samples) == 1 and pool is not None:
        tot, cnt = pool.others(key)
        own = rp.excesses(samples[0])
        u = rp._threshold(samples[0])
        r = orig(samples, bound_s, quantile, seed, replicates, pool, key)
        print(
            f"seed={sys.argv[2]} n={samples[0].size} u={u * 1000:.1f}ms own_exc n={own.size} mean={own.mean() * 1000:.1f} pool n={cnt} mean={tot / max(cnt, 1) * 1000:.1f} used={rp.tail_mean(own, (tot, cnt)) * 1000:.1f} rate={r.rate:.1f} [{r.low:.0f},{r.high:.0f}]",
            flush=True,
        )
        return r
    return orig(samples, bound_s, quantile, seed, replicates, pool, key)


rp.estimate = est
ms.replay.estimate = est
topo = machines.load(sys.argv[1])
sm.run_seed(sm.Setup(sys.argv[1], "vm", replay=True), int(sys.argv[2]), topo)
