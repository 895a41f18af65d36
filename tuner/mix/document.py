"""A deployment's best config: one document holding each model's own ``placetune-config/1``
document (what ``measure --config``, ``tuner.deploy.apply`` and the exporters read), and its
export, one artifact per model (tuner.results.export renders each model's document)."""

from __future__ import annotations

import json

from tuner.mix.deployment import DEPLOYMENT_FORMAT

MODEL_KEYS = ("throughput", "p50_ms", "p99_ms", "p99_ci_ms", "offered_rate", "interference")


def deployment_document(study, best, baselines: dict, race: dict | None) -> dict:
    """The best-config document of a deployment study (format ``placetune-deployment/1``) for the
    trial ``best`` (the config the race recommends: tuner.mix.trials.study_document chooses it);
    ``baseline`` names the baseline when that config is one."""
    result = best.user_attrs["result"]
    deployment = study.user_attrs["deployment"]
    fingerprint = study.user_attrs["mix_identity"]["topology"]
    paths = study.user_attrs.get("model_paths", {})
    models = {}
    for entry in deployment["models"]:
        name = entry["name"]
        m = result["models"][name]
        info = m["plan"]["params"]
        models[name] = {
            "format": "placetune-config/1", "study": study.study_name, "trial": best.number,
            "label": f"{name}: {_params_label(info)}", "params": info, "plan": m["plan"], "scenario": "server",
            "p99_bound_ms": entry["p99_ms"], "share": entry["share"],
            **{k: m[k] for k in MODEL_KEYS},
            "model": {"name": name, "path": paths.get(name, entry["model"]), "sha256": _sha(study, name)},
            "topology_fingerprint": fingerprint, "machine": result["machine"],
        }
    return {
        "format": DEPLOYMENT_FORMAT, "study": study.study_name, "trial": best.number,
        "label": best.user_attrs["label"], "baseline": best.user_attrs.get("baseline", ""),
        "division": result["config"]["division"],
        "load_factor": result["load_factor"], "load_factor_ci": result["load_factor_ci"],
        "baselines": {name: {"label": t.user_attrs["label"], "load_factor": t.user_attrs["result"]["load_factor"]}
                      for name, t in baselines.items()},
        "race": race, "deployment": deployment, "topology_fingerprint": fingerprint, "models": models,
    }


def _params_label(params: dict) -> str:
    from tuner.machine.placement import Params

    return Params.from_dict(params).label()


def _sha(study, name: str) -> str:
    for n, sha, *_ in study.user_attrs["mix_identity"]["deployment"]:
        if n == name:
            return sha
    return ""


def is_deployment(document: object) -> bool:
    return isinstance(document, dict) and document.get("format") == DEPLOYMENT_FORMAT


def export_files(document: dict, fmt: str, config_dir: str = ".") -> dict[str, str]:
    """One artifact per model: file name -> text. Each model also gets its JSON config
    (``NAME.json``), which its launch script / unit / container points PLACETUNE_CONFIG at."""
    from tuner.results import export as exporter

    suffix = exporter.format_of(fmt).suffix  # every format of tuner.results.export, nothing to list here
    files = {}
    for name, sub in document["models"].items():
        config_path = f"{config_dir.rstrip('/')}/{name}.json"
        files[f"{name}.json"] = json.dumps(sub, indent=1) + "\n"
        files[f"{name}{suffix}"] = exporter.render(sub, fmt, config_path)
    return files
