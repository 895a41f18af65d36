"""The deployment file: which models share the server, each one's P99 bound and traffic share.

    shared_cores: false          # optional: may two models run on the same cores? (default no)
    models:
      - {name: detector, model: onnx:squeezenet, p99: 20ms, share: 4}
      - {name: ranker,   model: onnx:resnet50,   p99: 200ms, share: 1}

``share`` is the traffic mix: at load factor L, model i receives L x share_i requests/s. Every
mistake is a ``UsageError`` naming the file and the entry, raised before anything is measured.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import yaml

from tuner.errors import UsageError
from tuner.results.mixrecords import Deployment as Deployment
from tuner.results.mixrecords import ModelEntry

ENTRY_KEYS = ("name", "model", "p99", "share")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # becomes a file name and an MLflow metric prefix


def load_deployment(path: str | Path) -> Deployment:
    """Read and validate a deployment file (models are not opened here: see ``resolve_models``)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--deployment {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UsageError(f"--deployment {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return parse_deployment(data, str(path))


def parse_deployment(data: object, where: str = "the deployment") -> Deployment:
    """Validate a deployment mapping (see the module docstring for the format)."""
    if not isinstance(data, dict) or not isinstance(data.get("models"), list) or not data["models"]:
        raise UsageError(f"{where} needs a non-empty 'models:' list of {{name, model, p99, share}} entries")
    unknown = set(data) - {"models", "shared_cores"}
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                         "known: models, shared_cores")
    shared = data.get("shared_cores", False)
    if not isinstance(shared, bool):
        raise UsageError(f"{where}: shared_cores must be true or false, got {shared!r}")
    entries = [_entry(raw, i, where) for i, raw in enumerate(data["models"])]
    seen: set[str] = set()
    for e in entries:
        if e.name in seen:
            raise UsageError(f"{where}: duplicate model name {e.name!r}; give every model its own name")
        seen.add(e.name)
    return Deployment(where, tuple(entries), shared)


def _entry(raw: object, index: int, where: str) -> ModelEntry:
    from tuner.units import parse_bound

    if not isinstance(raw, dict):
        raise UsageError(f"{where}: models[{index}] must be a mapping {{name, model, p99, share}}, got {raw!r}")
    missing = [k for k in ENTRY_KEYS if k not in raw]
    if missing:
        raise UsageError(f"{where}: models[{index}] lacks {', '.join(missing)}")
    unknown = set(raw) - set(ENTRY_KEYS)
    if unknown:
        raise UsageError(f"{where}: models[{index}] has unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                         f"known: {', '.join(ENTRY_KEYS)}")
    name = str(raw["name"])
    if not _NAME.match(name):
        raise UsageError(f"{where}: model name {name!r} must be letters, digits, '.', '_' or '-'")
    share = raw["share"]
    if isinstance(share, bool) or not isinstance(share, int | float) or not math.isfinite(share) or share <= 0:
        raise UsageError(f"{where}: model {name}: share must be a positive number, got {share!r}")
    bound_s = parse_bound(str(raw["p99"]), f"model {name}: p99")
    return ModelEntry(name, str(raw["model"]), bound_s, float(share))


def check_fits(deployment: Deployment, usable_cores: int) -> None:
    """Without shared cores every model needs a core of its own."""
    if not deployment.shared_cores and len(deployment.models) > usable_cores:
        raise UsageError(f"{deployment.path}: {len(deployment.models)} models but only {usable_cores} usable "
                         "core(s): every model needs a core of its own (or set shared_cores: true)")


def resolve_models(deployment: Deployment) -> dict:
    """Each model's ModelInfo (tuner.bench.model.inspect_model), by name; a missing model names its entry."""
    from tuner.bench.model import inspect_model
    from tuner.errors import ModelError

    infos = {}
    for e in deployment.models:
        try:
            infos[e.name] = inspect_model(e.model)
        except (UsageError, ModelError) as exc:
            raise UsageError(f"{deployment.path}: model {e.name}: {exc}") from None
    return infos
