"""The best config as a Triton Inference Server model configuration (``config.pbtxt``, protobuf text
format) for the onnxruntime backend: one CPU instance group per worker, each tied to a host policy
that holds the worker's CPUs and NUMA node. The ``tritonserver --host-policy`` flags that define those
policies are in the file's opening comment, with what Triton cannot express of the measured placement.

What this relies on, read in the projects' sources (cited again in docs/export.md):

- triton-inference-server/core ``src/numa_utils.cc``: a policy's ``cpu-cores`` becomes the CPU
  affinity of the thread the instance is created and run on (``pthread_setaffinity_np`` with the whole
  set); each comma-separated entry must be a range ``LOW-HIGH`` (a bare CPU id is refused, so one CPU
  is written ``3-3``). ``numa-node`` becomes that thread's memory policy, ``set_mempolicy(MPOL_BIND)``
  to that one node. The ONNX Runtime session is created on that thread, so its pool threads inherit both.
- triton-inference-server/server ``docs/user_guide/optimization.md`` (Host Policy) and the command line
  parser: ``--host-policy=<policy_name>,<setting>=<value>``, split at the first ',' and the first '='
  after it (a value may hold commas); settings ``numa-node`` and ``cpu-cores``.
- triton-inference-server/onnxruntime_backend ``src/onnxruntime.cc`` and README: string parameters
  ``intra_op_thread_count`` and ``inter_op_thread_count`` (0 or unset: ONNX Runtime's default),
  ``execution_mode`` (0 sequential, 1 parallel); ``optimization { graph { level } }`` with -1 basic,
  1 extended, 2 disabled, anything else all. No parameter sets spinning or per-thread affinities.
- triton-inference-server/common ``protobuf/model_config.proto``: the message and field names written
  here (``ModelConfig``, ``ModelInstanceGroup.host_policy``, ``ModelDynamicBatching``, ``ModelParameter``).
"""

from __future__ import annotations

import re

from tuner.machine.cpulist import format_cpulist
from tuner.machine.placement import Params, Plan, WorkerSpec
from tuner.results.export import _summary, placement

GRAPH_LEVEL = {"basic": -1, "extended": 1, "disable": 2}  # "all" is the backend's default: no level written


def triton_config(document: dict, config_path: str = "") -> str:
    """The config.pbtxt text; ``config_path`` is unused (Triton reads no placetune config)."""
    params, the_plan = placement(document)
    name = model_name(document)
    lines = [f"# {line}".rstrip() for line in _header(document, name)]
    lines += [f'name: "{name}"', 'backend: "onnxruntime"']
    if params.max_batch > 1:
        lines.append(f"max_batch_size: {params.max_batch}")
    for w in the_plan.workers:
        lines += ["instance_group {", f'  name: "{policy_name(name, w)}"', "  kind: KIND_CPU", "  count: 1"]
        if host_policy_settings(params, w):
            lines.append(f'  host_policy: "{policy_name(name, w)}"')
        lines.append("}")
    for key, value in (("intra_op_thread_count", params.intra_op_threads),
                       ("inter_op_thread_count", params.inter_op_threads),
                       ("execution_mode", 1 if params.execution_mode == "parallel" else 0)):
        lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
    if params.graph_optimization in GRAPH_LEVEL:
        lines.append(f"optimization {{ graph {{ level: {GRAPH_LEVEL[params.graph_optimization]} }} }}")
    if params.max_batch > 1:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {round(params.batch_timeout_ms * 1000)} }}")
    return "\n".join(lines) + "\n"


def model_name(document: dict) -> str:
    """The Triton model name (its folder in the model repository): the model's name, letters, digits,
    '_', '.' and '-' only (it is also the start of every host policy name, where ',' and '=' would break
    the flag)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(document["model"]["name"])) or "model"


def policy_name(model: str, worker: WorkerSpec) -> str:
    """Unique across the models of a deployment, which share one tritonserver."""
    return f"{model}_w{worker.index}"


def triton_cpu_cores(cpus: tuple[int, ...] | list[int]) -> str:
    """A CPU set as Triton's cpu-cores value: consecutive runs as ``LOW-HIGH``, a lone CPU as ``N-N``."""
    runs: list[list[int]] = []
    for cpu in sorted(set(cpus)):
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(f"{low}-{high}" for low, high in runs)


def host_policy_settings(params: Params, worker: WorkerSpec) -> list[tuple[str, str]]:
    """(setting, value) of worker's host policy: ``numa-node`` for memory bound to one node (Triton's only
    memory policy), ``cpu-cores`` for a pinned worker's CPUs. Empty: the worker needs no policy."""
    settings = []
    if worker.mem_policy == "bind" and len(worker.mem_nodes) == 1:
        settings.append(("numa-node", str(worker.mem_nodes[0])))
    if params.pin and worker.cpus:
        settings.append(("cpu-cores", triton_cpu_cores(worker.cpus)))
    return settings


def host_policy_flags(document: dict) -> list[str]:
    """The ``tritonserver --host-policy`` flags of every worker's policy."""
    params, the_plan = placement(document)
    name = model_name(document)
    return [f"--host-policy={policy_name(name, w)},{setting}={value}"
            for w in the_plan.workers for setting, value in host_policy_settings(params, w)]


def _header(document: dict, name: str) -> list[str]:
    params, the_plan = placement(document)
    flags = host_policy_flags(document)
    lines = [
        f"placetune Triton model configuration (onnxruntime backend): {_summary(document)}",
        "",
        f"Install: MODEL_REPOSITORY/{name}/config.pbtxt, the ONNX model at MODEL_REPOSITORY/{name}/1/model.onnx.",
        "Start Triton with these host policies (one per worker; a deployment of several models: every model's",
        "flags on one tritonserver command line):",
        "  tritonserver --model-repository=MODEL_REPOSITORY" + (" \\" if flags else ""),
        *(f"    {flag}" + (" \\" if i < len(flags) - 1 else "") for i, flag in enumerate(flags)),
        "Triton makes a policy's cpu-cores the CPU affinity of the instance's thread and numa-node its memory",
        "policy (MPOL_BIND); the instance's ONNX Runtime threads, started from that thread, inherit both",
        "(triton-inference-server/core src/numa_utils.cc). Keep the onnxruntime backend's per-session thread",
        "pools: with --backend-config=onnxruntime,enable-global-threadpool=1 the counts below are ignored.",
        "",
        "Where Triton cannot express the measured placement exactly:",
    ]
    return lines + [f"  - {note}" for note in triton_notes(params, the_plan, name)]


def triton_notes(params: Params, the_plan: Plan, name: str) -> list[str]:
    """What differs between the measured workers and Triton's instances, one line each (the reasons
    are in the module docstring). Long lines are fine: they are comments in the pbtxt."""
    notes = ["each worker is a model instance: a thread of one tritonserver process with its own ONNX Runtime "
             "session, fed by Triton's scheduler for the model; placetune measured one process per worker"]
    if not params.pin:
        notes.append("the config is unpinned (ONNX Runtime's defaults): no host policy; each instance's session "
                     "places its own threads" + (", sized by ONNX Runtime (intra_op_thread_count 0)"
                                                 if not params.intra_op_threads else ""))
    elif params.intra_op_threads > 1:
        notes.append("each intra-op thread was pinned to one CPU (session.intra_op_thread_affinities); the backend "
                     "has no parameter for it: an instance's threads float over its cpu-cores")
    if not params.spinning:
        notes.append("measured with spinning off (session.intra_op.allow_spinning 0); the backend has no parameter "
                     "for it: Triton's sessions spin (ONNX Runtime's default)")
    notes += _memory_notes(the_plan, name)
    if the_plan.io_cpus:
        notes.append(f"CPUs {format_cpulist(the_plan.io_cpus)} were kept for the load generator; Triton's HTTP/gRPC "
                     "and scheduler threads have no host policy: they run on any CPU the process may use")
    if params.max_batch > 1:
        notes.append(f"each worker batched the requests it received (up to {params.max_batch}, waiting at most "
                     f"{params.batch_timeout_ms:g} ms); Triton's dynamic batcher forms batches from the model's one "
                     "queue for any free instance. max_batch_size needs a model whose first dimension is the "
                     "batch: a batch-1 model was measured through placetune's copy with that dimension symbolic")
    else:
        notes.append("measured one request per session.run: max_batch_size is left out, and Triton's auto-complete "
                     "gives a model that can batch max_batch_size 4 and a dynamic batcher; to keep one request per "
                     "run start tritonserver with --backend-config=onnxruntime,default-max-batch-size=1")
    return notes


def _memory_notes(the_plan: Plan, name: str) -> list[str]:
    """Memory policies Triton's numa-node (MPOL_BIND to one node) cannot give; no numa-node is set for
    them, so that memory follows the kernel's default policy (local to the CPU that touches it first)."""
    notes = []
    for w in the_plan.workers:
        nodes = format_cpulist(w.mem_nodes)
        if w.mem_policy == "bind" and len(w.mem_nodes) > 1:
            notes.append(f"worker {w.index} bound its memory to nodes {nodes}; numa-node takes one node: none is set")
        elif w.mem_policy == "preferred":
            notes.append(f"worker {w.index} preferred memory node {nodes}; Triton can only bind: none is set "
                         f"(--host-policy={policy_name(name, w)},numa-node={nodes} would bind instead)")
        elif w.mem_policy == "interleave":
            notes.append(f"worker {w.index} interleaved its memory over nodes {nodes}; no host policy setting "
                         "interleaves: none is set")
    return notes
