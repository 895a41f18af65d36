"""Screening calibration: configs measured both as a screening trial and in full, interleaved.

    python -m experiments.scale.screen_calibration --model onnx:squeezenet --p99 50ms --configs 10 \\
        --out calibration.jsonl [--window 2s] [--scenario server] [--confidence 0.95] [--stop-after 150s] [--seed 1]

The configs are the study's baselines, then configs drawn (seeded) from the default search space of
this machine. Each is measured with the study's full settings (``tuner.bench.measure``) and with its
screening settings (``tuner.search.screening.screen_settings``), in alternating order (screen then
full, full then screen, ...), so that a drift of the machine hits both fidelities alike. One JSON line
per measurement is appended to ``--out`` as soon as it ends (a run cut short keeps every pair it
finished): config, fidelity, wall seconds (worker start included: what a trial costs) and the
result. ``experiments/scale/summarize.py`` turns the pairs into the measured cost ratio (screen time
/ full time) and the lognormal error of screen vs full (mean and sigma of ln(screen / full)), the two
figures the study and the replay assume (0.3 and sigma 0.10).
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

from tuner.bench.measure import SCENARIOS, MeasureSettings, measure
from tuner.bench.model import inspect_model
from tuner.machine.placement import Params, plan
from tuner.machine.sysfs import read_topology
from tuner.machine.topology import Topology
from tuner.search.screening import SCREEN, screen_settings
from tuner.search.space import load_space
from tuner.search.study import baselines
from tuner.units import parse_bound, parse_duration

FULL = "full"


def pick_configs(topology: Topology, count: int, seed: int, space: str = "default") -> list[tuple[str, Params]]:
    """The baselines (name, params), then configs of the search space drawn without replacement
    (name ""), ``count`` in all, distinct."""
    chosen: dict[Params, str] = {}
    for name, params in baselines(topology):
        if len(chosen) < count:
            chosen.setdefault(params, name)
    pool = [params for _, params in load_space(space, topology).configurations() if params not in chosen]
    random.Random(seed).shuffle(pool)
    for params in pool[: max(0, count - len(chosen))]:
        chosen[params] = ""
    return [(name, params) for params, name in chosen.items()]


def measure_once(topology: Topology, params: Params, model, settings: MeasureSettings) -> tuple[dict, float]:
    """One measurement: its result and its wall seconds, planning and worker start included."""
    began = time.monotonic()
    result = measure(plan(topology, params), model, settings)
    return result.to_dict(), time.monotonic() - began


def _terminate(signum, _frame) -> None:
    raise SystemExit(128 + signum)  # unwinds measure(): its workers are stopped on the way out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="onnx:squeezenet")
    ap.add_argument("--p99", default="50ms")
    ap.add_argument("--configs", type=int, default=10, help="configs to measure at both fidelities")
    ap.add_argument("--window", default="2s", help="the full measurement's window (the study's --window)")
    ap.add_argument("--scenario", default="server", choices=SCENARIOS)
    ap.add_argument("--confidence", type=float, default=0.95, help="the full measurement's (the study's --confidence)")
    ap.add_argument("--stop-after", default=None, help="start no config after this long, e.g. 150s")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True, help="JSON lines, appended as measurements end")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    stop_after_s = parse_duration(args.stop_after, "--stop-after") if args.stop_after else None
    topology = read_topology("/")
    model = inspect_model(args.model)
    full = MeasureSettings(scenario=args.scenario, p99_bound_s=parse_bound(args.p99),
                           window_s=parse_duration(args.window, "--window"), confidence=args.confidence)
    fidelities = {FULL: full, SCREEN: screen_settings(full)}
    configs = pick_configs(topology, args.configs, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    began, longest_pair_s = time.monotonic(), 0.0
    print(f"{len(configs)} configs of {model.name} at P99 <= {args.p99}, {len(topology.usable_cpus)} CPUs", flush=True)
    for i, (baseline, params) in enumerate(configs):
        elapsed = time.monotonic() - began
        if stop_after_s is not None and elapsed + longest_pair_s > stop_after_s:
            print(f"stopping after {i} configs: the next pair would end after --stop-after", flush=True)
            break
        pair_began = time.monotonic()
        for k, fidelity in enumerate((SCREEN, FULL) if i % 2 == 0 else (FULL, SCREEN)):
            settings = replace(fidelities[fidelity], seed=args.seed * 1000 + 2 * i + k)
            result, wall_s = measure_once(topology, params, model, settings)
            record = {"index": i, "label": params.label(), "baseline": baseline, "fidelity": fidelity,
                      "order": k, "wall_s": wall_s, "window_s": settings.window_s, "result": result}
            with args.out.open("a") as f:
                f.write(json.dumps(record, default=float) + "\n")
            print(f"  {params.label():<28} {fidelity:<6} {result['throughput']:8.1f} req/s "
                  f"{'met' if result['feasible'] else 'missed':<6} {wall_s:5.1f} s", flush=True)
        longest_pair_s = max(longest_pair_s, time.monotonic() - pair_began)
    return 0


if __name__ == "__main__":
    sys.exit(main())
