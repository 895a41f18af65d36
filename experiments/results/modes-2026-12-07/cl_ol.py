"""placetune's own worker (ORT default or a given plan): closed-loop and open-loop (at RATE) windows
alternating, their calm service times compared, and each replayed."""
import sys

import numpy as np

from tuner.bench import replay
from tuner.bench.loadgen import run_offline_window, run_server_window
from tuner.bench.measure import MeasureSettings, launch
from tuner.bench.model import inspect_model
from tuner.machine.placement import plan
from tuner.machine.sysfs import read_topology
from tuner.search.study import baselines


def main():
    name, rate, rounds = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    topo = read_topology("/")
    params = dict(baselines(topo))[name]
    model = inspect_model("onnx:squeezenet")
    closed, opened = [], []
    with launch(plan(topo, params), model, MeasureSettings(p99_bound_s=0.1)) as fleet:
        rng = np.random.default_rng(1)
        run_server_window(fleet, 50.0, 1.0, 0, 0.1, 0.004, rng)
        for k in range(rounds):
            w = run_offline_window(fleet, 1.0, 0.1)
            closed.append(np.concatenate([c for c in w.calm_service if c is not None]) if w.calm_service else np.zeros(0))
            w = run_server_window(fleet, rate, 1.5, 0, 0.1, 0.004, rng)
            opened.append(np.concatenate([c for c in w.calm_service if c is not None]) if w.calm_service else np.zeros(0))
            print(f"round {k}: closed n {closed[-1].size} mean {1000*closed[-1].mean():.2f} | open n {opened[-1].size} mean {1000*opened[-1].mean():.2f} p99 {w.p99_ms:.1f}", flush=True)
    for label, parts in (("closed", closed), ("open", opened)):
        v = np.concatenate(parts)
        est = replay.estimate([v], 0.1, 0.99, seed=0)
        print(f"{label}: n {v.size} mean {1000*v.mean():.2f} p50 {1000*np.median(v):.2f} p90 {1000*np.quantile(v,.9):.2f} p99 {1000*np.quantile(v,.99):.2f} max {1000*v.max():.1f}; replay {est.rate:.1f} [{est.low:.1f}, {est.high:.1f}]")
    np.savez("/tmp/ow/cl_ol_%s.npz" % name, closed=np.concatenate(closed), open=np.concatenate(opened))

if __name__ == "__main__":
    main()
