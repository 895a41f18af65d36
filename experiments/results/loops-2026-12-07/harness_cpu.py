import sys
import time

import psutil

from experiments.reference_harness import WorkerPool, capacity_probe, resolve_model, run_rate, standard_configs

model = resolve_model("onnx:squeezenet")
cfgs = standard_configs()


def main():
    for name in sys.argv[1].split(","):
        with WorkerPool(model, cfgs[name]) as pool:
            cap = capacity_probe(pool, 5)
            print(name, "capacity", cap["capacity"], cap["mean_service_ms"], flush=True)
            me = psutil.Process()
            ws = [psutil.Process(p.pid) for p in pool.procs]
            for rate in [float(x) for x in sys.argv[2].split(",")]:
                t0 = me.cpu_times()
                w0 = [w.cpu_times() for w in ws]
                c0 = time.time()
                r, _ = run_rate(
                    pool,
                    rate,
                    run_s=15,
                    warmup_s=2,
                    drain_s=1,
                    bound_s=0.1,
                    rng=__import__("numpy").random.default_rng(1),
                )
                el = time.time() - c0
                t1 = me.cpu_times()
                w1 = [w.cpu_times() for w in ws]
                cpu = lambda a, b: (b.user + b.system - a.user - a.system) / el
                print(
                    f"  rate {rate}: generator cpu {cpu(t0, t1):.3f} cores, workers {[round(cpu(a, b), 2) for a, b in zip(w0, w1)]}, p50 {r['p50_ms']} p99 {r['p99_ms']} service {r['mean_service_ms']}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
