"""An independent reference harness: the highest Poisson request rate a config sustains under a P99 bound.

    .venv/bin/python -m experiments.reference_harness --compare --out experiments/results/harness-DATE
        [--cases squeezenet:100ms,resnet50:1s | --model FILE_OR_onnx:NAME --p99 100ms]
        [--configs ort_default,both_cores,one_per_core] [--run-s 20] [--warmup-s 2] [--max-rates 6]
        [--capacity-s 5] [--drain-s S] [--rel-tol 0.05] [--seed 0] [--placetune-args '--window 2s']
        [--also-placetune-args '--estimator replay'] [--bracket]
        [--dry-run]

It shares no code with placetune: it imports nothing from ``tuner``. It is plain ``multiprocessing``
(spawn) plus ``onnxruntime``, so that a disagreement with ``placetune measure`` points at one of the
two rather than at code both use.

Workers. N processes; each pins itself with ``os.sched_setaffinity`` to its CPU list (or stays
unpinned), creates one ``InferenceSession`` (intra-op threads as configured, 0 = left to ONNX
Runtime; inter-op 1; sequential execution; everything else ONNX Runtime's defaults, spinning
included), feeds random inputs of the model's input shapes (dynamic dimensions set to 1), runs a
warm-up (at least 3 runs and 0.5 s), then takes requests from ONE shared FIFO
(``multiprocessing.Queue``) and reports (id, start, completion time) on a result queue. Times are
``time.monotonic()``: CLOCK_MONOTONIC is system-wide on Linux, so the workers' clocks and the
generator's are the same clock.

Open loop. For one rate the generator (the main process) draws Poisson arrival times for
``warmup_s + run_s`` seconds and puts each request (id, run epoch, scheduled time) into the FIFO at
its scheduled time. Latency = completion - SCHEDULED time: when the generator falls behind, the
delay is charged to the request (no coordinated omission; the send lag is recorded per rate).
Requests scheduled in the first ``warmup_s`` seconds are excluded. The run ends when every
measured request has completed or ``drain_s`` after the last scheduled arrival (default
max(1 s, 3 x bound)); a request not completed by then counts as infinitely late. The run's epoch is
then retired: workers drop the requests still queued for it (so an overloaded rate does not spill
into the next one) and the harness waits until every request it sent is accounted for.

Per rate it records: offered rate, measured requests, completed, unfinished, P50 and P99 (nearest
rank, ``ceil(0.99 n)``-th smallest latency, unfinished ones infinite; ``null`` in JSON when
infinite), whether P99 <= bound ("held"), the completion throughput, the mean service time, the
generator's send lag, and the backlog gap: the median time a worker served nothing between two
requests while the next had already arrived (the result's ``put`` and the next ``get``; 0.36-0.38
ms on the 2-core AMD EPYC VM of 2026-12-07, 6-7% of SqueezeNet's service time: the harness's own
cost per request, which a gapless queue such as placetune's replay does not have).

Search (per config). Closed-loop capacity probe first: 2 x workers requests kept outstanding for
``capacity_s`` (after a 1 s closed-loop warm-up), capacity C = completions / time. Then open-loop
runs: the first at 0.85 C; while nothing failed, x 1.1; while nothing held, x 0.8 (not below
0.01 C); once a held rate lo lies below a failed rate hi (hi = the lowest failed rate, lo = the
highest held rate below it), the geometric midpoint sqrt(lo hi), until hi / lo <= 1 + rel_tol or
``max_rates`` runs were made.

What it reports (``estimate``):
- ``highest_held``: the highest offered rate that held below the lowest failed rate (0 if none held);
- ``lowest_failed``: the lowest offered rate that failed (null if none failed);
- ``interpolated``: between those two, the rate where log P99 crosses log(bound), linear in rate
  between (highest_held, log P99) and (lowest_failed, log P99); equal to highest_held when there is
  no failed rate or the failed rate's P99 is infinite (unfinished requests);
- ``rate`` (the harness's number, used for the ratio): ``interpolated``.

``--compare`` also runs ``placetune measure`` for every config (a subprocess: the CLI, ``--json``),
alternating the order per config (placetune first for the 1st, 3rd, ... config of a case, the
harness first for the 2nd, ...) so drift hits both, and reads only ``throughput`` and
``throughput_ci`` from its JSON. With ``--bracket`` placetune runs before and after each config's
harness runs, and the row's ``ratio`` is the geometric mean of the two ratios (``ratio_before``,
``ratio_after``): on a VM whose speed steps for minutes (experiments/README.md, "The VM's speed
steps") one placetune run beside a 5-minute harness search compares different machines.
The ORT-default config goes to placetune as ``--config FILE``
(workers 1, pin false, intra_op_threads 0, as tuner/search/study.py ``baselines()`` defines it);
the others as flags.

Outputs under ``--out``: ``meta.json``; per case and config ``harness-CASE-CONFIG.json`` (workers,
capacity probe, every rate, estimate) and ``harness-CASE-CONFIG-latencies.npz`` (each rate's
measured latencies in seconds, inf = unfinished); with ``--compare`` ``placetune-CASE-CONFIG.stdout.json``
(placetune's stdout, verbatim), ``placetune-CASE-CONFIG.json`` (command, return code, stderr tail, wall
time, the parsed JSON with non-finite numbers as the strings 'inf'/'nan') and, for the ORT default,
``placetune-CASE-ort_default.config.json``; ``summary.json`` (rewritten after every config, so a run
cut short keeps what it measured). SIGTERM or Ctrl-C stops the workers and the placetune subprocess.

Configs (this 2-core machine; CPU lists are the first two CPUs this process may use):
- ``ort_default``: 1 worker, intra-op 0 (ONNX Runtime's default), not pinned;
- ``both_cores``: 1 worker pinned to CPUs 0,1, intra-op 2 (its threads inherit the process affinity;
  placetune additionally pins each intra-op thread to one CPU);
- ``one_per_core``: 2 workers, each pinned to one CPU, intra-op 1.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import multiprocessing as mp
import os
import platform
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

START_FRACTION = 0.85  # first open-loop rate, times the closed-loop capacity
UP_FACTOR = 1.1  # next rate while nothing failed
DOWN_FACTOR = 0.8  # next rate while nothing held
MIN_FRACTION = 0.01  # no rate below this times the capacity
CAPACITY_WARMUP_S = 1.0
READY_TIMEOUT_S = 300.0
RETIRE_TIMEOUT_S = 120.0
DEFAULT_CASES = "squeezenet:100ms,resnet50:1s"


# ---------------------------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class Config:
    name: str
    cpus: tuple[tuple[int, ...] | None, ...]  # one entry per worker; None = not pinned
    intra_op: int  # 0 = ONNX Runtime's default

    @property
    def workers(self) -> int:
        return len(self.cpus)

    def placetune_args(self, config_file: Path) -> list[str]:
        """The ``placetune measure`` arguments for the same config."""
        if self.name == "ort_default":
            doc = {"format": "placetune-config/1",
                   "params": {"workers": 1, "pin": False, "intra_op_threads": 0},
                   "plan": {"workers": []}}
            config_file.write_text(json.dumps(doc, indent=1) + "\n")
            return ["--config", str(config_file)]
        cores = len(self.cpus[0] or ())
        return ["--workers", str(self.workers), "--cores-per-worker", str(cores), "--intra-op", str(self.intra_op)]


def standard_configs(cpus: list[int] | None = None) -> dict[str, Config]:
    cpus = sorted(os.sched_getaffinity(0)) if cpus is None else cpus
    if len(cpus) < 2:
        raise SystemExit(f"the configs need 2 CPUs, this process may use {cpus}")
    a, b = cpus[0], cpus[1]
    return {
        "ort_default": Config("ort_default", (None,), 0),
        "both_cores": Config("both_cores", ((a, b),), 2),
        "one_per_core": Config("one_per_core", ((a,), (b,)), 1),
    }


def resolve_model(model: str) -> Path:
    """An .onnx path, or onnx:NAME for a model the onnx package ships (backend/test/data/light)."""
    if model.startswith("onnx:"):
        import onnx

        name = model.removeprefix("onnx:")
        path = Path(onnx.__file__).parent / "backend/test/data/light" / f"light_{name}.onnx"
        if not path.is_file():
            raise SystemExit(f"{model}: no {path}")
        return path
    path = Path(model)
    if not path.is_file():
        raise SystemExit(f"model {path} does not exist")
    return path


def parse_duration(text: str) -> float:
    """Seconds from '100ms', '1s', '0.5s', '20000us', '2m' or a bare number of seconds."""
    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(us|ms|s|m)?\s*", text)
    if not found:
        raise ValueError(f"not a duration: {text!r}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, None: 1.0}[found.group(2)]
    return float(found.group(1)) * scale


# ---------------------------------------------------------------------------------------------- workers

_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
           "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
           "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: the worker gets SIGKILL when the harness dies, even by SIGKILL."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def _worker(wid: int, model: str, cpus: tuple[int, ...] | None, intra_op: int, seed: int,
            req_q, res_q, epoch, parent: int) -> None:
    _die_with_parent()
    if os.getppid() != parent:
        return
    try:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = intra_op  # 0: ONNX Runtime's default
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(seed + wid)
        feeds = {}
        for inp in session.get_inputs():
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
            dtype = _DTYPES.get(inp.type, np.float32)
            if np.issubdtype(dtype, np.floating):
                feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
            else:
                feeds[inp.name] = np.zeros(shape, dtype=dtype)
        warm = []
        began = time.monotonic()
        while len(warm) < 3 or time.monotonic() - began < 0.5:
            t = time.monotonic()
            session.run(None, feeds)
            warm.append(time.monotonic() - t)
        res_q.put(("ready", wid, os.getpid(), sorted(os.sched_getaffinity(0)), float(np.median(warm)) * 1e3))
        while True:
            item = req_q.get()
            if item is None:
                return
            rid, ep, _scheduled = item
            if ep != epoch.value:  # a retired run's leftover: drop it, say so
                res_q.put(("drop", ep, rid))
                continue
            start = time.monotonic()
            session.run(None, feeds)
            res_q.put(("done", ep, rid, wid, start, time.monotonic()))
    except KeyboardInterrupt:
        return
    except BaseException:
        with contextlib.suppress(Exception):
            res_q.put(("error", wid, traceback.format_exc()))
        raise


class WorkerError(RuntimeError):
    pass


class WorkerPool:
    """The config's worker processes, one shared request FIFO, one result queue."""

    def __init__(self, model: Path, config: Config, seed: int = 0, ready_timeout_s: float = READY_TIMEOUT_S):
        self.model, self.config, self.seed, self.ready_timeout_s = model, config, seed, ready_timeout_s
        self.ctx = mp.get_context("spawn")
        self.req_q = self.ctx.Queue()
        self.res_q = self.ctx.Queue()
        self.epoch = self.ctx.RawValue("q", 0)
        self.procs: list = []
        self.workers: list[dict] = []
        self._last_check = 0.0

    def __enter__(self) -> WorkerPool:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        for wid, cpus in enumerate(self.config.cpus):
            p = self.ctx.Process(target=_worker, name=f"harness-worker-{wid}", daemon=True,
                                 args=(wid, str(self.model), cpus, self.config.intra_op, self.seed,
                                       self.req_q, self.res_q, self.epoch, os.getpid()))
            p.start()
            self.procs.append(p)
        deadline = time.monotonic() + self.ready_timeout_s
        ready: dict[int, dict] = {}
        while len(ready) < len(self.procs):
            msg = self._get(min(0.5, max(0.0, deadline - time.monotonic())))
            if msg is not None and msg[0] == "ready":
                _, wid, pid, affinity, warm_ms = msg
                ready[wid] = {"worker": wid, "pid": pid, "cpus": affinity, "warmup_median_ms": round(warm_ms, 3)}
            if time.monotonic() > deadline:
                raise WorkerError(f"workers not ready after {self.ready_timeout_s:.0f} s")
        self.workers = [ready[w] for w in sorted(ready)]

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def _check_alive(self) -> None:
        for p in self.procs:
            if p.exitcode is not None:
                raise WorkerError(f"worker {p.name} exited with code {p.exitcode}")

    def _get(self, timeout: float):
        """One message of the result queue, or None after ``timeout``; raises on a worker's error."""
        try:
            msg = self.res_q.get(timeout=timeout) if timeout > 0 else self.res_q.get_nowait()
        except queue.Empty:
            msg = None
        now = time.monotonic()
        if now - self._last_check > 0.5:
            self._last_check = now
            self._check_alive()
        if msg is not None and msg[0] == "error":
            raise WorkerError(f"worker {msg[1]} failed:\n{msg[2]}")
        return msg

    def put(self, rid: int, ep: int, scheduled: float) -> None:
        self.req_q.put((rid, ep, scheduled))

    def new_epoch(self) -> int:
        self.epoch.value += 1
        return self.epoch.value

    def close(self) -> None:
        """Stop every worker (terminate, join, kill if need be); never leaves one behind."""
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        for q in (self.req_q, self.res_q):
            q.cancel_join_thread()  # its feeder thread must not wait on a pipe nobody reads
            q.close()
        self.procs = []


# ---------------------------------------------------------------------------------------------- one run


def percentile_nearest_rank(values: np.ndarray, q: float) -> float:
    """The ceil(q n)-th smallest value (inf counts as the largest); nan for no values."""
    if len(values) == 0:
        return math.nan
    ordered = np.sort(values)
    return float(ordered[max(0, math.ceil(q * len(ordered)) - 1)])


def _ms(seconds: float) -> float | None:
    return None if not math.isfinite(seconds) else round(seconds * 1e3, 3)


def backlog_gaps(scheduled: np.ndarray, done: np.ndarray, service: np.ndarray, worker: np.ndarray) -> np.ndarray:
    """Per worker, the seconds from the end of one request to the start of its next where that next
    one had arrived before the end (a backlog): time the worker served nothing although a request
    waited (the result's ``put``, the next ``get``); the harness's own cost per request."""
    ok = np.isfinite(done) & np.isfinite(service) & (worker >= 0)
    out = []
    for w in np.unique(worker[ok]):
        idx = np.flatnonzero(ok & (worker == w))
        start = done[idx] - service[idx]
        order = np.argsort(start)
        idx, start = idx[order], start[order]
        waiting = scheduled[idx[1:]] < done[idx[:-1]]
        out.append((start[1:] - done[idx[:-1]])[waiting])
    return np.concatenate(out) if out else np.zeros(0)


def summarize_run(rate: float, scheduled: np.ndarray, sent: np.ndarray, done: np.ndarray, service: np.ndarray,
                  measured: np.ndarray, deadline: float, bound_s: float, run_s: float,
                  worker: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
    """One rate's record and its measured latencies (completion - scheduled; inf when not completed by
    ``deadline``). ``measured`` selects the requests outside the warm-up; ``worker`` (who served
    each request, -1 none) gives the backlog gaps (``backlog_gaps``)."""
    finished = np.isfinite(done) & (done <= deadline)
    latency = np.where(finished, done - scheduled, np.inf)[measured]
    lag = (sent - scheduled)[measured]
    lag = lag[np.isfinite(lag)]
    p99 = percentile_nearest_rank(latency, 0.99)
    n = int(measured.sum())
    completed = int(finished[measured].sum())
    record = {
        "rate": round(rate, 4),
        "requests": n,
        "arrival_rate": round(n / run_s, 4),
        "completed": completed,
        "unfinished": n - completed,
        "throughput": round(completed / run_s, 4),
        "p50_ms": _ms(percentile_nearest_rank(latency, 0.50)),
        "p99_ms": _ms(p99),
        "held": bool(n > 0 and p99 <= bound_s),
        "mean_service_ms": _ms(float(np.nanmean(service[measured]))) if completed else None,
        "send_lag_p99_ms": _ms(percentile_nearest_rank(lag, 0.99)) if len(lag) else None,
        "send_lag_max_ms": _ms(float(lag.max())) if len(lag) else None,
    }
    if worker is not None:
        gaps = backlog_gaps(scheduled, done, service, worker)
        record["backlog_gaps"] = int(gaps.size)
        record["backlog_gap_p50_ms"] = _ms(float(np.median(gaps))) if gaps.size else None
    return record, latency


def run_rate(pool: WorkerPool, rate: float, *, run_s: float, warmup_s: float, drain_s: float, bound_s: float,
             rng: np.random.Generator, stall: tuple[float, float] | None = None) -> tuple[dict, np.ndarray]:
    """One open-loop Poisson run at ``rate``. ``stall`` = (at_s, for_s) makes the generator sleep once
    (tests: latency still counts from the scheduled time)."""
    total = warmup_s + run_s
    gaps = rng.exponential(1.0 / rate, size=int(rate * total * 1.2 + 50))
    while gaps.sum() < total:
        gaps = np.concatenate([gaps, rng.exponential(1.0 / rate, size=int(rate * total * 0.2 + 50))])
    offsets = np.cumsum(gaps)
    offsets = offsets[offsets < total]
    n = len(offsets)
    ep = pool.new_epoch()
    t0 = time.monotonic() + 0.02
    scheduled = t0 + offsets
    measured = offsets >= warmup_s
    sent = np.full(n, np.nan)
    done = np.full(n, np.nan)
    service = np.full(n, np.nan)
    served_by = np.full(n, -1)
    deadline = t0 + total + drain_s
    outstanding = int(measured.sum())

    def take(msg) -> None:
        nonlocal outstanding
        if msg is not None and msg[0] == "done" and msg[1] == ep:
            _, _, rid, wid, start, end = msg
            done[rid], service[rid], served_by[rid] = end, end - start, wid
            if measured[rid] and end <= deadline:
                outstanding -= 1

    began = time.monotonic()
    i = 0
    while i < n:
        now = time.monotonic()
        while i < n and scheduled[i] <= now:
            pool.put(i, ep, float(scheduled[i]))
            sent[i] = time.monotonic()
            i += 1
        if stall is not None and now - t0 >= stall[0]:
            time.sleep(stall[1])
            stall = None
        if i < n:
            take(pool._get(scheduled[i] - time.monotonic()))
            while (msg := pool._get(0)) is not None:  # the rest of what is there, without waiting
                take(msg)
    while outstanding > 0 and (now := time.monotonic()) < deadline:
        take(pool._get(min(0.1, deadline - now)))
    # retire the epoch: workers drop what is still queued; wait until every request is accounted for
    pool.new_epoch()
    accounted = int(np.isfinite(done).sum())
    dropped = 0
    give_up = time.monotonic() + RETIRE_TIMEOUT_S
    while accounted + dropped < n:
        if time.monotonic() > give_up:
            raise WorkerError(f"{n - accounted - dropped} request(s) of the run at {rate:.2f}/s never came back")
        msg = pool._get(0.1)
        if msg is None or msg[1] != ep:
            continue
        if msg[0] == "drop":
            dropped += 1
        elif msg[0] == "done":
            take(msg)
            accounted += 1
    record, latency = summarize_run(rate, scheduled, sent, done, service, measured, deadline, bound_s, run_s,
                                    worker=served_by)
    record["dropped_after_run"] = dropped
    record["elapsed_s"] = round(time.monotonic() - began, 2)
    return record, latency


def capacity_probe(pool: WorkerPool, seconds: float, warmup_s: float = CAPACITY_WARMUP_S) -> dict:
    """Closed loop, 2 x workers requests outstanding: completions per second after ``warmup_s``."""
    ep = pool.new_epoch()
    depth = 2 * pool.config.workers
    next_id = 0
    for _ in range(depth):
        pool.put(next_id, ep, time.monotonic())
        next_id += 1
    t0 = time.monotonic()
    start, end = t0 + warmup_s, t0 + warmup_s + seconds
    count, services = 0, []
    in_flight = depth
    while in_flight:
        msg = pool._get(0.1)
        if msg is None or msg[0] != "done" or msg[1] != ep:
            continue
        in_flight -= 1
        finished = msg[5]
        if start <= finished < end:
            count += 1
            services.append(msg[5] - msg[4])
        if time.monotonic() < end:
            pool.put(next_id, ep, time.monotonic())
            next_id += 1
            in_flight += 1
    pool.new_epoch()
    return {"capacity": round(count / seconds, 4), "completions": count, "seconds": seconds,
            "outstanding": depth, "mean_service_ms": _ms(float(np.mean(services))) if services else None}


# ---------------------------------------------------------------------------------------------- search


def next_rate(history: list[dict], capacity: float, rel_tol: float) -> float | None:
    """The next rate to run, or None when the bracket is tight enough (see the module docstring)."""
    if not history:
        return START_FRACTION * capacity
    failed = [r["rate"] for r in history if not r["held"]]
    hi = min(failed) if failed else None
    held = [r["rate"] for r in history if r["held"] and (hi is None or r["rate"] < hi)]
    lo = max(held) if held else None
    if lo is None:
        nxt = hi * DOWN_FACTOR
        floor = MIN_FRACTION * capacity
        if hi <= floor:
            return None
        return max(nxt, floor)
    if hi is None:
        return lo * UP_FACTOR
    if hi / lo <= 1 + rel_tol:
        return None
    return math.sqrt(lo * hi)


def estimate(history: list[dict], bound_s: float) -> dict:
    """highest_held, lowest_failed, interpolated (log P99 linear in rate between them) and ``rate``."""
    failed = [r for r in history if not r["held"]]
    hi = min(failed, key=lambda r: r["rate"]) if failed else None
    held = [r for r in history if r["held"] and (hi is None or r["rate"] < hi["rate"])]
    lo = max(held, key=lambda r: r["rate"]) if held else None
    out = {"highest_held": lo["rate"] if lo else 0.0, "lowest_failed": hi["rate"] if hi else None,
           "interpolated": lo["rate"] if lo else 0.0, "method": "highest held"}
    if lo and hi and lo["p99_ms"] and hi["p99_ms"]:
        y1, y2, x = math.log(lo["p99_ms"]), math.log(hi["p99_ms"]), math.log(bound_s * 1e3)
        if y2 > y1:
            frac = min(1.0, max(0.0, (x - y1) / (y2 - y1)))
            out["interpolated"] = round(lo["rate"] + frac * (hi["rate"] - lo["rate"]), 4)
            out["method"] = "log-P99 interpolation"
    out["rate"] = out["interpolated"]
    return out


def search(pool: WorkerPool, *, bound_s: float, run_s: float, warmup_s: float, drain_s: float, max_rates: int,
           capacity_s: float, rel_tol: float, rng: np.random.Generator, rates: list[float] | None = None,
           log=print) -> dict:
    """Capacity probe, then open-loop runs (``rates`` given: exactly those, no search)."""
    probe = capacity_probe(pool, capacity_s)
    log(f"    capacity (closed loop): {probe['capacity']:.1f}/s, service {probe['mean_service_ms']} ms")
    history: list[dict] = []
    latencies: dict[str, np.ndarray] = {}  # rate_K: the K-th run's measured latencies (s, inf = unfinished)
    todo = list(rates) if rates is not None else None
    while len(history) < (len(todo) if todo is not None else max_rates):
        rate = todo[len(history)] if todo is not None else next_rate(history, max(probe["capacity"], 1e-6), rel_tol)
        if rate is None:
            break
        record, latency = run_rate(pool, rate, run_s=run_s, warmup_s=warmup_s, drain_s=drain_s, bound_s=bound_s,
                                   rng=rng)
        latencies[f"rate_{len(history)}"] = latency
        history.append(record)
        p99 = "inf" if record["p99_ms"] is None else f"{record['p99_ms']:.1f} ms"
        log(f"    {rate:8.2f}/s  requests {record['requests']:6d}  completed {record['completed']:6d}  "
            f"P50 {record['p50_ms']} ms  P99 {p99:>10}  {'held' if record['held'] else 'FAILED'}"
            + (f"  (gap {record['backlog_gap_p50_ms']} ms)" if record.get("backlog_gap_p50_ms") is not None else ""))
    return {"capacity_probe": probe, "rates": history, "estimate": estimate(history, bound_s),
            "_latencies": latencies}


def measure_config(model: Path, config: Config, *, bound_s: float, run_s: float = 20.0, warmup_s: float = 2.0,
                   drain_s: float | None = None, max_rates: int = 6, capacity_s: float = 5.0, rel_tol: float = 0.05,
                   seed: int = 0, rates: list[float] | None = None, log=print) -> dict:
    """Start the config's workers, search, stop them (always)."""
    drain = max(1.0, 3 * bound_s) if drain_s is None else drain_s
    began = time.monotonic()
    with WorkerPool(model, config, seed=seed) as pool:
        log(f"    workers ready: {pool.workers}")
        result = search(pool, bound_s=bound_s, run_s=run_s, warmup_s=warmup_s, drain_s=drain, max_rates=max_rates,
                        capacity_s=capacity_s, rel_tol=rel_tol, rng=np.random.default_rng(seed), rates=rates, log=log)
        result["workers"] = pool.workers
    result.update(config=asdict(config), model=str(model), bound_ms=bound_s * 1e3, run_s=run_s, warmup_s=warmup_s,
                  drain_s=drain, rel_tol=rel_tol, seed=seed, wall_s=round(time.monotonic() - began, 1))
    return result


# ---------------------------------------------------------------------------------------------- placetune


def placetune_command(override: str | None) -> list[str]:
    if override:
        return override.split()
    local = Path(sys.executable).parent / "placetune"
    if local.exists():
        return [str(local)]
    found = shutil.which("placetune")
    return [found] if found else [sys.executable, "-m", "tuner.cli"]


def run_placetune(cmd: list[str], log=print) -> dict:
    """Run ``placetune measure ... --json``; its stdout JSON kept raw, only throughput(_ci) read.
    Stopped with SIGTERM (then SIGKILL) if the harness is interrupted."""
    log(f"    $ {' '.join(cmd)}")
    began = time.monotonic()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            stdout, _ = proc.communicate()
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    out = {"command": cmd, "returncode": proc.returncode, "wall_s": round(time.monotonic() - began, 1),
           "stdout": stdout, "stderr_tail": stderr[-4000:], "json": None, "throughput": None,
           "throughput_ci": None, "problem": None}
    try:
        doc = json.loads(stdout)
    except json.JSONDecodeError:
        out["problem"] = f"no JSON on stdout (rc {proc.returncode}); stdout starts {stdout[:200]!r}"
        return out
    out["json"] = doc
    missing = [k for k in ("throughput", "throughput_ci") if not isinstance(doc, dict) or k not in doc]
    if missing:
        out["problem"] = (f"placetune's JSON has no {' / '.join(missing)} (its output format changed?); "
                          f"keys: {sorted(doc)[:30] if isinstance(doc, dict) else type(doc).__name__}")
    if isinstance(doc, dict):
        out["throughput"] = doc.get("throughput")
        out["throughput_ci"] = doc.get("throughput_ci")
    return out


# ---------------------------------------------------------------------------------------------- driver


def parse_cases(text: str) -> list[tuple[str, str, float]]:
    """'squeezenet:100ms,resnet50:1s' -> [(case, model, bound_s)]; a case is a model NAME (onnx:NAME)
    or FILE.onnx:BOUND."""
    cases = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        model, _, bound = part.rpartition(":")
        if not model:
            raise SystemExit(f"--cases: {part!r} is not MODEL:BOUND")
        spec = model if model.endswith(".onnx") or model.startswith("onnx:") else f"onnx:{model}"
        cases.append((Path(model).stem.removeprefix("onnx:"), spec, parse_duration(bound)))
    return cases


def estimated_seconds(args, n_cases: int, n_configs: int, drain_of, bounds: list[float]) -> tuple[float, float]:
    """(typical, at most) seconds of a full run: per config 5 s start-up + probe + max_rates runs,
    each warm-up + run + (typical: 1 s / at most: the drain); plus --placetune-guess-s per placetune run."""
    typical = most = 0.0
    for bound in bounds:
        per = 5 + CAPACITY_WARMUP_S + args.capacity_s
        typical += n_configs * (per + args.max_rates * (args.warmup_s + args.run_s + 1.0))
        most += n_configs * (per + args.max_rates * (args.warmup_s + args.run_s + drain_of(bound) + 1.0))
    if args.compare:
        runs = 2 if getattr(args, "bracket", False) else 1
        typical += n_cases * n_configs * args.placetune_guess_s * runs
        most += n_cases * n_configs * args.placetune_guess_s * runs
    return typical, most


def _bracketed(before, after) -> float | None:
    """The geometric mean of the ratios of placetune's figure before and after the harness's runs."""
    try:
        return round(math.sqrt(float(before) * float(after)), 4) if before and after else before or after
    except (TypeError, ValueError):
        return None


def _ratio(a, b) -> float | None:
    try:
        return round(float(a) / float(b), 4) if b else None
    except (TypeError, ValueError):
        return None


def json_safe(value):
    """``value`` with every non-finite float as the string 'inf', '-inf' or 'nan' (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _write(path: Path, doc) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(json_safe(doc), indent=1, allow_nan=False) + "\n")
    tmp.replace(path)


def _num(value, width: int = 0) -> str:
    try:
        return f"{float(value):{width}.1f}"
    except (TypeError, ValueError):
        return f"{'-':>{width}}"


def print_table(rows: list[dict]) -> None:
    print(f"\n{'case':<12} {'config':<14} {'harness/s':>10} {'[held, failed]':>20} {'placetune/s':>12} "
          f"{'placetune interval':>22} {'ratio':>7}")
    for r in rows:
        h = r["harness"]
        bracket = f"[{_num(h['highest_held'])}, {_num(h['lowest_failed'])}]" if h else "-"
        p = r.get("placetune") or {}
        ci = p.get("throughput_ci")
        ci_text = f"[{_num(ci[0])}, {_num(ci[1])}]" if isinstance(ci, list | tuple) and len(ci) == 2 else "-"
        ratio = f"{r['ratio']:.3f}" if isinstance(r.get("ratio"), float) else "-"
        print(f"{r['case']:<12} {r['config']:<14} {_num(h['rate'] if h else None, 10)} {bracket:>20} "
              f"{_num(p.get('throughput'), 12)} {ci_text:>22} {ratio:>7}")
        after = r.get("placetune_after")
        if after:
            ci = after.get("throughput_ci")
            ci_text = f"[{_num(ci[0])}, {_num(ci[1])}]" if isinstance(ci, list | tuple) and len(ci) == 2 else "-"
            print(f"{'':<12} {'  (after)':<14} {'':>10} {'':>20} {_num(after.get('throughput'), 12)} {ci_text:>22} "
                  f"{'':>7}")
        also = r.get("placetune_also")
        if also:
            ci = also.get("throughput_ci")
            ci_text = f"[{_num(ci[0])}, {_num(ci[1])}]" if isinstance(ci, list | tuple) and len(ci) == 2 else "-"
            ratio = f"{r['ratio_also']:.3f}" if isinstance(r.get("ratio_also"), float) else "-"
            print(f"{'':<12} {'  (also)':<14} {'':>10} {'':>20} {_num(also.get('throughput'), 12)} {ci_text:>22} "
                  f"{ratio:>7}")


def _terminate(signum, _frame) -> None:
    raise SystemExit(128 + signum)  # unwinds: the pool's and the subprocess's finally blocks stop them


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cases", default=DEFAULT_CASES, help=f"MODEL:BOUND,... (default {DEFAULT_CASES})")
    ap.add_argument("--model", help="one case: an .onnx file or onnx:NAME (with --p99; overrides --cases)")
    ap.add_argument("--p99", help="the bound of --model, e.g. 100ms")
    ap.add_argument("--configs", default="ort_default,both_cores,one_per_core")
    ap.add_argument("--run-s", type=float, default=20.0, help="measured seconds per rate (default 20)")
    ap.add_argument("--warmup-s", type=float, default=2.0, help="excluded seconds before each run (default 2)")
    ap.add_argument("--drain-s", type=float, default=None,
                    help="grace after the last arrival (default max(1, 3 x bound))")
    ap.add_argument("--max-rates", type=int, default=6, help="open-loop runs per config (default 6)")
    ap.add_argument("--capacity-s", type=float, default=5.0, help="closed-loop capacity probe seconds (default 5)")
    ap.add_argument("--rel-tol", type=float, default=0.05, help="stop when lowest failed / highest held <= 1 + this")
    ap.add_argument("--rates", help="comma-separated fixed rates instead of the search")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compare", action="store_true", help="also run 'placetune measure' per config")
    ap.add_argument("--placetune", help="the placetune command (default: the one next to this Python)")
    ap.add_argument("--placetune-args", default="", help="extra 'placetune measure' arguments, e.g. '--window 5s'")
    ap.add_argument("--also-placetune-args", default="",
                    help="a second placetune run per config right after the first, with these arguments added "
                         "(e.g. '--estimator replay'): two estimators side by side in one run")
    ap.add_argument("--bracket", action="store_true",
                    help="with --compare: placetune before and after each config's harness runs, the ratio "
                         "of their geometric mean (the machine's drift hits both sides alike)")
    ap.add_argument("--placetune-guess-s", type=float, default=60.0,
                    help="assumed seconds per placetune measure, for the time estimate only (default 60)")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default experiments/results/harness-DATE)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and its estimated time, run nothing")
    args = ap.parse_args(argv)

    if args.model:
        if not args.p99:
            ap.error("--model needs --p99")
        cases = [(Path(args.model.removeprefix("onnx:")).stem, args.model, parse_duration(args.p99))]
    else:
        cases = parse_cases(args.cases)
    every = standard_configs()
    try:
        configs = [every[name] for name in filter(None, args.configs.split(","))]
    except KeyError as exc:
        ap.error(f"--configs: unknown {exc}; known: {', '.join(every)}")
    fixed_rates = [float(r) for r in args.rates.split(",")] if args.rates else None
    if fixed_rates:
        args.max_rates = len(fixed_rates)
    drain_of = (lambda b: max(1.0, 3 * b)) if args.drain_s is None else (lambda b: args.drain_s)
    typical, most = estimated_seconds(args, len(cases), len(configs), drain_of, [b for _, _, b in cases])
    print(f"plan: {len(cases)} case(s) x {len(configs)} config(s), up to {args.max_rates} rate(s) of "
          f"{args.warmup_s:g}+{args.run_s:g} s each{', plus placetune measure per config' if args.compare else ''}")
    print(f"estimated duration: about {typical / 60:.1f} min (at most {most / 60:.1f} min"
          f"{f', assuming {args.placetune_guess_s:g} s per placetune measure' if args.compare else ''})", flush=True)
    if args.dry_run:
        return 0

    out = args.out or Path("experiments/results") / f"harness-{datetime.now():%Y-%m-%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    import onnxruntime

    _write(out / "meta.json", {"argv": sys.argv, "args": {k: str(v) for k, v in vars(args).items()},
                               "host": platform.node(), "python": platform.python_version(),
                               "onnxruntime": onnxruntime.__version__, "cpus": sorted(os.sched_getaffinity(0)),
                               "started": datetime.now().isoformat(timespec="seconds"),
                               "estimated_s": [round(typical), round(most)]})
    signal.signal(signal.SIGTERM, _terminate)
    placetune = placetune_command(args.placetune)
    rows: list[dict] = []
    summary = {"complete": False, "rows": rows, "harness_rate": "estimate.rate: log-P99 interpolation between the "
               "highest held and lowest failed offered rate (highest held when not interpolable)",
               "ratio": "placetune throughput / harness rate"}
    began = time.monotonic()
    for case, model_spec, bound_s in cases:
        model = resolve_model(model_spec)
        for k, config in enumerate(configs):
            print(f"\n== {case} (P99 <= {bound_s * 1e3:g} ms), config {config.name}", flush=True)
            tag = f"{case}-{config.name}"
            row = {"case": case, "config": config.name, "bound_ms": bound_s * 1e3, "harness": None,
                   "placetune": None, "ratio": None, "order": []}

            def harness(tag=tag, model=model, config=config, bound_s=bound_s, row=row):
                print("  harness:", flush=True)
                result = measure_config(model, config, bound_s=bound_s, run_s=args.run_s, warmup_s=args.warmup_s,
                                        drain_s=args.drain_s, max_rates=args.max_rates, capacity_s=args.capacity_s,
                                        rel_tol=args.rel_tol, seed=args.seed, rates=fixed_rates)
                np.savez_compressed(out / f"harness-{tag}-latencies.npz", rates=[r["rate"] for r in result["rates"]],
                                    **result.pop("_latencies"))
                _write(out / f"harness-{tag}.json", result)
                row["harness"] = result["estimate"]
                row["order"].append("harness")

            def placetune_run(tag=tag, model_spec=model_spec, config=config, bound_s=bound_s, row=row, after=False):
                variants = [("placetune_after", "-after", args.placetune_args) if after
                            else ("placetune", "", args.placetune_args)]
                if args.also_placetune_args and not after:  # the second variant, right after the first
                    variants.append(("placetune_also", "-also", f"{args.placetune_args} {args.also_placetune_args}"))
                for key, suffix, options in variants:
                    print(f"  {key}: {options}", flush=True)
                    extra = config.placetune_args(out / f"placetune-{tag}.config.json")
                    cmd = [*placetune, "measure", "--model", model_spec, "--p99", f"{bound_s * 1e3:g}ms", *extra,
                           *options.split(), "--json"]
                    result = run_placetune(cmd)
                    (out / f"placetune-{tag}{suffix}.stdout.json").write_text(result.pop("stdout"))  # verbatim
                    _write(out / f"placetune-{tag}{suffix}.json", result)
                    if result["problem"]:
                        print(f"    placetune: {result['problem']}", flush=True)
                    print(f"    placetune: throughput {result['throughput']} interval {result['throughput_ci']} "
                          f"(rc {result['returncode']}, {result['wall_s']} s)", flush=True)
                    row[key] = {k: result[k] for k in ("throughput", "throughput_ci", "returncode", "problem",
                                                       "wall_s")}
                    row["order"].append(key)

            steps = ([harness] if not args.compare
                     else [placetune_run, harness, lambda: placetune_run(after=True)] if args.bracket
                     else [placetune_run, harness] if k % 2 == 0 else [harness, placetune_run])
            for step in steps:
                step()
            if row["placetune"] and row["harness"]:
                row["ratio"] = _ratio(row["placetune"]["throughput"], row["harness"]["rate"])
                row["ratio_vs_highest_held"] = _ratio(row["placetune"]["throughput"], row["harness"]["highest_held"])
            if row.get("placetune_after") and row["placetune"] and row["harness"]:
                # placetune's figure at the harness's time: the geometric mean of the one before and after
                row["ratio_before"], row["ratio_after"] = row["ratio"], _ratio(
                    row["placetune_after"]["throughput"], row["harness"]["rate"])
                row["ratio"] = _bracketed(row["ratio_before"], row["ratio_after"])
            if row.get("placetune_also") and row["harness"]:
                row["ratio_also"] = _ratio(row["placetune_also"]["throughput"], row["harness"]["rate"])
            rows.append(row)
            summary["elapsed_s"] = round(time.monotonic() - began, 1)
            _write(out / "summary.json", summary)
    summary["complete"] = True
    _write(out / "summary.json", summary)
    print_table(rows)
    print(f"\nwrote {out} in {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
