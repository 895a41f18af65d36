"""The rate at the bound from measured service times: a trace-driven replay of the shared queue.

A window's over-bound share at one rate is unbiased, but it rests on the few slow moments that
window happened to hold (one worker's tail comes in rare collapses: a 2-s window mostly shows
none, now and then many), and on a noisy machine on whatever a neighbour took from the CPUs
then. The replay asks the same question of the service times instead: every request a worker
served while its CPUs were calm (no foreign load or steal over ``tuner.bench.interference``'s
thresholds in that window) is a draw of what that worker takes per request; the workers' draws,
replayed through the harness's own queue (Poisson arrivals, one FIFO, each request to the
earliest free worker, latency from the scheduled arrival) over a run far longer than a window,
give the long-run over-bound share at any rate, and the rate where it is ``1 - quantile`` is the
estimate. The same arrivals and draws serve every rate tried (common random numbers), so the
share grows with the rate and a bisection finds the root. The interval comes from replays of
resampled service times (a block bootstrap: blocks of consecutive requests keep a worker's
slow spells together) with fresh arrivals.

What it assumes: a request's service time does not depend on the offered rate (the probe's
closed loop and a window near the knee serve alike), and the calm windows' service times are
the config's own. Both are checked against the windows: the P99 verdict at the measured rates
keeps the last word on feasibility (``tuner.bench.measure``).
"""

from __future__ import annotations

import functools
import heapq
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

MIN_CALM_REQUESTS = 1500  # calm service times a worker kind needs before its replay is trusted
BLOCK = 50  # requests per block of the bootstrap (a worker's slow spell stays together)
ONE_WORKER_REQUESTS = 400_000  # replayed requests, one worker (a vectorised recursion: cheap)
MANY_WORKER_REQUESTS = 20_000  # replayed requests, several workers (a Python loop over a heap)
WARMUP_SHARE = 0.05  # of the replayed requests, left out: the queue starts empty
BISECTIONS = 12  # over [0.01, 1.05] of the capacity: to 0.7%
REPLICATE_BISECTIONS = 7  # a replicate's, over [0.6, 1.6] of the estimate: to 0.4%
REPLICATES = 4  # bootstrap replicates of the interval (``_interval``)
# Student's t at 97.5% by degrees of freedom: 4 replicates' spread, stretched to a 95% interval
T975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


@dataclass(frozen=True)
class ReplayEstimate:
    rate: float
    low: float
    high: float
    requests: int = 0  # calm service times it rests on (the caller's count: workers may share a sample)


def _blocks(rng: np.random.Generator, sample: np.ndarray) -> np.ndarray:
    """As many service times as ``sample`` holds, in blocks of ``BLOCK`` consecutive ones drawn
    from it with replacement."""
    block = min(BLOCK, sample.size)
    starts = rng.integers(0, sample.size - block + 1, size=math.ceil(sample.size / block))
    return sample[(starts[:, None] + np.arange(block)[None, :]).ravel()[: sample.size]]


def _draw(rng: np.random.Generator, sample: np.ndarray, n: int, bootstrap: bool,
          pooled: tuple[float, int] = (0.0, 0), windows: Sequence[np.ndarray] = ()) -> np.ndarray:
    """n service times: the sample cycled from a random start (its own order), or, bootstrapping,
    its windows (``windows``: the parts it was joined from, one per measuring window) drawn with
    replacement and blocks of ``BLOCK`` consecutive ones drawn within each (``_blocks``); then the
    tail smoothed (``pooled``: the other measurements' excesses, see ``TailPool``).

    Why windows first (2026-12-07): on a cloud VM the speed of the CPUs changes in steps that last
    seconds (the 2-core VM's SqueezeNet: 3.6-3.9, 5.4-5.7 and 6.2-6.6 ms per request, each for
    about 10 s). Blocks of 50 requests drawn from the whole sample keep each replicate's share of
    slow and fast moments at the sample's, so the interval said nothing of how few such moments
    the sample held; drawing whole windows lets a replicate hold more or fewer of them. Over
    pieces of a 5-minute recorded trace, the interval held the whole trace's figure in 68% of 8-s
    pieces (45% by blocks alone) and 78% of 32-s ones (68%): ``experiments/README.md``, "The VM's
    speed steps"."""
    if bootstrap:
        parts = [w for w in windows if w.size] if len(windows) > 1 else []
        if parts:
            sample = np.concatenate([_blocks(rng, parts[i]) for i in rng.integers(0, len(parts), len(parts))])
        else:
            sample = _blocks(rng, sample)
    start = int(rng.integers(sample.size))
    out = np.resize(np.roll(sample, -start), n)
    return _smooth_tail(rng, sample, out, pooled) if TAIL_SHARE > 0 else out


TAIL_FROM_MEDIAN = 3.0  # the tail's threshold is at least this multiple of the median service time
# the slowest share of a sample whose excess over its threshold is fitted (0: none). 0.01 before
# 2026-12-07: one worker with every CPU of the simulated 64-core VM stalls in 1.8% of its requests,
# and a threshold at the sample's 99th percentile (inside the stalls) rests on the ~half of them
# above it; at 0.03 the threshold is 3x the median, under every stall, and all of them count:
# replays of 2,250 calm service times spread 0.79-1.32 of the truth (10%-90%), not 0.73-1.39, and
# their intervals held it in 94% of replays, not 91% (``experiments/replay_tail.py``'s draws)
TAIL_SHARE = 0.03


def _threshold(sample: np.ndarray) -> float:
    """Where a sample's tail begins: its (1 - ``TAIL_SHARE``) quantile or ``TAIL_FROM_MEDIAN`` times
    its median, whichever is higher (where stalls begin)."""
    return max(float(np.quantile(sample, 1 - TAIL_SHARE)), TAIL_FROM_MEDIAN * float(np.median(sample)))


def excesses(sample: np.ndarray) -> np.ndarray:
    """The sample's excesses over its threshold (``_threshold``)."""
    u = _threshold(sample)
    return sample[sample > u] - u


# the own mean excess may differ from the pool's by this many standard errors (log scale). 2.0 before
# 2026-12-07: an own mean of 12-20 excesses fell under that limit in 4-5% of samples by chance, and a
# one-worker replay with its own light tail then reported up to 2x its truth (simulated 16-core VM: one
# worker with all cores, own mean 10.5 ms vs the pool's 19.6, 600 req/s against a truth near 290); at
# 3.0 a chance disagreement is under 1%
POOL_AGREEMENT = 3.0
# excesses the other measurements need before the pool counts: 50 before 2026-12-07, when a study's
# first one-worker baseline often found 35-43 there (the first baselines' few dozen stalls) and
# replayed on its own 11-17 alone (simulated 16-core VM: 1.5-1.7x its truth)
MIN_POOLED = 20


def tail_mean(own: np.ndarray, pooled: tuple[float, int] = (0.0, 0)) -> float:
    """The mean excess of the fitted exponential tail: the sample's own (its maximum likelihood
    fit), or, where ``pooled`` (sum, count of the other measurements' excesses) holds
    ``MIN_POOLED`` and the own mean agrees with the pool's (their log ratio within
    ``POOL_AGREEMENT`` standard errors: sqrt(1 / own count + 1 / pooled count), an exponential's
    log mean having 1 / sqrt(count)), the mean of both together."""
    total, count = pooled
    mine = float(own.mean())
    if count >= MIN_POOLED and total > 0:
        theirs = total / count
        if abs(math.log(mine / theirs)) <= POOL_AGREEMENT * math.sqrt(1 / own.size + 1 / count):
            return (float(own.sum()) + total) / (own.size + count)
    return mine


def _smooth_tail(rng: np.random.Generator, sample: np.ndarray, draws: np.ndarray,
                 pooled: tuple[float, int] = (0.0, 0)) -> np.ndarray:
    """Peaks over a threshold: the draws over u (``_threshold``) get u plus an exponential excess
    whose mean is the sample's mean excess over u (``tail_mean``: with the other measurements'
    where they agree), so a replay far longer than the sample sees stalls longer than the sample's
    few longest ones as often as their fitted tail says, and not only those few again and again."""
    u = _threshold(sample)
    excess = sample[sample > u] - u
    if excess.size < 5 or excess.mean() <= 0:
        return draws
    high = draws > u
    out = draws.copy()
    out[high] = u + rng.exponential(tail_mean(excess, pooled), int(high.sum()))
    return out


class TailPool:
    """The stalls a study has seen: per measurement, the sum and count of its calm samples'
    excesses over their thresholds. How long a stall lasts is the machine's (a preempted vCPU, an
    interrupt storm: every worker sees the same lengths), how often it comes is the config's; a
    one-worker config's replay rests on the few dozen stalls of its own sample, and its rate at the
    bound moves about 3.5x as much as the fitted mean excess (simulated, 10%-90% of replayed / true
    from 1,500 service times: 0.52-1.68, with the pool 0.67-1.36; ``experiments/replay_tail.py``).
    A measurement's own mean is kept where the pool's disagrees with it (``tail_mean``)."""

    def __init__(self) -> None:
        self._parts: dict[object, tuple[float, int]] = {}
        # key -> (its last replay, ready to run again; the others' excesses it borrowed from)
        self._replays: dict[object, tuple[Callable[[], ReplayEstimate], int]] = {}

    def put(self, key: object, values: np.ndarray) -> None:
        """A measurement's excesses (its last call wins: a measurement replays more than once)."""
        self._parts[key] = (float(values.sum()), int(values.size))

    def others(self, key: object) -> tuple[float, int]:
        """Sum and count of the excesses of every measurement but ``key``."""
        parts = [v for k, v in self._parts.items() if k != key]
        return sum(p[0] for p in parts), sum(p[1] for p in parts)

    def count(self) -> int:
        """Excesses of every measurement."""
        return sum(p[1] for p in self._parts.values())

    def remember(self, key: object, replay: Callable[[], ReplayEstimate], borrowed: int) -> None:
        """Measurement ``key``'s last replay (``estimate`` with its arguments), which borrowed from
        ``borrowed`` excesses of the others: ``again`` runs it with the pool as it is then."""
        self._replays[key] = (replay, borrowed)

    def grown(self, key: object, factor: float) -> bool:
        """Whether the others' excesses now number at least ``factor`` times those the last replay
        of ``key`` borrowed from (and at least ``MIN_POOLED``); False when it never replayed ``key``."""
        if key not in self._replays:
            return False
        now = self.others(key)[1]
        return now >= MIN_POOLED and now >= factor * self._replays[key][1]

    def again(self, key: object) -> ReplayEstimate | None:
        """The last replay of measurement ``key`` done again (same service times, same seed) with
        the pool as it is now; None when this pool never replayed ``key`` (another process's).

        Why (2026-12-08): a study measures its baselines first, and a one-worker baseline's
        replay then borrows its stalls' mean excess from the two many-worker baselines' 100-200
        excesses, where the study's later replays borrow from 1,000-1,800. On the simulator, the
        same replays done again at the study's end put the ORT default at 0.995 of its truth
        (64 cores) and 1.033 (16), not 1.043 and 1.064 (``experiments/final_pool.py``)."""
        return self._replays[key][0]() if key in self._replays else None


def _share_one(gaps: np.ndarray, service: np.ndarray, rate: float, bound_s: float) -> float:
    """Over-bound share of one worker's FIFO queue (Lindley's recursion, vectorised): waits
    W_n = X_n - min_{k<=n} X_k with X the running sum of service minus inter-arrival."""
    step = service[:-1] - gaps[1:] / rate
    x = np.concatenate(([0.0], np.cumsum(step)))
    wait = x - np.minimum.accumulate(np.minimum(x, 0.0))
    latency = wait + service
    skip = int(latency.size * WARMUP_SHARE)
    return float(np.count_nonzero(latency[skip:] > bound_s)) / (latency.size - skip)


def _share_many(gaps: np.ndarray, services: list[list[float]], rate: float, bound_s: float) -> float:
    """Over-bound share of the workers' shared FIFO: each request to the earliest free worker,
    which serves it with its own next service time."""
    arrivals = (np.cumsum(gaps) / rate).tolist()
    heap = [(0.0, w) for w in range(len(services))]
    used = [0] * len(services)
    skip = int(len(arrivals) * WARMUP_SHARE)
    over = 0
    for i, a in enumerate(arrivals):
        free, w = heap[0]
        mine = services[w]
        s = mine[used[w] % len(mine)]
        used[w] += 1
        done = (a if a > free else free) + s
        heapq.heapreplace(heap, (done, w))
        if i >= skip and done - a > bound_s:
            over += 1
    return over / (len(arrivals) - skip)


def _root(samples: Sequence[np.ndarray], bound_s: float, target: float, rng: np.random.Generator,
          bootstrap: bool, near: float | None = None, pooled: tuple[float, int] = (0.0, 0),
          windows: Sequence[Sequence[np.ndarray]] = ()) -> float:
    """The rate whose replayed over-bound share is ``target`` (bisection in log rate; ``near``: a
    rate it lies within [0.6, 1.6] times of, found by fewer steps; ``windows``: per sample, the
    parts it was joined from, for the bootstrap's draws)."""
    capacity = sum(1.0 / float(np.mean(s)) for s in samples)
    one = len(samples) == 1
    n = ONE_WORKER_REQUESTS if one else MANY_WORKER_REQUESTS
    gaps = rng.exponential(1.0, n)
    per = n if one else math.ceil(n / len(samples) * 2) + 16
    parts = list(windows) if len(windows) == len(samples) else [()] * len(samples)
    draws = [_draw(rng, s, per, bootstrap, pooled, w) for s, w in zip(samples, parts, strict=True)]
    if one:
        def share(r: float) -> float:
            return _share_one(gaps, draws[0], r, bound_s)
    else:
        lists = [d.tolist() for d in draws]

        def share(r: float) -> float:
            return _share_many(gaps, lists, r, bound_s)
    lo, hi, steps = 0.01 * capacity, 1.05 * capacity, BISECTIONS
    if near:
        lo, hi, steps = 0.6 * near, min(1.6 * near, hi), REPLICATE_BISECTIONS
        if share(lo) > target:
            lo, hi, steps = 0.01 * capacity, lo, BISECTIONS
    if share(lo) > target:
        return 0.0
    for _ in range(steps):
        mid = math.sqrt(lo * hi)
        if share(mid) > target:
            hi = mid
        else:
            lo = mid
    return math.sqrt(lo * hi)


def estimate(samples: Sequence[np.ndarray], bound_s: float, quantile: float, seed: int = 0,
             replicates: int = REPLICATES, pool: TailPool | None = None, key: object = None,
             windows: Sequence[Sequence[np.ndarray]] = ()) -> ReplayEstimate:
    """The highest rate whose replayed long-run over-bound share is ``1 - quantile``, with the
    range of ``replicates`` bootstrap replays as its interval; one sample per worker (``windows``:
    per worker, the parts its sample was joined from, one per measuring window: the bootstrap
    draws whole windows, see ``_draw``). With a ``pool``, the tails' mean excess counts the other
    measurements' stalls, and this one's (``key``) are added to it."""
    rng = np.random.default_rng(seed)
    target = 1 - quantile
    pooled = (0.0, 0)
    if pool is not None:
        pooled = pool.others(key)
        pool.remember(key, functools.partial(estimate, samples, bound_s, quantile, seed=seed, replicates=replicates,
                                             pool=pool, key=key, windows=windows), pooled[1])
        distinct = {id(s): s for s in samples}.values()  # workers of a kind share their pooled sample
        pool.put(key, np.concatenate([excesses(s) for s in distinct]))
    rate = _root(samples, bound_s, target, rng, bootstrap=False, pooled=pooled)
    roots = [_root(samples, bound_s, target, rng, bootstrap=True, near=rate or None, pooled=pooled,
                   windows=windows) for _ in range(replicates)]
    low, high = _interval(rate, roots)
    return ReplayEstimate(rate, low, high)


def _interval(rate: float, roots: Sequence[float]) -> tuple[float, float]:
    """The estimate times exp(+-t x the replicates' standard deviation of log rate), and never
    narrower than their range: 4 replicates' range alone held the truth in 40-75% of replays
    of simulated calm samples (``experiments/replay_tail.py``)."""
    low, high = min([*roots, rate]), max([*roots, rate])
    logs = np.log([r for r in roots if r > 0])
    if rate <= 0 or logs.size < 2:
        return low, high
    half = T975.get(logs.size - 1, 1.96) * float(np.std(logs, ddof=1))
    return min(low, rate * math.exp(-half)), max(high, rate * math.exp(half))


SPELL_RATIO = 1.5  # a request over this many times its kind's median service time is slow
SPELL_RUN = 3  # this many slow requests in a row on one worker: a slow spell, left out of the sample


def _spells(slow: np.ndarray) -> np.ndarray:
    """Where ``slow`` holds runs of at least ``SPELL_RUN`` True values (a boolean mask)."""
    edges = np.diff(np.concatenate(([0], slow.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    out = np.zeros(slow.size, bool)
    for a, b in zip(starts, ends, strict=True):
        if b - a >= SPELL_RUN:
            out[a:b] = True
    return out


def without_slow_spells(calm: Mapping[int, list[np.ndarray]], kinds: Sequence[object]) -> dict[int, list[np.ndarray]]:
    """The calm service times less their slow spells: runs of ``SPELL_RUN`` or more consecutive
    requests of one worker (in the order it served them), each over ``SPELL_RATIO`` times the
    median of its kind's calm service times.

    Why: a window counts as calm when the foreign load on a worker's CPUs, averaged over the
    window, is under ``tuner.bench.interference``'s threshold (0.25 cores). A neighbour that
    came back in the last tenth of a second of a 2-s window is far under it, and the requests the
    worker served then at a third of its speed entered the replay's sample: in the simulated
    16-core VM four 4-core workers ended a window with 9-14 requests each at 3x their median.
    Their excesses over the tail's threshold (3x the median) were a fraction of a millisecond,
    the tail pool's mean excess fell to 8 ms (the machine's stalls: 20 ms), and one-worker replays
    that borrowed it reported up to 1.5x their truth. Every request does the same work, so
    requests turning slow together are something else on the worker's CPUs; a stall (the VM's
    hiccup) slows one request, and two in a row are rare (about 1 in 10,000 pairs)."""
    pooled: dict[object, list[np.ndarray]] = {}
    for w, parts in calm.items():
        pooled.setdefault(kinds[w], []).extend(p for p in parts if p.size)
    medians = {k: float(np.median(np.concatenate(parts))) for k, parts in pooled.items() if parts}
    out: dict[int, list[np.ndarray]] = {}
    for w, parts in calm.items():
        if kinds[w] not in medians:
            continue
        limit = SPELL_RATIO * medians[kinds[w]]
        kept = [p[~_spells(p > limit)] for p in parts if p.size]
        out[w] = [k for k in kept if k.size]
    return out


def worker_samples(calm: Mapping[int, list[np.ndarray]], kinds: Sequence[object]) -> list[np.ndarray] | None:
    """One service-time sample per worker: its own calm service times when it has
    ``MIN_CALM_REQUESTS``, else those of every worker of its kind (``kinds[w]``: workers of one
    kind serve alike: the same CPUs and threads per worker); None when some kind has too few."""
    chosen = worker_windows(calm, kinds)
    return None if chosen is None else joined(chosen)


def joined(windows: Sequence[list[np.ndarray]]) -> list[np.ndarray]:
    """Each worker's sample, its windows' parts joined (``worker_windows``); workers of a kind that
    share its pooled parts share one array (``estimate`` pools their excesses once)."""
    seen: dict[int, np.ndarray] = {}
    return [seen.setdefault(id(parts), np.concatenate(parts)) for parts in windows]


def worker_windows(calm: Mapping[int, list[np.ndarray]], kinds: Sequence[object]) -> list[list[np.ndarray]] | None:
    """``worker_samples``'s choice, as the windows' parts each sample is joined from (workers of a
    kind that borrow its pooled sample get one list object)."""
    by_kind: dict = {}
    for w, parts in calm.items():
        by_kind.setdefault(kinds[w], []).extend(p for p in parts if p.size)
    out = []
    for w, kind in enumerate(kinds):
        own = [p for p in calm.get(w, []) if p.size]
        if sum(p.size for p in own) >= MIN_CALM_REQUESTS:
            out.append(own)
            continue
        if sum(p.size for p in by_kind.get(kind, [])) < MIN_CALM_REQUESTS:
            return None
        out.append(by_kind[kind])
    return out
