"""deploy/: the Docker Compose file and the Kubernetes manifest start a server that serves every configured model.

No container runtime is needed: `serving.server` takes `tensorflow_model_server`'s flags, so the container
arguments of each file are run as they are, with the container's paths (`/config/...`, `/models/...`) mapped the
way the file's volumes map them, onto a temporary export root holding a model under every name in
`models.config`. A wrong flag, an unparsable config or a model name that has no base path fails here.
"""

import pathlib

import numpy as np
import pytest
import requests
import yaml
from google.protobuf import text_format
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from serving import health
from tests.serving.conftest import FEATURES, install_version, tensor, to_array

DEPLOY = pathlib.Path(__file__).resolve().parents[2] / "deploy"
CONFIG_FILES = ("models.config", "batching.config", "monitoring.config")


def _model_config() -> model_server_config_pb2.ModelServerConfig:
    return text_format.Parse((DEPLOY / "models.config").read_text(), model_server_config_pb2.ModelServerConfig())


def _manifest() -> dict:
    return {doc["kind"]: doc for doc in yaml.safe_load_all((DEPLOY / "kubernetes" / "serving.yaml").read_text())}


def _compose_service() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]["serving"]


def _host_file(text: str, name: str, models_root: pathlib.Path, directory: pathlib.Path) -> pathlib.Path:
    """A config file as the server sees it in the container, with `/models/` (the mounted export root) mapped."""
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(text.replace('"/models/', f'"{models_root}/'))
    return path


def _compose_arguments(models_root: pathlib.Path, tmp_path) -> list:
    """The Compose command with each volume's container path replaced by its host path."""
    service = _compose_service()
    mounts = {}
    for volume in service["volumes"]:
        spec = volume[:-3] if volume.endswith(":ro") else volume
        host, container = spec.rsplit(":", 1)  # the host part may hold ${VAR:-default}
        if container == "/models":
            mounts[container] = models_root
        else:
            source = DEPLOY / host
            mounts[container] = _host_file(source.read_text(), source.name, models_root, tmp_path / "compose")
    assert "/models" in mounts, "the export root must be mounted at /models"
    return _substitute(service["command"], mounts)


def _kubernetes_arguments(models_root: pathlib.Path, tmp_path) -> list:
    """The Deployment's args with the ConfigMap written out as files and the models volume at `models_root`."""
    manifest = _manifest()
    config_dir = tmp_path / "configmap"
    for key, text in manifest["ConfigMap"]["data"].items():
        _host_file(text, key, models_root, config_dir)
    container = manifest["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    mounts = {m["mountPath"]: config_dir if m["name"] == "config" else models_root for m in container["volumeMounts"]}
    return _substitute(container["args"], mounts)


def _substitute(arguments, mounts) -> list:
    """Maps `--flag=<container path>` onto the host: a mounted file, or a path under a mounted directory."""
    out = []
    for argument in arguments:
        flag, _, value = argument.partition("=")
        for container_path, host_path in mounts.items():
            if value == container_path or value.startswith(container_path + "/"):
                value = str(host_path) + value[len(container_path):]
                break
        out.append(f"{flag}={value}" if value else argument)
    return out


def _models_root(tmp_path, mc_versions) -> pathlib.Path:
    """An export root with version 1 of the tiny predictive model under every configured name."""
    root = tmp_path / "exports"
    for config in _model_config().model_config_list.config:
        assert config.base_path.startswith("/models/"), config.base_path
        install_version(root / config.base_path[len("/models/"):], mc_versions[1], 1)
    return root


def test_configmap_holds_the_config_files_verbatim():
    data = _manifest()["ConfigMap"]["data"]
    assert sorted(data) == sorted(CONFIG_FILES)
    for name in CONFIG_FILES:
        assert data[name] == (DEPLOY / name).read_text(), f"{name} in the ConfigMap differs from deploy/{name}"


def _environment(arguments) -> dict:
    """The container's environment variables in the file `arguments` reads."""
    if arguments is _compose_arguments:
        return {name: str(value) for name, value in _compose_service()["environment"].items()}
    container = _manifest()["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    return {entry["name"]: entry["value"] for entry in container["env"]}


def test_compose_and_kubernetes_run_the_same_server_arguments():
    container = _manifest()["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == _compose_service()["command"]
    assert container["image"] in _compose_service()["image"]
    assert _environment(_compose_arguments) == _environment(_kubernetes_arguments)


def test_the_allocator_cap_leaves_room_under_the_memory_limit():
    """TF_CPU_BFC_MEM_LIMIT_IN_MB caps TensorFlow's tensors only; the process also holds its code, the loaded
    graphs and gRPC's buffers, so the cap must sit below the container's limit or the OOM killer comes first."""
    container = _manifest()["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    limits = {"kubernetes": container["resources"]["limits"]["memory"],
              "compose": _compose_service()["deploy"]["resources"]["limits"]["memory"]}
    mebibytes = {"kubernetes": int(limits["kubernetes"].removesuffix("Gi")) * 1024,
                 "compose": int(limits["compose"].removesuffix("g")) * 1024}
    for name, arguments in (("compose", _compose_arguments), ("kubernetes", _kubernetes_arguments)):
        environment = _environment(arguments)
        assert environment["TF_CPU_ALLOCATOR_USE_BFC"] == "true"
        assert int(environment["TF_CPU_BFC_MEM_LIMIT_IN_MB"]) <= mebibytes[name] - 256, (name, limits[name])


def test_kubernetes_probes_and_service_point_at_what_the_server_opens():
    manifest = _manifest()
    container = manifest["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert f"--port={ports['grpc']}" in container["args"]
    assert f"--rest_api_port={ports['http']}" in container["args"]
    names = {c.name for c in _model_config().model_config_list.config}
    probe = container["readinessProbe"]["httpGet"]
    assert probe["port"] in ports and probe["path"].rsplit("/", 1)[1] in names
    # Liveness asks the gRPC health service (Kubernetes' grpc probes take a port number, not a name).
    assert container["livenessProbe"]["grpc"]["port"] == ports["grpc"]
    assert "--enable_grpc_healthcheck_service=true" in container["args"]
    assert {p["targetPort"] for p in manifest["Service"]["spec"]["ports"]} <= set(ports)
    selector = manifest["Deployment"]["spec"]["selector"]["matchLabels"]
    assert manifest["Service"]["spec"]["selector"] == selector
    assert selector.items() <= manifest["Deployment"]["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("arguments", [_compose_arguments, _kubernetes_arguments], ids=["compose", "kubernetes"])
def test_the_container_arguments_serve_every_configured_model(arguments, start_server, tmp_path, mc_versions,
                                                             monkeypatch):
    args = arguments(_models_root(tmp_path, mc_versions), tmp_path)
    for name, value in _environment(arguments).items():  # the container's environment, inherited by the server
        monkeypatch.setenv(name, value)
    # The fixture picks free ports; everything else is the file's.
    server = start_server([a for a in args if not a.startswith(("--port=", "--rest_api_port="))])
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel)
    x = np.arange(2 * FEATURES, dtype=np.float32).reshape(2, FEATURES)
    for config in _model_config().model_config_list.config:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = config.name
        request.inputs["x"].CopyFrom(tensor(x))
        response = stub.Predict(request, timeout=30)
        mean = to_array(response.outputs["mean"])
        np.testing.assert_allclose(mean, x.sum(1, keepdims=True) + 0.5 + np.zeros([2, 2]), rtol=0.1)
        status = requests.get(f"{server.rest}/v1/models/{config.name}", timeout=10).json()
        assert status["model_version_status"][0]["state"] == "AVAILABLE"
    # What the liveness probe asks: grpc.health.v1.Health/Check for the whole server ("").
    check = server.channel.unary_unary("/grpc.health.v1.Health/Check",
                                       request_serializer=health.HealthCheckRequest.SerializeToString,
                                       response_deserializer=health.HealthCheckResponse.FromString)
    assert check(health.HealthCheckRequest(service=""), timeout=30).status == health.SERVING
    metrics = requests.get(server.rest + "/monitoring/prometheus/metrics", timeout=10)
    assert metrics.status_code == 200 and ":tensorflow:serving:request_count" in metrics.text
    log = server.log()
    # Every argument and every batching parameter is one this server implements, so the test covers them all.
    assert "unknown argument" not in log and "this server does not" not in log and "not implemented" not in log, log
