"""Apply a measured config inside a serving process.

    import onnxruntime as ort
    from tuner import deploy

    options = deploy.apply("best_config.json", worker_index=0)   # or deploy.apply() under the launch script
    session = ort.InferenceSession("model.onnx", options, providers=["CPUExecutionProvider"])

``apply`` pins every thread of the calling process to the worker's CPUs and sets its memory policy
(the set_mempolicy syscall, numactl's semantics), both BEFORE the session is created so the
model's memory is first-touched on the right node, and returns ``onnxruntime.SessionOptions``
exactly as placetune measured them (thread counts, execution mode, spinning, intra-op thread
affinities, graph optimization level). The worker is read from ``PLACETUNE_WORKER_INDEX`` and the
config from ``PLACETUNE_CONFIG`` when they are not given, as the exported launch scripts set them.

A deployment's best config (several models sharing the server, ``placetune optimize --deployment``)
holds one config per model: ``deploy.apply("best_deployment.json", worker_index=0, model="ranker")``
(or ``PLACETUNE_MODEL=ranker``) applies that model's worker.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tuner.errors import PlacetuneError, UsageError

if TYPE_CHECKING:
    from tuner.machine.placement import Params

CONFIG_FORMAT = "placetune-config/1"
DEPLOYMENT_FORMAT = "placetune-deployment/1"  # tuner.mix: one CONFIG_FORMAT document per model


def load_config(config: str | os.PathLike | dict | None = None, model: str | None = None) -> dict:
    """A best-config document from a dict, a .json/.yaml path, or $PLACETUNE_CONFIG; from a
    deployment's document, the config of ``model`` (or $PLACETUNE_MODEL)."""
    if isinstance(config, dict):
        document = config
        where = "the config mapping"
    else:
        if config is None:
            config = os.environ.get("PLACETUNE_CONFIG")
            if not config:
                raise UsageError("no config given and PLACETUNE_CONFIG is not set; pass the path of a "
                                 "best_config.json written by 'placetune optimize' or 'placetune export'")
        path = Path(config)
        where = str(path)
        if not path.is_file():
            raise UsageError(f"config {path} does not exist")
        text = path.read_text()
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml

                document = yaml.safe_load(text)
            else:
                document = json.loads(text)
        except Exception as exc:
            raise UsageError(f"config {path} is not valid JSON/YAML ({str(exc).splitlines()[0]})") from None
    if isinstance(document, dict) and document.get("format") == DEPLOYMENT_FORMAT:
        document, where = _model_config(document, model or os.environ.get("PLACETUNE_MODEL"), where)
    if not isinstance(document, dict) or document.get("format") != CONFIG_FORMAT:
        found = f", found {document.get('format')!r}" if isinstance(document, dict) and "format" in document else ""
        raise UsageError(f"{where} is not a placetune config (expected format: {CONFIG_FORMAT}{found}); "
                         "export one with 'placetune export --format json'")
    config_params(document, where)
    plan = document.get("plan")
    if not isinstance(plan, dict) or not isinstance(plan.get("workers"), list):
        raise UsageError(f"{where} has no plan with a list of workers; export it again with "
                         "'placetune export --format json'")
    return document


def _model_config(document: dict, model: str | None, where: str) -> tuple[dict, str]:
    """One model's config inside a deployment's document."""
    models = document.get("models")
    names = ", ".join(models) if isinstance(models, dict) else "none"
    if model is None:
        raise UsageError(f"{where} is a deployment of several models ({names}): choose one with model=NAME "
                         "or PLACETUNE_MODEL")
    if not isinstance(models, dict) or model not in models:
        raise UsageError(f"{where} has no model {model!r}; its models: {names}")
    return models[model], f"{where} (model {model})"


def config_params(document: dict, where: str = "the config") -> Params:
    """The measured params of a config document, validated (known keys, valid values)."""
    from tuner.machine.placement import Params

    params = document.get("params")
    if not isinstance(params, dict):
        raise UsageError(f"{where} has no 'params' mapping; export it again with 'placetune export --format json'")
    try:
        return Params.from_dict(params)
    except UsageError as exc:
        raise UsageError(f"{where}: {exc}") from None
    except TypeError as exc:  # a value of the wrong type, e.g. workers: "two"
        raise UsageError(f"{where}: a parameter has a value of the wrong type ({exc})") from None


def worker_spec(document: dict, worker_index: int | None = None) -> dict:
    """The plan entry of one worker (CPUs, memory policy and nodes)."""
    if worker_index is None:
        raw = os.environ.get("PLACETUNE_WORKER_INDEX")
        if raw is None:
            raise UsageError("no worker_index given and PLACETUNE_WORKER_INDEX is not set")
        try:
            worker_index = int(raw)
        except ValueError:
            raise UsageError(f"PLACETUNE_WORKER_INDEX={raw!r} is not an integer") from None
    workers = document["plan"]["workers"]
    if not 0 <= worker_index < len(workers):
        raise UsageError(f"worker index {worker_index} is out of range: the config has {len(workers)} worker(s) "
                         f"(0..{len(workers) - 1})")
    return workers[worker_index]


def session_options(*, intra_op_threads: int, inter_op_threads: int, execution_mode: str, spinning: bool,
                    graph_optimization: str, pin: bool, cpus: tuple[int, ...] | list[int]):
    """The ONNX Runtime session options of a config; the measuring workers use this same function."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[graph_optimization]
    options.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL if execution_mode == "parallel" else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    if pin or intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    if execution_mode == "parallel" and inter_op_threads:
        options.inter_op_num_threads = inter_op_threads
    spin = "1" if spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    affinities = intra_op_affinities(tuple(cpus), intra_op_threads) if pin else ""
    if affinities:
        options.add_session_config_entry("session.intra_op_thread_affinities", affinities)
    return options


def intra_op_affinities(cpus: tuple[int, ...], intra_op_threads: int) -> str:
    """ORT's ``session.intra_op_thread_affinities``: one entry per intra-op thread other than
    the calling thread, processor ids 1-based. Thread k gets cpus[k mod n]; the calling thread
    keeps cpus[0]."""
    if intra_op_threads <= 1 or not cpus:
        return ""
    return ";".join(str(cpus[k % len(cpus)] + 1) for k in range(1, intra_op_threads))


def pin_every_thread(cpus: tuple[int, ...]) -> None:
    """Pin every thread that already exists, then the calling thread; later threads inherit it."""
    for task in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(task), cpus)
        except (ProcessLookupError, PermissionError):
            pass
    os.sched_setaffinity(0, cpus)


@dataclass(frozen=True)
class Batching:
    """A config's dynamic batching: run up to ``max_batch`` arrived requests in one ``session.run``,
    a batch holding fewer waiting at most ``batch_timeout_ms`` for more (max_batch 1: no batching)."""

    max_batch: int = 1
    batch_timeout_ms: float = 0.0


def batching(config: str | os.PathLike | dict | None = None, model: str | None = None) -> Batching:
    """The batch settings of ``config`` (1 and 0 for a config measured before batching existed)."""
    params = load_config(config, model)["params"]
    return Batching(int(params.get("max_batch", 1)), float(params.get("batch_timeout_ms", 0.0)))


def apply(config: str | os.PathLike | dict | None = None, worker_index: int | None = None,
          model: str | None = None, *, with_batching: bool = False):
    """Pin this process as worker ``worker_index`` of ``config`` (of ``model``'s config in a
    deployment's document), set its memory policy, and return the session options it was measured
    with; with ``with_batching=True``, ``(options, Batching)``: the batch settings the serving
    process must use as well. Call it before creating the InferenceSession."""
    from tuner.machine.numa import set_mempolicy

    document = load_config(config, model)
    spec = worker_spec(document, worker_index)
    params = document["params"]
    cpus = tuple(spec["cpus"])
    if params.get("pin", True) and cpus:
        try:
            pin_every_thread(cpus)
        except OSError as exc:
            raise PlacetuneError(f"cannot pin to CPUs {list(cpus)} ({exc.strerror}); is this process confined "
                                 "to other CPUs (container cpuset, taskset)?") from None
    try:
        set_mempolicy(spec["mem_policy"], tuple(spec["mem_nodes"]))
    except OSError as exc:
        raise PlacetuneError(f"cannot set memory policy {spec['mem_policy']} on nodes {spec['mem_nodes']}: "
                             f"{exc}") from None
    options = session_options(
        intra_op_threads=params["intra_op_threads"], inter_op_threads=params["inter_op_threads"],
        execution_mode=params["execution_mode"], spinning=params["spinning"],
        graph_optimization=params["graph_optimization"], pin=params.get("pin", True), cpus=cpus,
    )
    return (options, batching(document)) if with_batching else options
