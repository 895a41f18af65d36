"""placetune's own open loop at fixed rates for 20 s (the windows the replay is checked against),
then the reference harness's at the same rates, for the ORT default on SqueezeNet."""

import sys
import time

import numpy as np
import psutil


def placetune_side(rates, seconds):
    from tuner.bench.loadgen import run_server_window
    from tuner.bench.measure import MeasureSettings, launch
    from tuner.bench.model import inspect_model
    from tuner.machine.placement import plan
    from tuner.machine.sysfs import read_topology
    from tuner.search.study import baselines

    topo = read_topology("/")
    params = dict(baselines(topo))["ort_default"]
    model = inspect_model("onnx:squeezenet")
    with launch(plan(topo, params), model, MeasureSettings(p99_bound_s=0.1)) as fleet:
        rng = np.random.default_rng(1)
        run_server_window(fleet, 50.0, 2.0, 0, 0.1, 0.004, rng)  # warm
        for r in rates:
            me = psutil.Process()
            t0 = me.cpu_times()
            c0 = time.time()
            w = run_server_window(fleet, r, seconds, 0, 0.1, 0.004, rng)
            el = time.time() - c0
            t1 = me.cpu_times()
            print(
                f"placetune rate {r}: achieved {w.achieved_rate:.1f} p50 {w.p50_ms:.1f} p99 {w.p99_ms:.1f} service mean {w.mean_service_ms:.2f} p50 {w.service_p50_ms:.2f} worker cpu {w.worker_cpu} generator cpu {(t1.user + t1.system - t0.user - t0.system) / el:.3f}",
                flush=True,
            )


def harness_side(rates, seconds):
    from experiments.reference_harness import WorkerPool, resolve_model, run_rate, standard_configs

    with WorkerPool(resolve_model("onnx:squeezenet"), standard_configs()["ort_default"]) as pool:
        rng = np.random.default_rng(1)
        run_rate(pool, 50.0, run_s=2, warmup_s=0.5, drain_s=1, bound_s=0.1, rng=rng)
        me = psutil.Process()
        ws = [psutil.Process(p.pid) for p in pool.procs]
        for r in rates:
            t0 = me.cpu_times()
            w0 = [w.cpu_times() for w in ws]
            c0 = time.time()
            rec, _ = run_rate(pool, r, run_s=seconds, warmup_s=2, drain_s=1, bound_s=0.1, rng=rng)
            el = time.time() - c0
            t1 = me.cpu_times()
            w1 = [w.cpu_times() for w in ws]
            cpu = lambda a, b: (b.user + b.system - a.user - a.system) / el
            print(
                f"harness   rate {r}: achieved {rec['throughput']} p50 {rec['p50_ms']} p99 {rec['p99_ms']} service mean {rec['mean_service_ms']} worker cpu {[round(cpu(a, b), 2) for a, b in zip(w0, w1)]} generator cpu {cpu(t0, t1):.3f}",
                flush=True,
            )


if __name__ == "__main__":
    rates = [float(x) for x in sys.argv[1].split(",")]
    for side in sys.argv[2].split(","):
        (placetune_side if side == "p" else harness_side)(rates, float(sys.argv[3]) if len(sys.argv) > 3 else 20.0)
