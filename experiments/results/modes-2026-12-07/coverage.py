"""Sub-samples of a recorded closed-loop trace (rec1.npz, rec2.npz: SqueezeNet, ORT default
threads, every request's start and service time): contiguous L-second pieces cut in 2-s windows,
each replayed (``tuner.bench.replay.estimate``, P99 <= 100 ms) with its interval drawn by blocks
of 50 from the joined sample (before 6b2c894) and by whole windows then blocks (since), against
the replay of the whole trace.

    PYTHONPATH=. python experiments/results/modes-2026-12-07/coverage.py TRACE.npz 8,16,32,64 30
"""
import math
import sys

import numpy as np

from tuner.bench import replay


def main() -> None:
    d = np.load(sys.argv[1])
    t, s = d["start_s"], d["service_s"].astype(np.float64)
    rng = np.random.default_rng(0)
    whole = replay.estimate([s], 0.1, 0.99, seed=0, replicates=1).rate
    print(f"{sys.argv[1]}: {t[-1]:.0f} s, {s.size} requests; replay of the whole trace {whole:.1f} req/s")
    print("mean service per 10 s (ms):", " ".join(f"{1000 * s[(t >= k) & (t < k + 10)].mean():.1f}"
                                                   for k in range(0, int(t[-1]), 10)))
    for length in [float(x) for x in sys.argv[2].split(",")]:
        rows: dict[str, list] = {"blocks": [], "windows": []}
        for k in range(int(sys.argv[3])):
            a0 = rng.uniform(0, t[-1] - length)
            parts = [s[(t >= a0 + j) & (t < a0 + j + 2)] for j in np.arange(0, length, 2.0)]
            joined = np.concatenate(parts)
            for how in rows:
                e = replay.estimate([joined], 0.1, 0.99, seed=k, windows=[parts] if how == "windows" else ())
                rows[how].append((e.rate / whole, e.low <= whole <= e.high, math.log(e.high / e.low)))
        for how, v in rows.items():
            a = np.array(v, dtype=float)
            print(f"L {length:4.0f} s, bootstrap by {how:7s}: figure / whole median {np.median(a[:, 0]):.3f}, "
                  f"10%-90% {np.quantile(a[:, 0], .1):.2f}-{np.quantile(a[:, 0], .9):.2f}; interval holds the "
                  f"whole trace's figure {a[:, 1].mean():.2f}; median width log(high/low) {np.median(a[:, 2]):.3f}")


if __name__ == "__main__":
    main()
