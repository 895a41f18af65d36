"""The Triton export: its config.pbtxt parses as Triton's ModelConfig (protobuf text format, strictly:
an unknown field or a value of the wrong type fails), and the tritonserver host policies its comment
gives, read as Triton reads them, put every worker on the plan's CPUs and NUMA node. A deployment's
models get one config each, with host policies that do not clash (that a deployment gets every
format: tests/test_export.py).

The schema is the part of Triton's ``model_config.proto`` (triton-inference-server/common,
protobuf/model_config.proto) that the export writes, with Triton's own names, numbers and types, built
as a descriptor for the protobuf runtime that onnx already depends on (no protoc, no tritonclient).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from tests.test_export import CLI, config_document
from tuner.machine.placement import Params
from tuner.results import export
from tuner.results.documents import DEPLOYMENT_FORMAT
from tuner.results.export_triton import triton_cpu_cores

_F = descriptor_pb2.FieldDescriptorProto


def _message(name: str, *fields: tuple, nested: tuple = (), enums: tuple = ()) -> descriptor_pb2.DescriptorProto:
    """fields: (name, number, type, label, type_name); label and type_name may be left out."""
    message = descriptor_pb2.DescriptorProto(name=name)
    for name_, number, type_, *rest in fields:
        label = rest[0] if rest else _F.LABEL_OPTIONAL
        field = message.field.add(name=name_, number=number, type=type_, label=label)
        if len(rest) > 1:
            field.type_name = rest[1]
    message.nested_type.extend(nested)
    message.enum_type.extend(enums)
    return message


def _model_config_class():
    """inference.ModelConfig, restricted to the fields a placetune export may write."""
    repeated, string, message = _F.LABEL_REPEATED, _F.TYPE_STRING, _F.TYPE_MESSAGE
    kind = descriptor_pb2.EnumDescriptorProto(name="Kind")
    for number, value in enumerate(("KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL")):
        kind.value.add(name=value, number=number)
    parameters_entry = _message("ParametersEntry", ("key", 1, string),
                                ("value", 2, message, _F.LABEL_OPTIONAL, ".inference.ModelParameter"))
    parameters_entry.options.map_entry = True
    schema = descriptor_pb2.FileDescriptorProto(name="model_config_subset.proto", package="inference", syntax="proto3")
    schema.message_type.extend([
        _message("ModelParameter", ("string_value", 1, string)),
        _message("ModelInstanceGroup", ("name", 1, string), ("kind", 4, _F.TYPE_ENUM, _F.LABEL_OPTIONAL,
                                                              ".inference.ModelInstanceGroup.Kind"),
                 ("count", 2, _F.TYPE_INT32), ("gpus", 3, _F.TYPE_INT32, repeated), ("profile", 5, string, repeated),
                 ("passive", 7, _F.TYPE_BOOL), ("host_policy", 9, string), enums=(kind,)),
        _message("ModelOptimizationPolicy",
                 ("graph", 1, message, _F.LABEL_OPTIONAL, ".inference.ModelOptimizationPolicy.Graph"),
                 nested=(_message("Graph", ("level", 1, _F.TYPE_INT32)),)),
        _message("ModelDynamicBatching", ("preferred_batch_size", 1, _F.TYPE_INT32, repeated),
                 ("max_queue_delay_microseconds", 2, _F.TYPE_UINT64), ("preserve_ordering", 3, _F.TYPE_BOOL)),
        _message("ModelConfig", ("name", 1, string), ("platform", 2, string), ("backend", 17, string),
                 ("max_batch_size", 4, _F.TYPE_INT32),
                 ("instance_group", 7, message, repeated, ".inference.ModelInstanceGroup"),
                 ("dynamic_batching", 11, message, _F.LABEL_OPTIONAL, ".inference.ModelDynamicBatching"),
                 ("optimization", 12, message, _F.LABEL_OPTIONAL, ".inference.ModelOptimizationPolicy"),
                 ("parameters", 14, message, repeated, ".inference.ModelConfig.ParametersEntry"),
                 nested=(parameters_entry,)),
    ])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(schema)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


ModelConfig = _model_config_class()
KIND_CPU = ModelConfig.DESCRIPTOR.fields_by_name["instance_group"].message_type.enum_values_by_name["KIND_CPU"].number


def parse_pbtxt(text: str):
    return text_format.Parse(text, ModelConfig())


def tritonserver_argv(text: str) -> list[str]:
    """The tritonserver command line of the export's opening comment, continuation lines joined."""
    comment = [line[1:] for line in text.splitlines() if line.startswith("#")]
    start = next(i for i, line in enumerate(comment) if line.strip().startswith("tritonserver "))
    command = []
    for line in comment[start:]:
        command.append(line.strip().removesuffix("\\"))
        if not line.rstrip().endswith("\\"):
            break
    return shlex.split(" ".join(command))


def host_policies(argv: list[str]) -> dict[str, dict[str, str]]:
    """policy -> {setting: value}, as tritonserver reads --host-policy=<name>,<setting>=<value>: the name
    ends at the first ',', the setting at the first '=' after it (server src/command_line_parser.cc)."""
    policies: dict[str, dict[str, str]] = {}
    for arg in argv:
        if arg.startswith("--host-policy="):
            name, rest = arg.removeprefix("--host-policy=").split(",", 1)
            setting, value = rest.split("=", 1)
            policies.setdefault(name, {})[setting] = value
    return policies


def triton_cpus(value: str) -> set[int]:
    """cpu-cores as Triton core's SetNumaThreadAffinity reads it: comma-separated LOW-HIGH ranges only."""
    cpus = set()
    for entry in value.split(","):
        assert re.fullmatch(r"\d+-\d+", entry), f"Triton refuses cpu-cores entry {entry!r} (not LOW-HIGH)"
        low, high = map(int, entry.split("-"))
        cpus.update(range(low, high + 1))
    return cpus


def check_against_plan(document: dict) -> None:
    """Every worker is one CPU instance whose host policy gives the plan's CPUs and (bound to one node) NUMA node."""
    text = export.render(document, "triton")
    config = parse_pbtxt(text)
    params = document["params"]
    policies = host_policies(tritonserver_argv(text))
    workers = document["plan"]["workers"]
    assert config.backend == "onnxruntime" and len(config.instance_group) == len(workers)
    assert len({group.host_policy for group in config.instance_group}) == len(workers)
    for group, w in zip(config.instance_group, workers, strict=True):
        assert (group.kind, group.count) == (KIND_CPU, 1)
        policy = policies[group.host_policy]
        assert triton_cpus(policy["cpu-cores"]) == set(w["cpus"])
        if w["mem_policy"] == "bind" and len(w["mem_nodes"]) == 1:
            assert int(policy["numa-node"]) == w["mem_nodes"][0]
        else:
            assert "numa-node" not in policy
    assert set(policies) == {group.host_policy for group in config.instance_group}
    values = {key: entry.string_value for key, entry in config.parameters.items()}
    assert values == {"intra_op_thread_count": str(params["intra_op_threads"]),
                      "inter_op_thread_count": str(params["inter_op_threads"]),
                      "execution_mode": "1" if params["execution_mode"] == "parallel" else "0"}


def test_the_parser_is_strict():
    with pytest.raises(text_format.ParseError):
        parse_pbtxt('instance_group { kind: KIND_CPU host_polcy: "p" }')
    with pytest.raises(text_format.ParseError):
        parse_pbtxt('dynamic_batching { max_queue_delay_microseconds: "100" }')
    with pytest.raises(AssertionError, match="not LOW-HIGH"):
        triton_cpus("0-1,3")


def test_cpu_cores_are_ranges_triton_accepts():
    for cpus in ([3], [0, 1, 2, 5, 7, 8], [9, 4, 5, 6], list(range(0, 64, 2))):
        assert triton_cpus(triton_cpu_cores(cpus)) == set(cpus)
    assert triton_cpu_cores([3]) == "3-3" and triton_cpu_cores([0, 1, 2, 5, 7, 8]) == "0-2,5-5,7-8"


def test_every_worker_of_a_bound_plan_gets_its_cpus_and_node(machine_dir):
    from tests.conftest import fixture_topology

    topo = fixture_topology(machine_dir)
    nodes, cores = topo.usable_nodes, len(topo.cores())
    if len(nodes) < 2:
        pytest.skip("single-node fixture")
    for smt in (False, True):
        params = Params(workers=len(nodes), cores_per_worker=max(1, cores // len(nodes) // 2), intra_op_threads=2,
                        numa_policy="bind", smt=smt)
        check_against_plan(config_document(params, topo))


def test_this_machines_plan_unbound_parallel_batched():
    params = Params(workers=1, cores_per_worker=1, intra_op_threads=1, inter_op_threads=2, execution_mode="parallel",
                    max_batch=8, batch_timeout_ms=2.5, graph_optimization="extended")
    document = config_document(params)
    check_against_plan(document)
    config = parse_pbtxt(export.render(document, "triton"))
    assert config.max_batch_size == 8 and config.dynamic_batching.max_queue_delay_microseconds == 2500
    assert config.optimization.graph.level == 1  # the backend's EXTENDED (src/onnxruntime.cc)


def test_what_triton_cannot_express_is_said_and_not_guessed(machine_dir):
    from tests.conftest import fixture_topology

    topo = fixture_topology(machine_dir)
    if len(topo.usable_nodes) < 2:
        pytest.skip("single-node fixture")
    for policy, note in (("interleave", "interleaved its memory"), ("preferred", "Triton can only bind")):
        document = config_document(Params(workers=2, cores_per_worker=1, numa_policy=policy, spinning=False), topo)
        check_against_plan(document)
        text = export.render(document, "triton")
        assert note in text and "spinning off" in text
        assert all("numa-node" not in p for p in host_policies(tritonserver_argv(text)).values())
        assert not parse_pbtxt(text).HasField("dynamic_batching")  # one request per run: no batcher written


def test_an_unpinned_default_config_has_no_host_policy():
    document = config_document(Params(workers=2, cores_per_worker=1, intra_op_threads=0, pin=False))
    text = export.render(document, "triton")
    config = parse_pbtxt(text)
    assert len(config.instance_group) == 2 and not any(g.host_policy for g in config.instance_group)
    assert host_policies(tritonserver_argv(text)) == {} and "unpinned" in text
    assert config.parameters["intra_op_thread_count"].string_value == "0"  # ONNX Runtime's default


def _deployment() -> dict:
    models = {}
    for name, workers in (("ranker", 1), ("embedder", 1)):
        document = config_document(Params(workers=workers, cores_per_worker=1, intra_op_threads=1))
        document["model"]["name"] = name
        models[name] = document
    return {"format": DEPLOYMENT_FORMAT, "models": models}


def test_a_deployment_exports_one_triton_config_per_model_with_distinct_policies(tmp_path):
    config = tmp_path / "best_deployment.json"
    config.write_text(json.dumps(_deployment()))
    done = subprocess.run([*CLI, "export", "--config", str(config), "--format", "triton", "--out", str(tmp_path / "t")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    seen: set[str] = set()
    for name in ("ranker", "embedder"):
        text = (tmp_path / "t" / f"{name}-config.pbtxt").read_text()
        document = json.loads((tmp_path / "t" / f"{name}.json").read_text())
        assert text == export.render(document, "triton") and parse_pbtxt(text).name == name
        check_against_plan(document)
        policies = set(host_policies(tritonserver_argv(text)))
        assert policies and not policies & seen  # one tritonserver serves both models: no policy clash
        seen |= policies
        assert not (tmp_path / "t" / f"{name}-config.pbtxt").stat().st_mode & 0o111  # a config, not a script
    done = subprocess.run([*CLI, "export", "--config", str(config), "--format", "numactl",
                           "--out", str(tmp_path / "n")], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and (tmp_path / "n" / "ranker-launch.sh").stat().st_mode & 0o111, done.stderr
    assert not (tmp_path / "n" / "ranker.json").stat().st_mode & 0o111
