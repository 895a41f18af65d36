"""The best batched config vs the best unbatched one, each found by placetune's own search, raced.

    python -m experiments.batch_search --case onnx:squeezenet:200ms --case onnx:squeezenet:30ms \\
        --n-trials 10 --out experiments/results/batch-search-DATE

For each case (model and P99 bound) two studies run, with the same budget and settings, through the
real CLI (``placetune optimize``, no race, no MLflow): the *unbatched* arm searches
``search_spaces/placement.yaml`` (batching off), the *batched* arm the default space with
``max_batch`` restricted to 2..32 (every batch timeout). Each arm's winner is its best feasible
searched config (in the batched arm: with ``max_batch > 1``; the baselines do not batch: the
unbatched arm measures them and the batched study starts with copies of those trials, so its
``--n-trials`` all go to batched configs; ``--arm-timeout`` bounds each arm's wall time). The two
winners then race in interleaved rotating rounds (``tuner.search.race.race``, the final race of
``optimize``: 3 to 6 rounds, until the 95% interval of the ratio is settled, or the time limit),
measured with the studies' settings and a fresh seed each time; the result is batched/unbatched
throughput with Fieller's 95% interval.

Kept in OUT: ``studies.db`` (both arms' Optuna studies, every trial), ``CASE-ARM.log`` (each
optimize run's output), ``race.jsonl`` (every race measurement's full result) and ``summary.json``
(written after each case, so a killed run keeps what it finished).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import optuna
import yaml

from tuner.bench.measure import MeasureSettings, measure
from tuner.bench.model import inspect_model
from tuner.machine.placement import plan
from tuner.machine.sysfs import read_topology
from tuner.results.trials import feasible_trials, result_of
from tuner.search.race import Entrant, race
from tuner.search.space import SPACES_DIR
from tuner.units import parse_duration

ARMS = ("unbatched", "batched")


def _case(text: str) -> tuple[str, str]:
    model, _, bound = text.rpartition(":")
    if not model or not bound:
        raise SystemExit(f"--case {text!r}: expected MODEL:BOUND, e.g. onnx:squeezenet:200ms")
    parse_duration(bound, "--case")
    return model, bound


def _slug(model: str, bound: str) -> str:
    return f"{Path(model.replace('onnx:', '')).stem}-{bound}"


def batched_space(out: Path, batches: list[int]) -> Path:
    """The default space with ``max_batch`` restricted to ``batches`` (all > 1), written to OUT."""
    data = yaml.safe_load((SPACES_DIR / "default.yaml").read_text())
    data["name"] = "batched"
    data["dimensions"]["max_batch"] = batches
    path = out / "space-batched.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def copy_baselines(storage: str, source: str, target: str) -> int:
    """Start study ``target`` with the baseline trials ``source`` measured (values, results,
    attributes; no sampler params): the baselines do not batch, so the batched arm would measure them
    again only to discard them. A ``target`` that already has trials (a re-run) is left as it is.
    Returns how many copies ``target`` holds."""
    src = optuna.load_study(study_name=source, storage=storage)
    dst = optuna.create_study(study_name=target, storage=storage, directions=["maximize", "minimize"],
                              load_if_exists=True)
    if not dst.get_trials(deepcopy=False):
        for t in src.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
            if t.user_attrs.get("baseline") and "result" in t.user_attrs:
                dst.add_trial(optuna.trial.create_trial(values=t.values, system_attrs=t.system_attrs,
                                                        user_attrs={**t.user_attrs, "copied_from": source}))
    return sum(1 for t in dst.get_trials(deepcopy=False) if "copied_from" in t.user_attrs)


def run_arm(args, model: str, bound: str, arm: str, space: str, storage: str,
            n_trials: int) -> tuple[int, float]:
    name = f"{_slug(model, bound)}-{arm}"
    cmd = [*shlex.split(args.placetune), "optimize", "--model", model, "--p99", bound, "--space", space,
           "--n-trials", str(n_trials), "--window", args.window, "--confidence", str(args.confidence),
           "--seed", str(args.seed), "--storage", storage, "--study-name", name, "--no-mlflow",
           "--revalidate", "0", "--out", str(args.out / f"{name}.json"),
           *(["--timeout", args.arm_timeout] if args.arm_timeout else [])]
    began = time.monotonic()
    with (args.out / f"{name}.log").open("a") as log:
        log.write("$ " + shlex.join(cmd) + "\n")
        log.flush()
        rc = run_child(cmd, log, {**os.environ, "COLUMNS": "120"})
    return rc, time.monotonic() - began


def run_child(cmd: list[str], log, env: dict[str, str], grace_s: float = 60.0) -> int:
    """Run one optimize and wait for it. Stopped (Ctrl-C, or SIGTERM once ``main`` has turned it into
    SystemExit), this script passes SIGTERM on and waits up to ``grace_s`` for the tuner to fail its
    trial and stop its workers (then SIGKILL): no tuner or worker outlives the benchmark."""
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        return proc.wait()
    except BaseException:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise


def arm_winner(storage: str, name: str, batched: bool) -> tuple[optuna.trial.FrozenTrial | None, int]:
    """The arm's best feasible config (batched: max_batch > 1; unbatched: baselines included) and how
    many trials it measured."""
    study = optuna.load_study(study_name=name, storage=storage)
    measured = sum(1 for t in study.get_trials(deepcopy=False) if "result" in t.user_attrs)
    pool = [t for t in feasible_trials(study) if (result_of(t).params.max_batch > 1) == batched]
    best = max(pool, key=lambda t: (t.values[0], -t.values[1], -t.number)) if pool else None
    return best, measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", required=True, help="MODEL:BOUND, e.g. onnx:squeezenet:200ms")
    parser.add_argument("--n-trials", type=int, default=10,
                        help="configs each arm's study measures (the batched arm: besides the baselines)")
    parser.add_argument("--arm-timeout", default="", help="stop starting an arm's trials after this, e.g. 10m")
    parser.add_argument("--window", default="2s")
    parser.add_argument("--confidence", type=float, default=0.95, help="of each window's P99 verdict")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batches", default="2,4,8,16,32", help="max_batch choices of the batched arm")
    parser.add_argument("--race-min-rounds", type=int, default=3)
    parser.add_argument("--race-max-rounds", type=int, default=6)
    parser.add_argument("--race-timeout", default="5m", help="start no race round that would end after this")
    parser.add_argument("--placetune", default=f"{shlex.quote(sys.executable)} -m tuner.cli",
                        help="how to run the CLI")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))  # run_child stops its tuner
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    cases = [_case(c) for c in args.case]
    batches = [int(b) for b in args.batches.split(",")]
    if any(b < 2 for b in batches):
        raise SystemExit("--batches: every max_batch of the batched arm is at least 2")
    storage = f"sqlite:///{args.out / 'studies.db'}"
    spaces = {"unbatched": str(SPACES_DIR / "placement.yaml"), "batched": str(batched_space(args.out, batches))}
    topo = read_topology()
    summary = {"command": shlex.join([sys.executable, "-m", "experiments.batch_search", *sys.argv[1:]]),
               "machine": {"hostname": platform.node(), "cpus": len(os.sched_getaffinity(0)),
                           "load_avg_at_start": os.getloadavg()},
               "settings": {"n_trials": args.n_trials, "arm_timeout": args.arm_timeout or None,
                            "window": args.window, "confidence": args.confidence,
                            "batches": batches, "race": [args.race_min_rounds, args.race_max_rounds,
                                                         args.race_timeout]},
               "cases": []}
    for model, bound in cases:
        began = time.monotonic()
        case = {"model": model, "bound": bound, "arms": {}}
        winners: dict[str, Entrant] = {}
        for arm in ARMS:
            name = f"{_slug(model, bound)}-{arm}"
            copied = 0
            if arm == "batched":
                copied = copy_baselines(storage, f"{_slug(model, bound)}-unbatched", name)
            rc, wall = run_arm(args, model, bound, arm, spaces[arm], storage, args.n_trials + copied)
            best, measured = arm_winner(storage, name, batched=(arm == "batched"))
            entry = {"study": name, "rc": rc, "wall_s": round(wall, 1), "measured": measured - copied,
                     "baselines_copied": copied}
            if best is not None:
                res = result_of(best)
                entry.update(label=best.user_attrs.get("label"), throughput=res.throughput, p99_ms=res.p99_ms,
                             params=res.params.to_dict())
                winners[arm] = Entrant(res.params.label(), res.params,
                                       baseline="best unbatched" if arm == "unbatched" else "")
            else:
                entry["label"] = None
            case["arms"][arm] = entry
            print(f"{name}: rc {rc}, {measured} measured in {wall:.0f} s, best {entry['label']}", flush=True)
        if len(winners) == 2:
            info = inspect_model(model)
            settings = MeasureSettings(p99_bound_s=parse_duration(bound, "--case"),
                                       window_s=parse_duration(args.window, "--window"), confidence=args.confidence)
            counter = iter(range(1, 1_000_000))

            def measure_throughput(e: Entrant, _info=info, _settings=settings, _case=case, _seeds=counter) -> float:
                quick = replace(_settings, seed=_settings.seed + next(_seeds), search_steps=3)
                t0 = time.monotonic()
                result = measure(plan(topo, e.params), _info, quick)
                with (args.out / "race.jsonl").open("a") as raw:
                    raw.write(json.dumps({"model": _case["model"], "bound": _case["bound"], "label": e.label,
                                          "wall_s": time.monotonic() - t0, "result": result.to_dict()}) + "\n")
                print(f"  race {e.label}: {result.throughput:.1f} req/s, p99 {result.p99_ms:.1f} ms"
                      f" ({'pass' if result.feasible else result.reason})", flush=True)
                return result.throughput if result.feasible else 0.0

            raced = race([winners["batched"], winners["unbatched"]], measure_throughput,
                         args.race_min_rounds, args.race_max_rounds, 0.95,
                         time_limit_s=parse_duration(args.race_timeout, "--race-timeout"))
            case["race"] = raced.to_dict()
            s = raced.searched
            case["ratio"], case["ci95"], case["outcome"] = s["ratio"], s["ci"], s["outcome"]
            print(f"{model} {bound}: batched {s['label']} / unbatched {s['baseline_label']} = {s['ratio']:.2f} "
                  f"[{s['ci'][0]:.2f}, {s['ci'][1]:.2f}] ({s['outcome']}, {raced.stopped})", flush=True)
        else:
            missing = [a for a in ARMS if a not in winners]
            case["outcome"] = f"no race: no feasible {' or '.join(missing)} config"
            print(f"{model} {bound}: {case['outcome']}", flush=True)
        case["wall_s"] = round(time.monotonic() - began, 1)
        summary["cases"].append(case)
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    summary["machine"]["load_avg_at_end"] = os.getloadavg()
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
