"""The best config, in the form a deployment takes.

Every format is generated from one best-config document (``placetune-config/1``: params, plan,
what was measured). The launch formats start N copies of the user's serving command, worker i
on the CPUs and memory nodes the plan gave worker i, with these variables set:

- ``PLACETUNE_WORKER_INDEX``, ``PLACETUNE_WORKERS``, ``PLACETUNE_CONFIG`` (read by ``tuner.deploy.apply``),
- ``PLACETUNE_INTRA_OP_THREADS``, ``PLACETUNE_INTER_OP_THREADS``, ``OMP_NUM_THREADS``,
- ``ORT_INTRA_OP_NUM_THREADS`` / ``ORT_INTER_OP_NUM_THREADS`` only where the onnxruntime the config was
  measured with reads them (``ort_reads_thread_env``; docs/export.md has the evidence),
- ``PLACETUNE_MAX_BATCH``, ``PLACETUNE_BATCH_TIMEOUT_MS`` (the serving process's dynamic batching:
  up to that many arrived requests per ``session.run``, a batch waiting at most that long for more).

Each format is one entry of ``_FORMATS`` (its renderer and the file name a deployment's model gets), so
a new format is exported for deployments (``deployment_files``: one file per model) as well. The
Kubernetes fragment lives in ``export_k8s.py``, the Triton model configuration in ``export_triton.py``.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import yaml

from tuner.errors import UsageError
from tuner.machine.cpulist import format_cpulist
from tuner.machine.placement import Params, Plan, WorkerSpec
from tuner.results.documents import ConfigDocument


def render(document: dict | ConfigDocument, fmt: str, config_path: str = "best_config.json") -> str:
    """The text of one export format. ``config_path`` is where the deployment will find the JSON."""
    data = document.to_dict() if isinstance(document, ConfigDocument) else document
    return format_of(fmt).render(data, config_path)


def deployment_files(models: Mapping[str, dict | ConfigDocument], fmt: str,
                     config_dir: str = ".") -> dict[str, tuple[str, bool]]:
    """A deployment's export, one artifact per model (``models``: each one's config document, the
    ``models`` of a ``DeploymentDocument``): file name -> (text, executable). Each model also gets
    its JSON config (``NAME.json``), which its launch script / unit / container points
    PLACETUNE_CONFIG at."""
    the_format = format_of(fmt)
    files = {}
    for name, sub in models.items():
        files[f"{name}.json"] = (render(sub, "json"), False)
        files[f"{name}{the_format.suffix}"] = (render(sub, fmt, f"{config_dir.rstrip('/')}/{name}.json"),
                                               the_format.executable)
    return files


def format_of(fmt: str) -> Format:
    if fmt not in _FORMATS:
        raise UsageError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    return _FORMATS[fmt]


def _summary(document: dict) -> str:
    bound = document.get("p99_bound_ms")
    bound_text = f"P99 bound {bound:g} ms" if bound else "no P99 bound"
    return (f"{document.get('label')} from study {document.get('study')} trial {document.get('trial')}: "
            f"{document.get('throughput', 0):.1f} req/s, P99 {document.get('p99_ms', 0):.2f} ms ({bound_text}, "
            f"scenario {document.get('scenario')}); model {document['model']['name']} "
            f"sha256 {document['model']['sha256'][:12]}; topology {document.get('topology_fingerprint', '')[:12]}")


def placement(document: dict) -> tuple[Params, Plan]:
    """The document's measured config and plan, typed (a malformed one is a UsageError)."""
    try:
        return Params.from_dict(document["params"]), Plan.from_dict(document["plan"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"the config's params or plan is malformed ({type(exc).__name__}: {exc}); export it "
                         "again with 'placetune export --format json'") from None


def worker_env(document: dict, index: int, config_path: str) -> dict[str, str]:
    """The variables worker ``index`` is started with."""
    params, the_plan = placement(document)
    env = {
        "PLACETUNE_WORKER_INDEX": str(index),
        "PLACETUNE_WORKERS": str(len(the_plan.workers)),
        "PLACETUNE_CONFIG": config_path,
        "PLACETUNE_INTER_OP_THREADS": str(params.inter_op_threads),
        "PLACETUNE_MAX_BATCH": str(params.max_batch),
        "PLACETUNE_BATCH_TIMEOUT_MS": f"{params.batch_timeout_ms:g}",
    }
    if params.intra_op_threads:
        env["PLACETUNE_INTRA_OP_THREADS"] = str(params.intra_op_threads)
        env["OMP_NUM_THREADS"] = str(params.intra_op_threads)
    return {**env, **ort_thread_env(document)}


# onnxruntime sizes a session's thread pools from ORT_INTRA_OP_NUM_THREADS / ORT_INTER_OP_NUM_THREADS
# when its SessionOptions leave the count unset (microsoft/onnxruntime PR #29688, merged 2026-07-13;
# seen in 1.32.0: the names in libonnxruntime.so beside thread_utils' strings, and a session without
# intra_op_num_threads started 4 pool threads under ORT_INTRA_OP_NUM_THREADS=5). Earlier releases
# ignore both. 1.32 is the first version checked, so the variables are emitted from it on only.
ORT_THREAD_ENV_SINCE = (1, 32)


def measured_onnxruntime(document: dict) -> str:
    """The onnxruntime version the config was measured with, else the installed one ("" if neither
    is known). The installed one is read from package metadata: importing onnxruntime is not needed."""
    version = (document.get("machine") or {}).get("onnxruntime") or ""
    if not version:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as installed

        try:
            version = installed("onnxruntime")
        except PackageNotFoundError:
            version = ""
    return str(version)


def ort_reads_thread_env(document: dict) -> bool:
    """Does the onnxruntime of ``document`` (``measured_onnxruntime``) read ORT_*_NUM_THREADS?"""
    found = re.match(r"(\d+)\.(\d+)", measured_onnxruntime(document))
    return bool(found) and (int(found[1]), int(found[2])) >= ORT_THREAD_ENV_SINCE


def ort_thread_env(document: dict) -> dict[str, str]:
    """ORT_INTRA_OP_NUM_THREADS (a set intra-op count) and ORT_INTER_OP_NUM_THREADS (parallel execution
    only: a sequential session has no inter-op pool), where that onnxruntime reads them; else none."""
    params, _ = placement(document)
    env = {}
    if ort_reads_thread_env(document):
        if params.intra_op_threads:
            env["ORT_INTRA_OP_NUM_THREADS"] = str(params.intra_op_threads)
        if params.execution_mode == "parallel" and params.inter_op_threads:
            env["ORT_INTER_OP_NUM_THREADS"] = str(params.inter_op_threads)
    return env


def ort_env_note(document: dict) -> list[str]:
    """Comment lines (without the comment mark) saying which thread-count variables ONNX Runtime reads."""
    version = measured_onnxruntime(document)
    since = ".".join(map(str, ORT_THREAD_ENV_SINCE))
    instead = ["the counts reach ONNX Runtime through tuner.deploy.apply() (from the config) or your server",
               "reading PLACETUNE_INTRA_OP_THREADS / PLACETUNE_INTER_OP_THREADS."]
    if ort_reads_thread_env(document):
        head = [f"ORT_INTRA_OP_NUM_THREADS / ORT_INTER_OP_NUM_THREADS (onnxruntime {version} reads them; releases",
                f"before {since} may not) size a session's thread pools only where its SessionOptions leave the count",
                "unset; tuner.deploy.apply() sets the counts itself, from the config."]
    elif version:
        head = [f"No ORT_INTRA_OP_NUM_THREADS / ORT_INTER_OP_NUM_THREADS: onnxruntime {version} is older than {since},",
                "the first version checked to read them;", *instead]
    else:
        head = ["No ORT_INTRA_OP_NUM_THREADS / ORT_INTER_OP_NUM_THREADS: the config records no onnxruntime version",
                f"and none is installed ({since} is the first version checked to read them);", *instead]
    return head + ["ONNX Runtime does not read OMP_NUM_THREADS: it is set for OpenMP/BLAS libraries in the server."]


def numactl_args(worker: WorkerSpec, pinned: bool) -> list[str]:
    """numactl options for one worker: --physcpubind and the memory policy."""
    args = []
    if pinned and worker.cpus:
        args.append(f"--physcpubind={format_cpulist(worker.cpus)}")
    nodes = format_cpulist(worker.mem_nodes)
    if worker.mem_policy == "bind":
        args.append(f"--membind={nodes}")
    elif worker.mem_policy == "interleave":
        args.append(f"--interleave={nodes}")
    elif worker.mem_policy == "preferred":
        args.append(f"--preferred={worker.mem_nodes[0]}")
    return args


def numactl_script(document: dict, config_path: str) -> str:
    """A bash script that starts COMMAND once per worker under numactl."""
    params, the_plan = placement(document)
    pinned, workers = params.pin, the_plan.workers
    lines = [
        "#!/usr/bin/env bash",
        f"# placetune launch script: {_summary(document)}",
        "#",
        "# Usage: ./launch.sh COMMAND [ARGS...]",
        f"# Starts {len(workers)} copy(ies) of COMMAND, worker i on its CPUs and memory nodes (numactl), each with",
        "# PLACETUNE_WORKER_INDEX, PLACETUNE_CONFIG and thread-count variables set; in Python,",
        "# tuner.deploy.apply() reads them and returns the measured ONNX Runtime session options.",
        "# Ctrl-C or SIGTERM stops every worker; the script exits when all workers have exited.",
        *(f"# {line}" for line in ort_env_note(document)),
        "set -euo pipefail",
        'if [ "$#" -eq 0 ]; then echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; fi',
        f"export PLACETUNE_CONFIG=\"${{PLACETUNE_CONFIG:-{config_path}}}\"",
        'NUMACTL="${NUMACTL:-numactl}"',
    ]
    if any(numactl_args(w, pinned) for w in workers):
        lines += [
            'if ! command -v "$NUMACTL" >/dev/null 2>&1; then',
            '  echo "$0: numactl not found: install it (apt install numactl / dnf install numactl)" >&2; exit 1',
            "fi",
        ]
    lines += [
        "pids=()",
        'stop() { trap - INT TERM; for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done; '
        'wait; exit 130; }',
        "trap stop INT TERM",
    ]
    for w in workers:
        env = worker_env(document, w.index, "$PLACETUNE_CONFIG")
        env_text = " ".join(f"{k}={v if v.startswith('$') else shlex.quote(v)}"
                            for k, v in env.items() if k != "PLACETUNE_CONFIG")
        args = numactl_args(w, pinned)
        launcher = f'"$NUMACTL" {" ".join(args)} -- ' if args else ""
        lines.append(f"# worker {w.index}: cpus {format_cpulist(w.cpus) or 'any'}, memory "
                     f"{w.mem_policy} {format_cpulist(w.mem_nodes)}".rstrip())
        lines.append(f'env {env_text} {launcher}"$@" &')
        lines.append("pids+=($!)")
    lines += [
        "status=0",
        'for pid in "${pids[@]}"; do wait "$pid" || status=$?; done',
        'exit "$status"',
        "",
    ]
    return "\n".join(lines)


def env_file(document: dict, config_path: str) -> str:
    """KEY=VALUE lines: the common settings, then each worker's with a _<index> suffix."""
    params, the_plan = placement(document)
    common = worker_env(document, 0, config_path)
    common.pop("PLACETUNE_WORKER_INDEX")
    lines = [f"# {_summary(document)}", *(f"# {line}" for line in ort_env_note(document))]
    lines += [f"{k}={shlex.quote(v)}" for k, v in common.items()]
    for w in the_plan.workers:
        i = w.index
        lines.append(f"PLACETUNE_CPUS_{i}={shlex.quote(format_cpulist(w.cpus))}")
        lines.append(f"PLACETUNE_MEM_POLICY_{i}={w.mem_policy}")
        lines.append(f"PLACETUNE_MEM_NODES_{i}={shlex.quote(format_cpulist(w.mem_nodes))}")
        numactl = " ".join(numactl_args(w, params.pin))
        lines.append(f"PLACETUNE_NUMACTL_{i}={shlex.quote(numactl)}")
    return "\n".join(lines) + "\n"


_SYSTEMD_POLICY = {"bind": "bind", "interleave": "interleave", "preferred": "preferred"}


def systemd_unit(document: dict, config_path: str) -> str:
    """A template unit ``placetune@.service`` (instance = worker index) and one drop-in per worker
    with its CPUAffinity/NUMAPolicy/NUMAMask, as files separated by ``# === path ===`` lines."""
    params, the_plan = placement(document)
    workers = the_plan.workers
    files = []
    template = [
        f"# {_summary(document)}",
        "# Install: copy the files below to /etc/systemd/system/, set ExecStart, then",
        "#   systemctl daemon-reload && systemctl enable --now " + " ".join(f"placetune@{w.index}"
                                                                           for w in workers),
        "[Unit]",
        "Description=placetune-placed inference worker %i",
        "After=network.target",
        "",
        "[Service]",
        "Type=simple",
        f"# worker %i listens on {BASE_PORT} + %i (systemd specifiers do no arithmetic: the shell does it)",
        f"ExecStart=/bin/sh -c 'exec /usr/local/bin/your-server --port $$(({BASE_PORT} + %i))'",
        *(f"# {line}" for line in ort_env_note(document)),
        "Environment=PLACETUNE_WORKER_INDEX=%i",
    ]
    common = worker_env(document, 0, config_path)
    common.pop("PLACETUNE_WORKER_INDEX")
    template += [f"Environment={k}={v}" for k, v in common.items()]
    template += ["Restart=on-failure", "", "[Install]", "WantedBy=multi-user.target", ""]
    files.append(("placetune@.service", "\n".join(template)))
    for w in workers:
        body = [f"# worker {w.index}", "[Service]"]
        if params.pin and w.cpus:
            body.append(f"CPUAffinity={' '.join(str(c) for c in w.cpus)}")
        if w.mem_policy in _SYSTEMD_POLICY:
            body.append(f"NUMAPolicy={_SYSTEMD_POLICY[w.mem_policy]}")
            body.append(f"NUMAMask={' '.join(str(n) for n in w.mem_nodes)}")
        files.append((f"placetune@{w.index}.service.d/placement.conf", "\n".join(body) + "\n"))
    return "".join(f"# === {path} ===\n{text}" for path, text in files)


def split_files(text: str) -> dict[str, str]:
    """The files of a multi-file export (systemd), by path."""
    out: dict[str, str] = {}
    current = None
    for line in text.splitlines(keepends=True):
        if line.startswith("# === ") and line.rstrip().endswith(" ==="):
            current = line.strip()[6:-4]
            out[current] = ""
        elif current is not None:
            out[current] += line
    return out


BASE_PORT = 8000  # the systemd template's worker i listens on BASE_PORT + i
DOCKER_CONFIG_DIR = "/etc/placetune"


def docker_config_path(config_path: str) -> str:
    """Where the container finds the config: ``config_path`` when absolute, else under /etc/placetune
    (a relative path inside an image depends on its WORKDIR, and ``docker -v`` needs an absolute one)."""
    return config_path if config_path.startswith("/") else f"{DOCKER_CONFIG_DIR}/{config_path.rsplit('/', 1)[-1]}"


def docker_script(document: dict, config_path: str) -> str:
    """``docker run`` lines, one container per worker on its CPUs and memory nodes."""
    params, the_plan = placement(document)
    pinned, workers = params.pin, the_plan.workers
    config_path = docker_config_path(config_path)
    lines = [
        "#!/usr/bin/env bash",
        f"# placetune docker launch: {_summary(document)}",
        "# Usage: ./docker-run.sh IMAGE [COMMAND...]   (the config must be at PLACETUNE_CONFIG inside the image,",
        f"# or mount it: DOCKER_OPTS='-v $PWD/best_config.json:{config_path}:ro')",
        "# Docker binds CPUs (--cpuset-cpus) and memory nodes (--cpuset-mems, i.e. bind); it cannot",
        "# interleave or prefer: those policies become a bind to the same nodes.",
        *(f"# {line}" for line in ort_env_note(document)),
        "set -euo pipefail",
        'if [ "$#" -eq 0 ]; then echo "usage: $0 IMAGE [COMMAND...]" >&2; exit 2; fi',
        'IMAGE="$1"; shift',
        "read -r -a opts <<< \"${DOCKER_OPTS:-}\"",
    ]
    for w in workers:
        env = worker_env(document, w.index, config_path)
        flags = [f"--name placetune-worker-{w.index}"]
        if pinned and w.cpus:
            flags.append(f"--cpuset-cpus={format_cpulist(w.cpus)}")
        if w.mem_policy != "none" and w.mem_nodes:
            flags.append(f"--cpuset-mems={format_cpulist(w.mem_nodes)}")
        flags += [f"-e {k}={shlex.quote(v)}" for k, v in env.items()]
        lines.append(f'docker run -d {" ".join(flags)} "${{opts[@]}}" "$IMAGE" "$@"')
    return "\n".join(lines) + "\n"


def _k8s(document: dict, config_path: str) -> str:
    from tuner.results.export_k8s import k8s_fragment

    return k8s_fragment(document, config_path)


def _triton(document: dict, config_path: str) -> str:
    from tuner.results.export_triton import triton_config

    return triton_config(document, config_path)


@dataclass(frozen=True)
class Format:
    """One export format: its renderer, the file a deployment's model NAME gets (NAME + ``suffix``, see
    ``deployment_files``) and whether that file is a script to run."""

    render: Callable[[dict, str], str]
    suffix: str
    executable: bool = False


_FORMATS: dict[str, Format] = {
    "json": Format(lambda document, _: json.dumps(document, indent=1) + "\n", ".json"),
    "yaml": Format(lambda document, _: yaml.safe_dump(document, sort_keys=False), ".yaml"),
    "numactl": Format(numactl_script, "-launch.sh", executable=True),
    "env": Format(env_file, ".env"),
    "systemd": Format(systemd_unit, ".systemd"),
    "docker": Format(docker_script, "-docker-run.sh", executable=True),
    "k8s": Format(_k8s, "-k8s.yaml"),
    "triton": Format(_triton, "-config.pbtxt"),
}
FORMATS = tuple(_FORMATS)
