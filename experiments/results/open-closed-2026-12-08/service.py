"""Service times of SqueezeNet in the reference harness's own workers (no placetune code), open loop
at several rates and "closed" (a rate over capacity: always a backlog), per config: do requests
served with idle gaps between them take longer, or spread wider, than back to back?

    .venv/bin/python experiments/results/open-closed-2026-12-08/service.py > experiments/results/open-closed-2026-12-08/service.txt
"""

import sys

import numpy as np

from experiments import reference_harness as rh

captured = []
original = rh.summarize_run


def spy(rate, scheduled, sent, done, service, measured, *args, **kwargs):
    captured.append((rate, service[measured].copy(), scheduled[measured].copy(), done[measured].copy()))
    return original(rate, scheduled, sent, done, service, measured, *args, **kwargs)


def lindley_p99(service, rate, rng):
    gaps = rng.exponential(1 / rate, service.size * 20)
    s = np.resize(rng.permutation(service), gaps.size)
    w = np.zeros(gaps.size)
    for i in range(1, gaps.size):
        w[i] = max(0.0, w[i - 1] + s[i - 1] - gaps[i])
    return float(np.quantile(w + s, 0.99)) * 1000


def main():
    rh.summarize_run = spy
    model = rh.resolve_model("onnx:squeezenet")
    configs = rh.standard_configs()
    rng = np.random.default_rng(0)
    for name in ("ort_default", "both_cores"):
        with rh.WorkerPool(model, configs[name]) as pool:
            for rate in (100.0, 130.0, 160.0, 400.0, 130.0):
                captured.clear()
                record, _lat = rh.run_rate(pool, rate, run_s=20, warmup_s=2, drain_s=3, bound_s=0.1, rng=rng)
                _r, service, _sch, _done = captured[-1]
                service = service[np.isfinite(service)]
                q = np.quantile(service, [0.5, 0.9, 0.99, 0.999]) * 1000
                print(f"{name:12s} rate {rate:6.1f}  n {service.size:5d}  mean {service.mean() * 1000:6.2f} ms  "
                      f"p50 {q[0]:5.2f}  p90 {q[1]:5.2f}  p99 {q[2]:6.2f}  p99.9 {q[3]:6.2f}  "
                      f"open-loop P99 {record['p99_ms']}  Lindley P99 at 130/s from these {lindley_p99(service, 130.0, rng):6.1f} ms",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
