"""The best config as a Kubernetes pod spec fragment: one Guaranteed-QoS container per worker, with
the kubelet settings the placement needs and what a pod gets without them, as YAML comments.

What the comments say was checked against the Kubernetes documentation (tasks/administer-cluster:
cpu-management-policies, topology-manager, memory-manager): the static CPU manager gives exclusive
CPUs only to containers of Guaranteed pods with integer CPU requests, and refuses to start without a
CPU reservation; every other container runs in the shared pool, which the kubelet resizes as
exclusive CPUs are handed out and given back; the topology manager admits or rejects a pod by NUMA
alignment; the memory manager (Static) is what sets a container's cpuset.mems.
"""

from __future__ import annotations

import yaml

from tuner.machine.cpulist import format_cpulist
from tuner.machine.placement import Params, Plan
from tuner.results.export import _summary, ort_env_note, placement, worker_env


def k8s_fragment(document: dict, config_path: str) -> str:
    """A pod spec fragment: one Guaranteed-QoS container per worker, and what Kubernetes cannot express."""
    params, the_plan = placement(document)
    containers = []
    for w in the_plan.workers:
        cpus = len(w.cpus) if w.cpus else max(1, params.cores_per_worker)
        env = [{"name": k, "value": v} for k, v in worker_env(document, w.index, config_path).items()]
        containers.append({
            "name": f"worker-{w.index}",
            "image": "your-serving-image",
            "env": env,
            "resources": {"requests": {"cpu": str(cpus), "memory": "2Gi"},
                          "limits": {"cpu": str(cpus), "memory": "2Gi"}},
        })
    notes = [_summary(document), *kubelet_requirements(params, the_plan), *ort_env_note(document)]
    header = [f"# {line}".rstrip() for line in notes]
    body = yaml.safe_dump({"spec": {"containers": containers}}, sort_keys=False)
    return "\n".join(header) + "\n" + body


def kubelet_requirements(params: Params, the_plan: Plan) -> list[str]:
    """Comment lines: the kubelet settings the placement needs, what a pod gets without them, and what
    Kubernetes cannot express. Long on purpose: each line is a fact an operator has to act on."""
    workers = the_plan.workers
    spans = any(len(set(w.nodes)) > 1 for w in workers)
    topology = ("restricted (a worker spans NUMA nodes: single-numa-node would reject the pod)" if spans
                else "single-numa-node (or restricted)")
    memory = {w.mem_policy for w in workers} - {"none"}
    smt = (["whole cores (every SMT sibling): set cpuManagerPolicyOptions full-pcpus-only: \"true\"."] if params.smt
           else ["one CPU of each core, its SMT siblings left idle: Kubernetes cannot leave them idle",
                 "    (full-pcpus-only, with a request that counts the siblings, keeps other pods off them)."])
    return [
        "Pod spec fragment: one container per worker. Guaranteed QoS: every container of the pod has CPU and",
        "memory requests == limits, the CPU an integer. Set memory to your worker's real need.",
        "",
        "Kubelet settings the placement needs on the node (KubeletConfiguration field, or flag):",
        "  cpuManagerPolicy: static (--cpu-manager-policy=static), with a CPU reservation > 0 (reservedSystemCPUs,",
        "    kubeReserved or systemReserved cpu; the kubelet will not start static without one): each container",
        "    of a Guaranteed pod with an integer CPU request gets that many CPUs for itself (cpuset).",
        f"  topologyManagerPolicy: {topology}:",
        "    the node refuses the pod (TopologyAffinityError) rather than split a container's CPUs across nodes.",
        "  memoryManagerPolicy: Static (--memory-manager-policy=Static, with --reserved-memory): only it sets a",
        "    container's cpuset.mems, to the NUMA node(s) it reserves the container's memory on" + (
            f" (the measured workers' memory policy: {', '.join(sorted(memory))})." if memory else "."),
        f"  SMT: the measured workers had {smt[0]}", *smt[1:],
        "",
        "Without them the pod still runs, but not as measured:",
        "  - policy none (the default), or a Burstable/BestEffort pod or a fractional CPU request under static:",
        "    the container runs on the node's shared CPUs with other pods; its CPU limit is a CFS quota",
        "    (throttling), not CPUs of its own. Under static the kubelet shrinks and grows that shared pool as",
        "    exclusive CPUs are handed out and given back, rewriting the container's cpuset each time, and the",
        "    kernel may then reset the affinity a worker set for its threads to the new cpuset.",
        "  - no topology manager policy (none, best-effort): a container's CPUs may span NUMA nodes.",
        "  - no memory manager: memory may come from any node; the worker's own set_mempolicy still applies",
        "    to the nodes its cpuset.mems allows.",
        "",
        "What Kubernetes cannot express: WHICH CPUs a container gets (the CPU manager picks them, not this",
        "plan). tuner.deploy.apply() pins each worker to the measured CPU ids below: in a container whose",
        "cpuset holds none of them it fails ('cannot pin to CPUs'), one holding some pins the worker to",
        "fewer CPUs than measured. Memory interleave/preferred cannot be asked of the kubelet.",
        "Measured placement: " + "; ".join(
            f"worker {w.index} cpus {format_cpulist(w.cpus) or 'any'} mem {w.mem_policy} "
            f"{format_cpulist(w.mem_nodes)}".rstrip() for w in workers),
    ]
