"""The benchmark zoo: placetune's best config against the defaults people would otherwise run,
on real architectures, at a tight and a loose P99 bound; sample efficiency of the samplers; and
repeatability of the best config.

    .venv/bin/python -m experiments.zoo            # the full zoo (about 30 minutes on 2 cores)
    .venv/bin/python -m experiments.zoo --quick    # 2 models, 1 bound (under 5 minutes)
    .venv/bin/python -m experiments.zoo --replay experiments/results/DIR/efficiency-grid.json
    .venv/bin/python -m experiments.zoo --side-by-side experiments/results/DIR   # alternate re-measurement

Everything lands in experiments/results/<host>-<date>[-quick]/: one JSON per study (every trial,
the baselines, the best), the Optuna storage (zoo.db), efficiency-grid.json and efficiency.json,
repeatability.json, machine.json, and results.md (the tables, generated from those files).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import optuna
import yaml

from experiments.replay import MAX_FREE_STREAK
from tuner.bench.measure import MeasureSettings, machine_metadata, measure
from tuner.bench.model import inspect_model
from tuner.machine.placement import Params, plan
from tuner.machine.sysfs import read_topology
from tuner.results.trials import baseline_results, best_trial, summarize_trial
from tuner.search.space import check, load_space
from tuner.search.study import CONSTRAINT, INFEASIBLE_P99, StudyConfig, baselines, run_study
from tuner.units import parse_duration

HERE = Path(__file__).resolve().parent
BASELINE_KEYS = ("ort_default", "intel", "one_per_core")


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def model_path(spec: str, workdir: Path) -> str:
    if spec.startswith("gen:"):
        from experiments.models import GENERATORS

        name = spec[4:]
        return str(GENERATORS[name](workdir / f"{name}.onnx"))
    return spec


def baseline_key(name: str) -> list[str]:
    """Which of ort_default / intel / one_per_core a (possibly merged) baseline name covers."""
    keys = []
    for part in name.split("+"):
        key = "intel" if part.startswith("intel") else part
        if key in BASELINE_KEYS and key not in keys:
            keys.append(key)
    return keys


def calibrate(info, topo, window_s: float) -> dict:
    """Unloaded latency: one worker on every core, closed loop."""
    n = len(topo.cores())
    params = Params(workers=1, cores_per_worker=n, intra_op_threads=len(topo.usable_cpus))
    result = measure(plan(topo, params), info, MeasureSettings(scenario="offline", window_s=max(window_s * 2, 1.0)))
    return {"config": params.label(), "p50_ms": result.p50_ms, "p99_ms": result.p99_ms,
            "capacity": result.capacity, "requests": result.windows[-1].completed}


def run_one(name: str, info, topo, bound_name: str, bound_ms: float, trials: int, window_s: float, sampler: str,
            seed: int, storage: str, out: Path, calib: dict) -> dict:
    settings = MeasureSettings(scenario="server", p99_bound_s=bound_ms / 1000, window_s=window_s, seed=seed)
    space = load_space("default", topo).without_batching("the zoo benchmark compares placements")
    cfg = StudyConfig(model=info, topology=topo, space=space, settings=settings, storage=storage,
                      study_name=f"{name}-{bound_name}", sampler=sampler, seed=seed, n_trials=trials)
    began = time.monotonic()

    def on_trial(trial, s):
        p99 = f"{s.p99_ms:.2f} ms" if math.isfinite(s.p99_ms) else "-"
        say(f"  #{s.number} {s.label:<24} {s.throughput:9.1f} req/s  P99 {p99:>10}  "
            f"{'feasible' if s.feasible else s.reason[:60]}")

    study = run_study(cfg, on_trial, lambda _m: None)
    best = best_trial(study)
    base = {}
    for bname, row in baseline_results(study).items():
        for key in baseline_key(bname):
            base[key] = {"name": bname, "label": row.result.params.label() if row.result else None,
                         "feasible": row.feasible, "throughput": row.throughput,
                         "p99_ms": row.result.p99_ms if row.result else None, "reason": row.reason}
    record = {
        "model": name, "model_info": {k: info.to_dict()[k] for k in ("name", "sha256")}, "bound": bound_name,
        "p99_bound_ms": bound_ms, "unloaded": calib, "trials": trials, "window_s": window_s, "sampler": sampler,
        "seed": seed, "duration_s": time.monotonic() - began, "baselines": base, "best": None,
        "all_trials": [{k: v for k, v in summarize_trial(t).to_dict().items() if k != "params"} | {
            "result": t.user_attrs.get("result")} for t in study.trials],
    }
    if best is not None:
        r = best.user_attrs["result"]
        record["best"] = {"trial": best.number, "label": best.user_attrs["label"], "throughput": r["throughput"],
                          "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "params": r["params"],
                          "baseline": best.user_attrs.get("baseline")}
        for key, b in base.items():
            record[f"ratio_vs_{key}"] = r["throughput"] / b["throughput"] if b["feasible"] and b["throughput"] else None
    (out / f"{name}-{bound_name}.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    return record


# ---- sample efficiency ---------------------------------------------------------------------------
def grid_table(info, topo, bound_ms: float, window_s: float, storage: str, name: str) -> dict:
    """Every plannable point of the default space (and the baselines), measured once."""
    space = load_space("default", topo).without_batching("the zoo benchmark compares placements")
    settings = MeasureSettings(scenario="server", p99_bound_s=bound_ms / 1000, window_s=window_s, seed=0)
    cfg = StudyConfig(model=info, topology=topo, space=space, settings=settings, storage=storage,
                      study_name=f"{name}-grid", sampler="grid", seed=0, n_trials=space.size() + 8)
    study = run_study(cfg, lambda t, s: say(f"  grid #{s['number']} {s['label']:<24} {s['throughput']:9.1f} req/s"),
                      lambda _m: None)
    table = {}
    for t in study.trials:
        result = t.user_attrs.get("result")
        if result:
            table[t.user_attrs["label"]] = {"throughput": result["throughput"] if result["feasible"] else 0.0,
                                            "p99_ms": result["p99_ms"], "feasible": result["feasible"]}
    plannable = len({space.params(c).label() for c in space.combinations() if check(space, topo, c) is None})
    return {"model": name, "p99_bound_ms": bound_ms, "space": {k: list(v) for k, v in space.choices.items()},
            "combinations": space.size(), "plannable": plannable, "table": table,
            "topology": topo.to_dict()}


def replay(grid: dict, seeds: int, target: float) -> dict:
    """Samplers against the measured table, with placetune's rules (unplannable and already-measured
    configs are free; 25 free trials in a row end the study): configs measured until one reaches
    target x the best. A seed that ends the study first is a miss."""
    from tuner.machine.topology import Topology
    from tuner.search.space import resolve
    from tuner.search.study import make_sampler

    topo = Topology.from_dict(grid["topology"])
    space = resolve("default", {k: v for k, v in grid["space"].items()}, topo)
    table = grid["table"]
    best = max(v["throughput"] for v in table.values())
    goal = target * best
    variants = {
        "tpe, baselines first (placetune's default)": ("tpe", True),
        "tpe, no baselines": ("tpe", False),
        "nsga2, baselines first": ("nsga2", True),
        "random, baselines first": ("random", True),
        "random, no baselines": ("random", False),
    }
    out = {}
    limit = 4 * (grid["plannable"] + 4)
    for vname, (sampler_name, with_baselines) in variants.items():
        needed, needed_all = [], []
        for seed in range(seeds):
            hit = _replay_one(space, topo, table, make_sampler(sampler_name, seed, space), with_baselines, goal,
                              limit, seed)
            needed.append(hit[0] if hit else math.inf)
            needed_all.append(hit[1] if hit else math.inf)
        finite = [n for n in needed if math.isfinite(n)]
        q1, med, q3 = (np.percentile(finite, [25, 50, 75]).tolist() if finite else [math.inf] * 3)
        out[vname] = {"measured_trials": needed, "all_trials": needed_all, "median": med, "q1": q1, "q3": q3,
                      "median_fraction_of_grid": med / (grid["plannable"] + 1), "misses": len(needed) - len(finite)}
    return {"best_throughput": best, "target": target, "goal": goal, "seeds": seeds,
            "grid_size": grid["plannable"] + 1, "variants": out}


def _replay_one(space, topo, table, sampler, with_baselines: bool, goal: float, limit: int, seed: int):
    """One simulated study with placetune's rules: baselines first (with their values when the space
    can express them), unplannable configs pruned for free, a measured config reused for free, an
    unmeasured config enqueued after EXPLORE_AFTER free trials in a row, the end when none is left.
    Returns (configs measured, trials) when a config reaches ``goal``, else None."""
    from experiments.replay import EXPLORE_AFTER, unmeasured_config

    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    if with_baselines:
        for name, params in baselines(topo):
            study.enqueue_trial(space.express(params) or {}, user_attrs={"baseline": name,
                                                                         "params": params.to_dict()})
    measured, total, free_streak, seen = 0, 0, 0, set()
    while total < limit and free_streak < MAX_FREE_STREAK:
        trial = study.ask()
        total += 1
        if "baseline" in trial.user_attrs:
            params = Params.from_dict(trial.user_attrs["params"])
            if space.express(params) is not None:
                for d, c in space.varying.items():
                    trial.suggest_categorical(d, list(c))
        else:
            values = {d: trial.suggest_categorical(d, list(c)) for d, c in space.varying.items()}
            if check(space, topo, values) is not None:
                trial.set_constraint(CONSTRAINT, INFEASIBLE_P99)
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                free_streak += 1
                continue
            params = space.params(values)
        label = params.label()
        trial.set_user_attr("label", label)
        entry = table.get(label, {"throughput": 0.0, "p99_ms": INFEASIBLE_P99, "feasible": False})
        if label in seen:
            free_streak += 1
        else:
            seen.add(label)
            measured += 1
            free_streak = 0
        trial.set_constraint(CONSTRAINT, 0.0 if entry["feasible"] else INFEASIBLE_P99)
        p99 = entry["p99_ms"] if entry["feasible"] and math.isfinite(entry["p99_ms"]) else INFEASIBLE_P99
        study.tell(trial, [entry["throughput"], p99])
        if entry["throughput"] >= goal:
            return measured, total
        if free_streak >= EXPLORE_AFTER and not any(t.state.name == "WAITING" for t in study.trials):
            fresh = unmeasured_config(study, space, topo, seed=seed + total)
            if fresh is None:
                return None
            study.enqueue_trial(fresh)
            free_streak = 0
    return None


# ---- repeatability -------------------------------------------------------------------------------
def repeatability(record: dict, info, topo, runs: int) -> dict:
    params = Params.from_dict(record["best"]["params"])
    settings = MeasureSettings(scenario="server", p99_bound_s=record["p99_bound_ms"] / 1000,
                               window_s=record["window_s"], seed=0)
    values, p99s = [], []
    for i in range(runs):
        r = measure(plan(topo, params), info, settings.__class__(**{**settings.__dict__, "seed": i}))
        values.append(r.throughput)
        p99s.append(r.p99_ms)
        say(f"  repeat {i + 1}/{runs}: {r.throughput:.1f} req/s, P99 {r.p99_ms:.2f} ms")
    mean = statistics.mean(values)
    return {"model": record["model"], "bound": record["bound"], "p99_bound_ms": record["p99_bound_ms"],
            "label": params.label(), "throughputs": values, "p99_ms": p99s, "mean": mean,
            "cv": statistics.stdev(values) / mean if mean and len(values) > 1 else math.nan,
            "p99_min_ms": min(p99s), "p99_max_ms": max(p99s)}


# ---- side by side -------------------------------------------------------------------------------
def side_by_side(record: dict, info, topo, rounds: int) -> dict:
    """The study's best and each baseline re-measured in alternation (A B C A B C ...), so that a
    drift of the machine hits every config alike; the ratio of medians is the honest speed-up."""
    settings = MeasureSettings(scenario="server", p99_bound_s=record["p99_bound_ms"] / 1000,
                               window_s=record["window_s"], seed=0)
    configs = {"best": Params.from_dict(record["best"]["params"])}
    for key, b in record["baselines"].items():
        trial = next(t for t in record["all_trials"] if t.get("baseline") == b["name"] and t.get("result"))
        configs[key] = Params.from_dict(trial["result"]["params"])
    runs: dict[str, list[float]] = {k: [] for k in configs}
    for i in range(rounds):
        for key, params in configs.items():
            r = measure(plan(topo, params), info, MeasureSettings(**{**settings.__dict__, "seed": i}))
            runs[key].append(r.throughput)
            say(f"  round {i + 1}/{rounds} {key:<13} {params.label():<24} {r.throughput:9.1f} req/s "
                f"P99 {r.p99_ms:.2f} ms")
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {"model": record["model"], "bound": record["bound"], "p99_bound_ms": record["p99_bound_ms"],
            "rounds": rounds, "labels": {k: p.label() for k, p in configs.items()}, "throughputs": runs,
            "median": med, "ratio_best_vs": {k: (med["best"] / v if v else None) for k, v in med.items()
                                              if k != "best"}}


# ---- the report ----------------------------------------------------------------------------------
def _fmt(x, digits=1):
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def _cell(b: dict | None) -> str:
    if not b:
        return "-"
    return f"{b['throughput']:.1f}" if b["feasible"] else "infeasible"


def markdown(out: Path) -> str:
    machine = json.loads((out / "machine.json").read_text())
    lines = [f"# placetune zoo: {out.name}", "",
             f"Machine: {machine['cpu_model']}; {machine['cores']} cores, {machine['pus']} PUs, "
             f"{machine['numa_nodes']} NUMA node(s), SMT {'on' if machine['smt'] else 'off'}; "
             f"onnxruntime {machine['onnxruntime']}. Command: `{machine['command']}`.", "",
             "Throughput (req/s) at the P99 bound, server scenario (open-loop Poisson arrivals); bounds are "
             "x1.5 (tight) and x5 (loose) the model's unloaded P99 on this machine.", "",
             "| model | bound | P99 bound ms | ORT default | Intel heuristic | one per core | placetune best "
             "| best config | vs ORT | vs Intel | vs 1/core |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    studies = [f for f in sorted(out.glob("*-tight.json")) + sorted(out.glob("*-loose.json"))
               if not f.name.startswith("side-by-side-")]
    for f in studies:
        r = json.loads(f.read_text())
        b = r["baselines"]
        best = r["best"]
        lines.append(
            f"| {r['model']} | {r['bound']} | {r['p99_bound_ms']:.1f} | {_cell(b.get('ort_default'))} | "
            f"{_cell(b.get('intel'))} | {_cell(b.get('one_per_core'))} | "
            f"{_fmt(best['throughput']) if best else 'infeasible'} | {best['label'] if best else '-'} | "
            f"{_fmt(r.get('ratio_vs_ort_default'), 2)}x | {_fmt(r.get('ratio_vs_intel'), 2)}x | "
            f"{_fmt(r.get('ratio_vs_one_per_core'), 2)}x |")
    eff = out / "efficiency.json"
    if eff.is_file():
        e = json.loads(eff.read_text())
        lines += ["", f"## Sample efficiency ({e['model']}, P99 <= {e['p99_bound_ms']:.1f} ms)", "",
                  f"Grid: {e['grid_size']} measurable configs (every plannable point of the default space, plus "
                  f"the unpinned ORT default); best {e['best_throughput']:.1f} req/s; target "
                  f"{e['target']:.0%} of it. Measured trials needed over {e['seeds']} seeds:", "",
                  "| sampler | median | IQR | median / grid size | seeds that missed |", "|---|---|---|---|---|"]
        for name, v in e["variants"].items():
            lines.append(f"| {name} | {_fmt(v['median'])} | {_fmt(v['q1'])}-{_fmt(v['q3'])} | "
                         f"{v['median_fraction_of_grid']:.0%} | {v['misses']} |")
    rep = out / "repeatability.json"
    if rep.is_file():
        r = json.loads(rep.read_text())
        lines += ["", f"## Repeatability ({r['model']} {r['bound']}, {r['label']}, {len(r['throughputs'])} runs)", "",
                  f"Throughput: {', '.join(f'{v:.1f}' for v in r['throughputs'])} req/s; mean {r['mean']:.1f}, "
                  f"CV {r['cv']:.1%}. P99: {r['p99_min_ms']:.2f} to {r['p99_max_ms']:.2f} ms "
                  f"(bound {r['p99_bound_ms']:.1f} ms)."]
    sbs = sorted(out.glob("side-by-side-*.json"))
    if sbs:
        lines += ["", "## Side by side (re-measured in alternation after the studies)", "",
                  "| model | bound | rounds | best (median req/s) | ORT default | Intel | one per core | best vs ORT "
                  "| best vs Intel | best vs 1/core |", "|---|---|---|---|---|---|---|---|---|---|"]
        for f in sbs:
            r = json.loads(f.read_text())
            m, q = r["median"], r["ratio_best_vs"]
            lines.append(f"| {r['model']} | {r['bound']} | {r['rounds']} | {m['best']:.1f} ({r['labels']['best']}) | "
                         f"{_fmt(m.get('ort_default'))} | {_fmt(m.get('intel'))} | {_fmt(m.get('one_per_core'))} | "
                         f"{_fmt(q.get('ort_default'), 2)}x | {_fmt(q.get('intel'), 2)}x | "
                         f"{_fmt(q.get('one_per_core'), 2)}x |")
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    return text


def main() -> None:
    import sys

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 models, 1 bound, fewer trials (under 5 minutes)")
    parser.add_argument("--out", type=Path, help="results folder (default experiments/results/HOST-DATE[-quick])")
    parser.add_argument("--only", nargs="*", help="run only these models")
    parser.add_argument("--no-efficiency", action="store_true")
    parser.add_argument("--no-repeatability", action="store_true")
    parser.add_argument("--replay", type=Path, help="only replay the samplers against this efficiency-grid.json")
    parser.add_argument("--side-by-side", type=Path, metavar="DIR",
                        help="re-measure the best and the baselines of DIR's studies in alternation")
    parser.add_argument("--rounds", type=int, default=3, help="rounds for --side-by-side")
    parser.add_argument("--efficiency-only", type=Path, metavar="DIR",
                        help="measure the efficiency grid again (bound from DIR's study) and replay the samplers")
    args = parser.parse_args()
    config = yaml.safe_load((HERE / "zoo.yaml").read_text())
    if args.replay:
        grid = json.loads(args.replay.read_text())
        eff = config["efficiency"]
        result = replay(grid, eff["seeds"], eff["target"]) | {"model": grid["model"],
                                                              "p99_bound_ms": grid["p99_bound_ms"]}
        (args.replay.parent / "efficiency.json").write_text(json.dumps(result, indent=1) + "\n")
        print(markdown(args.replay.parent))
        return
    if args.efficiency_only:
        eff = config["efficiency"]
        record = json.loads((args.efficiency_only / f"{eff['model']}-{eff['bound']}.json").read_text())
        spec = next(m for m in config["models"] if m["name"] == eff["model"])
        with tempfile.TemporaryDirectory() as tmp:
            info = inspect_model(model_path(spec["model"], Path(tmp)))
            say(f"sample efficiency: grid of the default space on {eff['model']} at P99 <= {record['p99_bound_ms']} ms")
            grid = grid_table(info, read_topology("/"), record["p99_bound_ms"], record["window_s"],
                              f"sqlite:///{args.efficiency_only / 'zoo.db'}", f"{eff['model']}-regrid")
        (args.efficiency_only / "efficiency-grid.json").write_text(json.dumps(grid, indent=1) + "\n")
        result = replay(grid, eff["seeds"], eff["target"]) | {"model": eff["model"],
                                                              "p99_bound_ms": grid["p99_bound_ms"]}
        (args.efficiency_only / "efficiency.json").write_text(json.dumps(result, indent=1) + "\n")
        print(markdown(args.efficiency_only))
        return
    if args.side_by_side:
        topo = read_topology("/")
        with tempfile.TemporaryDirectory() as tmp:
            for key in config["side_by_side"]:
                record = json.loads((args.side_by_side / f"{key}.json").read_text())
                if not record["best"]:
                    continue
                spec = next(m for m in config["models"] if m["name"] == record["model"])
                info = inspect_model(model_path(spec["model"], Path(tmp)))
                say(f"side by side: {key}, {args.rounds} rounds")
                result = side_by_side(record, info, topo, args.rounds)
                (args.side_by_side / f"side-by-side-{key}.json").write_text(json.dumps(result, indent=1) + "\n")
        print(markdown(args.side_by_side))
        return
    defaults = config["defaults"]
    quick = config["quick"] if args.quick else None
    host = platform.node()
    out = args.out or HERE / "results" / f"{host}-{date.today().isoformat()}{'-quick' if args.quick else ''}"
    out.mkdir(parents=True, exist_ok=True)
    topo = read_topology("/")
    meta = machine_metadata()
    (out / "machine.json").write_text(json.dumps({
        "host": host, "cpu_model": meta.get("cpu_model", ""), "cores": len(topo.cores()),
        "pus": len(topo.usable_cpus), "numa_nodes": len(topo.usable_nodes) or 1, "smt": topo.smt,
        "onnxruntime": meta.get("onnxruntime"), "python": platform.python_version(),
        "command": "python -m experiments.zoo " + " ".join(sys.argv[1:]), "date": date.today().isoformat(),
    }, indent=1) + "\n")
    storage = f"sqlite:///{out / 'zoo.db'}"
    models = [m for m in config["models"] if (not quick or m["name"] in quick["models"])
              and (not args.only or m["name"] in args.only)]
    bounds = quick["bounds"] if quick else ["tight", "loose"]
    records = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        infos = {}
        for m in models:
            spec = {**defaults, **m, **({k: quick[k] for k in ("trials", "window")} if quick else {})}
            info = inspect_model(model_path(m["model"], Path(tmp)))
            infos[m["name"]] = info
            window_s = parse_duration(spec["window"], "window")
            say(f"{m['name']}: calibrating the unloaded latency")
            calib = calibrate(info, topo, window_s)
            say(f"{m['name']}: unloaded P50 {calib['p50_ms']:.2f} ms, P99 {calib['p99_ms']:.2f} ms")
            for bound_name in bounds:
                bound_ms = round(spec[f"{bound_name}_factor"] * calib["p99_ms"], 1)
                say(f"{m['name']} {bound_name}: P99 <= {bound_ms} ms, {spec['trials']} trials")
                records[(m["name"], bound_name)] = run_one(
                    m["name"], info, topo, bound_name, bound_ms, spec["trials"], window_s, spec["sampler"],
                    spec["seed"], storage, out, calib)
        rep_cfg = quick["repeatability"] if quick else config["repeatability"]
        key = (rep_cfg["model"], rep_cfg["bound"])
        if not args.no_repeatability and key in records and records[key]["best"]:
            say(f"repeatability: {key[0]} {key[1]}, {rep_cfg['runs']} runs")
            rep = repeatability(records[key], infos[key[0]], topo, rep_cfg["runs"])
            (out / "repeatability.json").write_text(json.dumps(rep, indent=1) + "\n")
        eff = config["efficiency"]
        key = (eff["model"], eff["bound"])
        if not quick and not args.no_efficiency and key in records:
            say(f"sample efficiency: grid of the default space on {key[0]} at P99 <= {records[key]['p99_bound_ms']} ms")
            grid = grid_table(infos[key[0]], topo, records[key]["p99_bound_ms"], records[key]["window_s"], storage,
                              key[0])
            (out / "efficiency-grid.json").write_text(json.dumps(grid, indent=1) + "\n")
            result = replay(grid, eff["seeds"], eff["target"]) | {"model": key[0],
                                                                  "p99_bound_ms": grid["p99_bound_ms"]}
            (out / "efficiency.json").write_text(json.dumps(result, indent=1) + "\n")
    say(f"done in {(time.monotonic() - started) / 60:.1f} min; results in {out}")
    print(markdown(out))


if __name__ == "__main__":
    main()
