"""How long a measurement should wait for calm CPUs: a model of the simulated neighbour alone.

    python -m experiments.wait_model [--noise vm] [--draws 4000] [--waits 10,20,30,40,60] [--json]

The ``vm`` preset's neighbour is one tenant, on and off in turn (episodes of ``neighbour_s`` on
average, gaps of 1 / ``neighbour_rate``, both exponential): a config whose one worker spans every
CPU (one worker with all cores, the ORT default) is calm only while it is off. A measurement of
such a config (``tuner.bench.measure``) starts at a uniform moment: a 2-s probe, calm or not; a
calm probe is topped up at once by one 2-s chunk; then its windows (``--windows-s``, 12 s); then,
short of calm service times, the top-up: looks of 0.5 s until one is calm (``W`` seconds in all),
then 2-s closed-loop chunks (8 s at most), waiting again after a disturbed one. It succeeds once
``--need`` calm chunks (the probe counting as one) are in: 2 for one SqueezeNet worker on 16 cores
(1,500 service times at about 700 req/s). ``early`` is the same with the wait before the windows
(v14 of 2026-12-07 did so for every config). Prints, per wait, the share of measurements that
got their replay and their mean seconds. Steal episodes and the thresholds' judgement are left
out: ``experiments/calm_odds.py`` runs the real wait on the simulated machine.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from experiments.sim.presets import PRESETS

LOOK_S, CHUNK_S, CHECK_S, TOP_UP_S = 0.5, 2.0, 3.0, 8.0


def _timeline(rng: np.random.Generator, on_s: float, off_s: float, horizon: float = 600.0) -> list[tuple]:
    t, spans, on = 0.0, [], bool(rng.random() < on_s / (on_s + off_s))  # a uniform moment
    while t < horizon:
        d = float(rng.exponential(on_s if on else off_s))
        if on:
            spans.append((t, t + d))
        t, on = t + d, not on
    return spans


def _calm(spans: list[tuple], a: float, b: float) -> bool:
    return not any(s < b and e > a for s, e in spans)


def _top_up(spans, t: float, wait: float, got: int, need: int) -> tuple[bool, float]:
    closed = TOP_UP_S
    while closed > 0:
        while not _calm(spans, t, t + LOOK_S):
            if wait < LOOK_S:
                return False, t
            t, wait = t + LOOK_S, wait - LOOK_S
        t, wait = t + LOOK_S, wait - LOOK_S
        while closed > 0:
            calm = _calm(spans, t, t + CHUNK_S)
            t, closed = t + CHUNK_S, closed - CHUNK_S
            got += calm
            if got >= need:
                return True, t
            if not calm:
                break
    return False, t


def one(rng: np.random.Generator, on_s: float, off_s: float, wait: float, windows_s: float, need: int,
        early: bool) -> tuple[bool, float]:
    """(got its replay, seconds) of one measurement."""
    spans = _timeline(rng, on_s, off_s)
    got, t = int(_calm(spans, 0.0, CHUNK_S)), CHUNK_S
    if got:  # a calm probe: one chunk at once, then the check window
        got += _calm(spans, t, t + CHUNK_S)
        t += CHUNK_S
        if got >= need:
            return True, t + CHECK_S
    if early and not got:
        ok, t = _top_up(spans, t, wait, got, need)
        return (True, t + CHECK_S) if ok else (False, t + windows_s)
    return _top_up(spans, t + windows_s, wait, got, need)


def model(noise: str, draws: int, waits: list[float], windows_s: float, need: int) -> dict:
    nz = PRESETS[noise]
    on_s, off_s = nz.neighbour_s, 1.0 / nz.neighbour_rate
    out: dict = {}
    for policy in ("late", "early"):
        for w in waits:
            rng = np.random.default_rng(0)
            runs = [one(rng, on_s, off_s, w, windows_s, need, policy == "early") for _ in range(draws)]
            out[f"{policy} {w:g} s"] = {"replayed": float(np.mean([ok for ok, _ in runs])),
                                        "mean_s": float(np.mean([s for _, s in runs]))}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--noise", default="vm", choices=sorted(n for n in PRESETS if PRESETS[n].neighbour_rate > 0))
    parser.add_argument("--draws", type=int, default=4000)
    parser.add_argument("--waits", default="10,20,30,40,60")
    parser.add_argument("--windows-s", type=float, default=12.0)
    parser.add_argument("--need", type=int, default=2, help="calm 2-s chunks the replay needs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    out = model(args.noise, args.draws, [float(w) for w in args.waits.split(",")], args.windows_s, args.need)
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        for key, row in out.items():
            print(f"{key:10s} replayed {row['replayed']:.3f}  mean {row['mean_s']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
