"""The search for the largest load factor L every model serves within its own P99 bound.

At load factor L model i is offered L x share_i requests/s, all models at once. A load factor
``pass``es only when EVERY model's window passes its own bound, ``fail``s (proven) when any
model's window fails, and is ``undecided`` otherwise. The search is the monotone bisection of
tuner.bench.ratesearch lifted to the mix: never above a proven fail, never below a proven pass,
every window's evidence kept, the best passing L re-tested and judged on the pooled counts of
both runs (per model), and the answer given with an interval [best passing L, lowest L not
proven to pass].
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from tuner.bench import stats
from tuner.bench.ratesearch import pooled_verdict
from tuner.results.mixrecords import MixWindow, combined_verdict


def pooled_mix_verdict(runs: list[MixWindow]) -> str:
    """Verdict of several runs at one load factor: each model judged on its pooled windows."""
    names = runs[0].windows
    return combined_verdict(pooled_verdict([r.windows[n] for r in runs]) for n in names)


@dataclass(frozen=True)
class LoadFactorOutcome:
    best: MixWindow | None  # the passing run reported (None: no load factor passed)
    runs: list[MixWindow]  # every run, in order
    interval: tuple[float, float]  # [best passing L, lowest L not proven to pass]
    verdict: str  # pass | undecided (nothing passed; a lower L might)


def search_load_factor(run: Callable[[float], MixWindow], capacity_lf: float, steps: int,
                       say: Callable[[str], None] = lambda _m: None, retest: bool = True,
                       fallbacks: int = 2) -> LoadFactorOutcome:
    """Bisection over load factors below ``capacity_lf`` (the closed-loop estimate) with ``steps``
    runs, then one re-test of the boundary; when no load factor passed, up to ``fallbacks`` runs at
    half the lowest one tried."""
    runs: list[MixWindow] = []

    def at(lf: float, label: str) -> MixWindow:
        say(f"{label}: load factor {lf:.3g}")
        runs.append(run(lf))
        return runs[-1]

    bracket = [0.0, capacity_lf * 1.05]  # [highest passing, lowest not passing] so far
    lf = capacity_lf * 0.9
    for step in range(steps):
        if lf <= 0 or not bracket[0] < lf < bracket[1]:
            break
        passed = at(lf, f"run {step + 1}/{steps}").verdict == stats.PASS
        bracket[0 if passed else 1] = lf
        if bracket[1] - bracket[0] < 0.01 * capacity_lf:
            break
        lf = sum(bracket) / 2
    by_lf = _grouped(runs)
    verdicts = {x: pooled_mix_verdict(rs) for x, rs in by_lf.items()}
    best = _highest_pass(verdicts)
    if retest and best is not None:
        at(best, "boundary re-test")
        by_lf = _grouped(runs)
        verdicts[best] = pooled_mix_verdict(by_lf[best])
        best = _highest_pass(verdicts)
    for _ in range(fallbacks):  # nothing passed (the first run, or the re-test, was over): halve the lowest L
        if best is not None or not verdicts:
            break
        lf = min(verdicts) / 2
        verdicts[lf] = pooled_mix_verdict([at(lf, "fallback")])
        best = _highest_pass(verdicts)
    by_lf = _grouped(runs)
    if best is None:
        return LoadFactorOutcome(None, runs, (0.0, min(verdicts, default=0.0)), stats.UNDECIDED)
    above = [x for x, v in verdicts.items() if x > best and v != stats.PASS]
    passing = [r for r in by_lf[best] if r.verdict == stats.PASS] or by_lf[best]
    return LoadFactorOutcome(passing[-1], runs, (best, min(above) if above else max(capacity_lf, best)),
                             stats.PASS)


def _grouped(runs: list[MixWindow]) -> dict[float, list[MixWindow]]:
    by_lf: dict[float, list[MixWindow]] = {}
    for r in runs:
        by_lf.setdefault(r.load_factor, []).append(r)
    return by_lf


def _highest_pass(verdicts: dict[float, str]) -> float | None:
    ceiling = min((x for x, v in verdicts.items() if v == stats.FAIL), default=math.inf)
    return max((x for x, v in verdicts.items() if v == stats.PASS and x < ceiling), default=None)
