"""Deployment files a cluster accepts: Jina's export of deploy/flow.yml, completed, checked offline by real validators.

Kubernetes manifests go through kubernetes-validate's strict schemas, compose files through the official
Compose Specification schema (shipped in check-jsonschema) and, where it is installed, docker compose's own
loader. No cluster or Docker engine runs here: what a running cluster does with them is not tested.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from clip_image_encoder.cli.main import main
from clip_image_encoder.config.options import OPTIONS
from clip_image_encoder.errors import DeploymentError, OptionError
from clip_image_encoder.service.deploy import (
    CACHE_DIR,
    DEFAULT_INDEXER_REPLICAS,
    IMAGE_UID,
    MERGER,
    MILVUS,
    MILVUS_DB,
    MILVUS_IMAGE,
    MILVUS_SECRET,
    MILVUS_SECRET_KEY,
    RESOURCES,
    complete_compose,
    complete_kubernetes,
    export_manifests,
    flow_document,
    merger_image,
)
from clip_image_encoder.service.flow import INDEXER
from clip_image_encoder.service.indexer import ShardMerger

REPO = Path(__file__).resolve().parents[2]
FLOW = REPO / "deploy" / "flow.yml"
INDEXER_DOCKERFILE = REPO / "deploy" / "Dockerfile.indexer"
KUBERNETES_VERSION = "1.32.0"
STOP_TIMEOUT_S = OPTIONS["stop_timeout_s"].default
VARIANTS = ("cpu", "gpu", "sharded", "milvus")
MILVUS_URI = "http://milvus.search.svc:19530/photos"
"""The Kubernetes milvus variant's server: one outside the export, as a Helm chart or the operator installs it."""
TOKEN = "root:not-in-any-file"

Documents = dict[str, list[dict[str, Any]]]
"""Each exported file (relative path) and its YAML documents."""


def _read_kubernetes(out: Path) -> Documents:
    return {path.relative_to(out).as_posix(): list(yaml.safe_load_all(path.read_text())) for path in out.rglob("*.yml")}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Every variant, exported once: cpu with 3 encoder replicas and the indexer in 2 shards (through the command
    line), gpu with 1 replica; milvus with the indexer on a Milvus server: on Kubernetes an outside one
    (`MILVUS_URI`) and 3 indexer replicas, in docker-compose the file's own (``--with-milvus``) and the default
    replicas. ``MILVUS_TOKEN`` is set throughout, as where an operator exports."""
    root = tmp_path_factory.mktemp("deploy")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MILVUS_TOKEN", TOKEN)
        for target in ("kubernetes", "docker-compose"):
            cpu = root / f"{target}-cpu"
            assert main(["deploy", target, "--out", str(cpu), "--flow", str(FLOW), "--replicas", "3"]) == 0
            export_manifests(target, FLOW, root / f"{target}-gpu", replicas=1, gpu=True)
            sharded = root / f"{target}-sharded"
            assert main(["deploy", target, "--out", str(sharded), "--flow", str(FLOW), "--shards", "2"]) == 0
        milvus = ["--db", MILVUS_URI, "--indexer-replicas", "3"]
        kubernetes = root / "kubernetes-milvus"
        assert main(["deploy", "kubernetes", "--out", str(kubernetes), "--flow", str(FLOW), *milvus]) == 0
        compose = root / "docker-compose-milvus"
        assert main(["deploy", "docker-compose", "--out", str(compose), "--flow", str(FLOW), "--with-milvus"]) == 0
    return {
        variant: {
            "kubernetes": _read_kubernetes(root / f"kubernetes-{variant}"),
            "compose_file": root / f"docker-compose-{variant}" / "docker-compose.yml",
            "compose": yaml.safe_load((root / f"docker-compose-{variant}" / "docker-compose.yml").read_text()),
        }
        for variant in VARIANTS
    }


def _all(documents: Documents, kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for docs in documents.values() for doc in docs if doc["kind"] == kind}


def _pod(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]


def _args_value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def _uses_with(args: list[str]) -> dict[str, Any]:
    return json.loads(_args_value(args, "--uses-with")) if "--uses-with" in args else {}


def _mebibytes(quantity: str) -> float:
    units = {"Mi": 1, "Gi": 1024, "m": 1, "g": 1024}
    unit = next(unit for unit in units if quantity.endswith(unit))
    return float(quantity.removesuffix(unit)) * units[unit]


def _dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each instruction, continuation lines joined, comments dropped."""
    text = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
    return [
        (line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1])
        for line in text.replace("\\\n", " ").splitlines()
        if line.strip()
    ]


def _image(config: str) -> list[tuple[str, str]]:
    """What ``--build-arg CONFIG=config`` builds from deploy/Dockerfile.indexer: the base image it starts FROM,
    then the instructions of the stage that the last ``FROM ${CONFIG}`` picks and of the stages it builds on."""
    stages: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    for instruction, value in _dockerfile(INDEXER_DOCKERFILE):
        if instruction == "FROM":
            base, _, name = value.partition(" AS ")
            stage: list[tuple[str, str]] = []
            stages[name] = (base.replace("${CONFIG}", config), stage)  # the last FROM has no name
        elif stages:
            stage.append((instruction, value))
    applied: list[tuple[str, str]] = []
    base = ""
    while base in stages:
        base, instructions = stages[base]
        applied = [*instructions, *applied]
    return [("FROM", base), *applied]


def _entrypoint_and_cmd(image: list[tuple[str, str]]) -> list[str]:
    """The command that ``docker run IMAGE`` starts: the last ENTRYPOINT and the CMD given after it."""
    last = max(index for index, (instruction, _) in enumerate(image) if instruction == "ENTRYPOINT")
    cmds = [json.loads(value) for instruction, value in image[last:] if instruction == "CMD"]
    return [*json.loads(image[last][1]), *(cmds[-1] if cmds else [])]


def _executor(flow: dict[str, Any], name: str) -> dict[str, Any]:
    return next(executor for executor in flow["executors"] if executor["name"] == name)


def _head_and_merger(documents: Documents) -> tuple[dict[str, Any], dict[str, Any]]:
    """The shard head's containers: the head (Jina names it ``executor``) and its ``uses_after``, in one pod."""
    containers = {
        container["name"]: container for container in _pod(_all(documents, "Deployment")["indexer-head"])["containers"]
    }
    return containers.pop("executor"), containers.pop("uses-after")


def _encoder_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: service for name, service in compose["services"].items() if name.startswith("encoder")}


# --- the validators -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_kubernetes_manifest_passes_strict_schema_validation(exported, variant):
    documents = exported[variant]["kubernetes"]
    assert {"encoder/encoder.yml", "gateway/gateway.yml"} <= set(documents)
    for docs in documents.values():
        for doc in docs:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_kubernetes_validator_rejects_a_misspelt_field(exported):
    deployment = _all(exported["cpu"]["kubernetes"], "Deployment")["encoder"]
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def _check_compose_specification(*files: Path) -> None:
    checked = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_compose_file_passes_the_compose_specification(exported):
    _check_compose_specification(*(exported[variant]["compose_file"] for variant in VARIANTS))


def _docker_compose() -> list[str] | None:
    for command in (["docker-compose"], ["docker", "compose"]):
        if shutil.which(command[0]) and subprocess.run([*command, "version"], capture_output=True).returncode == 0:
            return command
    return None


@pytest.mark.skipif(_docker_compose() is None, reason="docker compose is not installed here")
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_compose_file_loads_in_docker_compose(exported, variant):
    command = [*_docker_compose(), "-f", str(exported[variant]["compose_file"]), "config", "--quiet"]
    loaded = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert loaded.returncode == 0 and not loaded.stderr, loaded.stderr


# --- what the exporter leaves out -----------------------------------------------------------------------------


def test_encoder_replicas_are_as_asked(exported):
    assert _all(exported["cpu"]["kubernetes"], "Deployment")["encoder"]["spec"]["replicas"] == 3
    assert _all(exported["gpu"]["kubernetes"], "Deployment")["encoder"]["spec"]["replicas"] == 1
    assert len(_encoder_services(exported["cpu"]["compose"])) == 3


def test_encoder_replicas_share_one_cache_claim_mounted_at_hf_home(exported):
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):
        assert f"HF_HOME={CACHE_DIR}" in (REPO / dockerfile).read_text()
    documents = exported["cpu"]["kubernetes"]
    pod = _pod(_all(documents, "Deployment")["encoder"])
    (mount,) = pod["containers"][0]["volumeMounts"]
    (volume,) = [volume for volume in pod["volumes"] if volume["name"] == mount["name"]]
    claim = _all(documents, "PersistentVolumeClaim")[volume["persistentVolumeClaim"]["claimName"]]
    assert mount["mountPath"] == CACHE_DIR
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # 3 replicas, maybe on 3 nodes
    assert pod["securityContext"]["fsGroup"] == IMAGE_UID
    mounts = {tuple(service["volumes"]) for service in _encoder_services(exported["cpu"]["compose"]).values()}
    assert mounts == {(f"encoder-cache:{CACHE_DIR}",)}
    assert "encoder-cache" in exported["cpu"]["compose"]["volumes"]


def test_a_single_encoder_replica_gets_a_read_write_once_cache(exported):
    claims = _all(exported["gpu"]["kubernetes"], "PersistentVolumeClaim")
    assert claims["encoder-cache"]["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_indexer_runs_one_replica_on_its_own_read_write_once_claim_at_its_db(exported):
    documents = exported["cpu"]["kubernetes"]
    indexer = _all(documents, "Deployment")["indexer"]
    pod = _pod(indexer)
    db = _uses_with(pod["containers"][0]["args"])["db"]
    (mount,) = pod["containers"][0]["volumeMounts"]
    claim = _all(documents, "PersistentVolumeClaim")["indexer-index"]
    assert indexer["spec"]["replicas"] == 1
    assert indexer["spec"]["strategy"] == {"type": "Recreate"}  # never two pods on one index
    assert mount == {"name": "indexer-index", "mountPath": db}
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pod["securityContext"]["fsGroup"] == IMAGE_UID
    assert ("VOLUME", f'["{db}"]') in _image("indexer.yml")
    assert exported["cpu"]["compose"]["services"]["indexer"]["volumes"] == [f"indexer-index:{db}"]


def test_each_indexer_shard_has_its_own_read_write_once_claim_and_the_head_and_merger_none(exported):
    documents = exported["sharded"]["kubernetes"]
    deployments, claims = _all(documents, "Deployment"), _all(documents, "PersistentVolumeClaim")
    # The exporter runs the merger in the head's pod: no Deployment of its own.
    assert set(deployments) == {"gateway", "encoder", "indexer-head", "indexer-0", "indexer-1"}
    assert set(claims) == {"encoder-cache", "indexer-0-index", "indexer-1-index"}
    for shard in ("indexer-0", "indexer-1"):
        assert deployments[shard]["spec"]["replicas"] == 1
        assert deployments[shard]["spec"]["strategy"] == {"type": "Recreate"}
        assert _pod(deployments[shard])["volumes"][0]["persistentVolumeClaim"]["claimName"] == f"{shard}-index"
        assert claims[f"{shard}-index"]["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "volumes" not in _pod(deployments["indexer-head"])
    assert all("volumeMounts" not in container for container in _head_and_merger(documents))
    compose = exported["sharded"]["compose"]
    assert compose["services"]["indexer-0"]["volumes"] == ["indexer-0-index:/index"]
    assert compose["services"]["indexer-1"]["volumes"] == ["indexer-1-index:/index"]
    assert "volumes" not in compose["services"]["indexer-head"]
    assert "volumes" not in compose["services"]["indexer-uses-after"]
    assert set(compose["volumes"]) == {"encoder-cache", "indexer-0-index", "indexer-1-index"}


def test_the_sharded_head_polls_every_shard_and_sends_their_answers_to_the_merger(exported):
    head, merger = _head_and_merger(exported["sharded"]["kubernetes"])
    assert json.loads(_args_value(head["args"], "--polling")) == INDEXER.sharded_polling
    assert set(json.loads(_args_value(head["args"], "--connection-list"))) == {"0", "1"}
    # Kubernetes: the merger is the head's sidecar, on the pod's loopback.
    assert _args_value(head["args"], "--uses-after-address") == f"127.0.0.1:{merger['ports'][0]['containerPort']}"
    services = exported["sharded"]["compose"]["services"]
    compose_head, compose_merger = services["indexer-head"]["command"], services["indexer-uses-after"]["command"]
    assert json.loads(_args_value(compose_head, "--polling")) == INDEXER.sharded_polling
    assert (
        _args_value(compose_head, "--uses-after-address")
        == f"indexer-uses-after:{_args_value(compose_merger, '--port')}"
    )


def test_the_merger_runs_the_merger_image_with_its_own_resources(exported):
    _, merger = _head_and_merger(exported["sharded"]["kubernetes"])
    assert merger["image"] == "clip-image-encoder-merger:latest"
    assert _args_value(merger["args"], "--uses") == "config.yml"
    assert merger["resources"]["requests"]["memory"] == f"{RESOURCES[MERGER].memory_mib}Mi"
    assert merger["resources"]["limits"]["memory"] == f"{RESOURCES[MERGER].memory_limit_mib}Mi"
    service = exported["sharded"]["compose"]["services"]["indexer-uses-after"]
    assert service["image"] == "clip-image-encoder-merger:latest"
    assert _args_value(service["command"], "--uses") == "config.yml"
    assert service["deploy"]["resources"]["reservations"]["memory"] == f"{RESOURCES[MERGER].memory_mib}m"


def test_an_unsharded_indexer_gets_no_polling_and_no_merger(exported):
    source = yaml.safe_load(FLOW.read_text())
    for shards in (None, 1):
        indexer = _executor(flow_document(source, shards=shards), "indexer")
        assert indexer.get("shards", 1) == 1
        assert "polling" not in indexer and "uses_after" not in indexer
    assert "indexer-head" not in _all(exported["cpu"]["kubernetes"], "Deployment")
    assert "indexer-uses-after" not in exported["cpu"]["compose"]["services"]


def test_a_flow_that_shards_its_indexer_itself_gets_the_polling_and_the_merger_too():
    source = yaml.safe_load(FLOW.read_text())
    _executor(source, "indexer")["shards"] = 3
    indexer = _executor(flow_document(source), "indexer")
    assert indexer["shards"] == 3
    assert indexer["polling"] == INDEXER.sharded_polling
    assert indexer["uses_after"] == "docker://clip-image-encoder-merger:latest"


def test_the_merger_image_keeps_the_indexer_images_registry_and_tag():
    indexer = "docker://registry.example:5000/search/clip-image-encoder-indexer:v2"
    assert merger_image(indexer) == "docker://registry.example:5000/search/clip-image-encoder-merger:v2"
    assert merger_image("docker://clip-image-encoder-indexer") == "docker://clip-image-encoder-merger"


def test_a_merger_that_the_flow_names_is_kept():
    source = yaml.safe_load(FLOW.read_text())
    _executor(source, "indexer")["uses_after"] = "docker://registry.example/merger:v3"
    assert _executor(flow_document(source, shards=2), "indexer")["uses_after"] == "docker://registry.example/merger:v3"


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_container_has_grpc_startup_liveness_and_readiness_probes_on_its_port(exported, variant):
    for deployment in _all(exported[variant]["kubernetes"], "Deployment").values():
        for container in _pod(deployment)["containers"]:
            port = container["ports"][0]["containerPort"]
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert container[kind]["grpc"] == {"port": port}, (deployment["metadata"]["name"], kind)
                assert "exec" not in container[kind]


@pytest.mark.parametrize("variant", VARIANTS)
def test_grace_period_outlasts_the_prestop_sleep_and_the_drain(exported, variant):
    for deployment in _all(exported[variant]["kubernetes"], "Deployment").values():
        pod = _pod(deployment)
        for container in pod["containers"]:
            prestop_s = int(container["lifecycle"]["preStop"]["exec"]["command"][-1].removeprefix("sleep "))
            drain_s = _uses_with(container["args"]).get("stop_timeout_s", STOP_TIMEOUT_S)
            assert pod["terminationGracePeriodSeconds"] > prestop_s + drain_s
    for name, service in exported[variant]["compose"]["services"].items():
        if name == MILVUS:  # not an Executor: no drain, Docker's own grace period
            continue
        drain_s = _uses_with(service["command"]).get("stop_timeout_s", STOP_TIMEOUT_S)
        assert int(service["stop_grace_period"].removesuffix("s")) > drain_s


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_container_requests_cpu_and_memory_under_a_memory_limit(exported, variant):
    for deployment in _all(exported[variant]["kubernetes"], "Deployment").values():
        for container in _pod(deployment)["containers"]:
            requests, limits = container["resources"]["requests"], container["resources"]["limits"]
            assert requests["cpu"]
            assert 0 < _mebibytes(requests["memory"]) <= _mebibytes(limits["memory"])
    for service in exported[variant]["compose"]["services"].values():
        resources = service["deploy"]["resources"]
        assert 0 < _mebibytes(resources["reservations"]["memory"]) <= _mebibytes(resources["limits"]["memory"])


def test_gpu_variant_gives_each_encoder_replica_one_gpu_and_nothing_else_a_gpu(exported):
    for deployment in _all(exported["gpu"]["kubernetes"], "Deployment").values():
        (container,) = _pod(deployment)["containers"]
        resources = container["resources"]
        if deployment["metadata"]["name"] == "encoder":
            assert container["image"] == "clip-image-encoder:gpu"
            assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "1"
        else:
            assert "nvidia.com/gpu" not in resources["requests"] | resources["limits"]
    for name, service in exported["gpu"]["compose"]["services"].items():
        devices = service["deploy"]["resources"]["reservations"].get("devices", [])
        expected = [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}] if name.startswith("encoder") else []
        assert devices == expected, name
    cpu_encoder = _pod(_all(exported["cpu"]["kubernetes"], "Deployment")["encoder"])["containers"][0]
    assert cpu_encoder["image"] == "clip-image-encoder:latest"
    assert "nvidia.com/gpu" not in cpu_encoder["resources"]["limits"]


def test_the_indexer_image_makes_the_indexer_config_the_one_jina_starts(exported):
    (container,) = _pod(_all(exported["cpu"]["kubernetes"], "Deployment")["indexer"])["containers"]
    assert container["image"] == "clip-image-encoder-indexer:latest"
    assert _args_value(container["args"], "--uses") == "config.yml"
    assert ("ARG", "ENCODER_IMAGE=clip-image-encoder:latest") in _dockerfile(INDEXER_DOCKERFILE)
    assert ("ARG", "CONFIG=indexer.yml") in _dockerfile(INDEXER_DOCKERFILE)  # a plain build is the indexer
    image = _image("indexer.yml")
    assert image[0] == ("FROM", "${ENCODER_IMAGE}")
    workdir = [value for instruction, value in image if instruction == "WORKDIR"]
    assert workdir == ["/app"]  # where Jina's `--uses config.yml` is read, as in the encoder image
    assert ("COPY", "${CONFIG} config.yml") in image
    assert yaml.safe_load((REPO / "indexer.yml").read_text())["jtype"] == "ImageIndexer"
    command = _entrypoint_and_cmd(image)
    assert command[:4] == ["jina", "executor", "--uses", "config.yml"]
    assert _uses_with(command)["db"] == "/index"
    assert _args_value(command, "--port") == "51000"


def test_the_merger_image_starts_the_shard_merger_with_no_index_folder_or_volume():
    image = _image("shard_merger.yml")
    assert image[0] == ("FROM", "${ENCODER_IMAGE}")
    assert ("WORKDIR", "/app") in image
    assert ("COPY", "${CONFIG} config.yml") in image
    config = yaml.safe_load((REPO / "shard_merger.yml").read_text())
    assert config["jtype"] == "ShardMerger" and config["metas"]["py_modules"] == ["executor.py"]
    spec = importlib.util.spec_from_file_location("executor", REPO / "executor.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.ShardMerger is ShardMerger  # what the image's executor.py gives `jtype: ShardMerger`
    assert not [instruction for instruction, value in image if instruction == "VOLUME" or "/index" in value]
    command = _entrypoint_and_cmd(image)
    assert command[:4] == ["jina", "executor", "--uses", "config.yml"]
    assert _args_value(command, "--port") == "51000"


def test_the_indexer_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    assert hadolint, "hadolint is missing: pip install -r requirements-test.txt"
    linted = subprocess.run([hadolint, str(INDEXER_DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_compose_mounts_nothing_over_the_images_app_folder(exported):
    for variant in VARIANTS:
        for name, service in exported[variant]["compose"]["services"].items():
            assert not any(volume.endswith(":/app") for volume in service.get("volumes", [])), (variant, name)
    assert "version" not in exported["cpu"]["compose"]  # obsolete: docker compose warns about it


def test_gateway_runs_in_the_encoder_cpu_image_without_asking_jinas_hub(exported):
    for variant in VARIANTS:
        gateway = _all(exported[variant]["kubernetes"], "Deployment")["gateway"]
        assert _pod(gateway)["containers"][0]["image"] == "clip-image-encoder:latest"
        assert exported[variant]["compose"]["services"]["gateway"]["image"] == "clip-image-encoder:latest"


# --- an indexer on a Milvus server ---------------------------------------------------------------------------


def _indexer_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: service for name, service in compose["services"].items() if name.startswith("indexer")}


def test_a_milvus_indexer_has_no_claim_and_rolls_its_replicas_on_kubernetes(exported):
    documents = exported["milvus"]["kubernetes"]
    deployments = _all(documents, "Deployment")
    indexer = deployments["indexer"]
    (container,) = _pod(indexer)["containers"]
    assert set(deployments) == {"gateway", "encoder", "indexer"}  # no shards, no head, no merger
    assert indexer["spec"]["replicas"] == 3
    assert indexer["spec"]["strategy"]["type"] == "RollingUpdate"  # stateless: no Recreate
    assert "volumes" not in _pod(indexer) and "volumeMounts" not in container
    assert set(_all(documents, "PersistentVolumeClaim")) == {"encoder-cache"}
    assert _uses_with(container["args"])["db"] == MILVUS_URI
    assert "--shards" not in container["args"]


def test_a_milvus_indexer_gets_its_token_from_an_optional_secret_on_kubernetes(exported):
    documents = exported["milvus"]["kubernetes"]
    (container,) = _pod(_all(documents, "Deployment")["indexer"])["containers"]
    (token,) = [variable for variable in container["env"] if variable["name"] == "MILVUS_TOKEN"]
    assert token == {
        "name": "MILVUS_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": MILVUS_SECRET, "key": MILVUS_SECRET_KEY, "optional": True}},
    }
    assert not _all(documents, "Secret")  # the operator creates it: no token is written
    for deployment in _all(documents, "Deployment").values():
        if deployment["metadata"]["name"] != "indexer":
            assert all("MILVUS_TOKEN" not in str(c.get("env")) for c in _pod(deployment)["containers"])


def test_no_exported_file_holds_the_token(exported):
    """``MILVUS_TOKEN`` was set during every export: only its name is written, never its value."""
    for variant in VARIANTS:
        assert TOKEN not in json.dumps(exported[variant]["kubernetes"])
        assert TOKEN not in exported[variant]["compose_file"].read_text()


def test_compose_with_milvus_runs_replicated_indexers_without_volumes_that_wait_for_the_server(exported):
    compose = exported["milvus"]["compose"]
    indexers = _indexer_services(compose)
    assert set(indexers) == {f"indexer-rep-{replica}" for replica in range(DEFAULT_INDEXER_REPLICAS)}
    for service in indexers.values():
        assert "volumes" not in service
        assert _uses_with(service["command"])["db"] == MILVUS_DB
        assert "MILVUS_TOKEN=${MILVUS_TOKEN:-}" in service["environment"]  # docker compose fills it in, or ""
        assert service["depends_on"] == {MILVUS: {"condition": "service_healthy"}}
    gateway = compose["services"]["gateway"]["command"]
    assert set(json.loads(_args_value(gateway, "--deployments-addresses"))["indexer"]) == {
        f"{name}:{_args_value(service['command'], '--port')}" for name, service in indexers.items()
    }
    assert set(compose["volumes"]) == {"encoder-cache", MILVUS}


def test_compose_with_milvus_runs_a_standalone_server_on_its_own_volume_with_a_healthcheck(exported):
    compose = exported["milvus"]["compose"]
    milvus = compose["services"][MILVUS]
    assert milvus["image"] == MILVUS_IMAGE == "milvusdb/milvus:v2.3.5"
    assert milvus["command"] == ["milvus", "run", "standalone"]
    assert {"ETCD_USE_EMBED=true", "ETCD_DATA_DIR=/var/lib/milvus/etcd", "COMMON_STORAGETYPE=local"} <= set(
        milvus["environment"]
    )
    assert milvus["volumes"] == [f"{MILVUS}:/var/lib/milvus"]  # etcd, the log and the segments: all of its state
    assert milvus["ports"] == ["127.0.0.1:19530:19530"]  # for `index --db http://localhost:19530` on the host only
    assert milvus["healthcheck"]["test"] == ["CMD", "curl", "-f", "http://localhost:9091/healthz"]
    assert milvus["networks"] == compose["services"]["indexer-rep-0"]["networks"]  # "milvus" resolves there
    assert MILVUS_DB == "http://milvus:19530"


def test_compose_on_an_outside_milvus_server_has_no_server_and_waits_for_none(tmp_path, monkeypatch):
    monkeypatch.setenv("MILVUS_TOKEN", TOKEN)
    out = tmp_path / "compose"
    uri = "http://milvus.example:19530"
    assert main(["deploy", "docker-compose", "--out", str(out), "--flow", str(FLOW), "--db", uri]) == 0
    _check_compose_specification(out / "docker-compose.yml")
    assert TOKEN not in (out / "docker-compose.yml").read_text()
    compose = yaml.safe_load((out / "docker-compose.yml").read_text())
    assert MILVUS not in compose["services"] and set(compose["volumes"]) == {"encoder-cache"}
    indexers = _indexer_services(compose)
    assert len(indexers) == DEFAULT_INDEXER_REPLICAS
    for service in indexers.values():
        assert _uses_with(service["command"])["db"] == uri
        assert "depends_on" not in service and "volumes" not in service
        assert "MILVUS_TOKEN=${MILVUS_TOKEN:-}" in service["environment"]


def test_a_milvus_db_replicates_the_indexer_by_default_and_never_shards_it():
    source = yaml.safe_load(FLOW.read_text())
    indexer = _executor(flow_document(source, db="http://milvus:19530"), "indexer")
    assert indexer["replicas"] == DEFAULT_INDEXER_REPLICAS
    assert indexer["uses_with"] == {**_executor(source, "indexer")["uses_with"], "db": "http://milvus:19530"}
    assert "shards" not in indexer and "polling" not in indexer and "uses_after" not in indexer
    assert _executor(flow_document(source, db="http://milvus:19530", indexer_replicas=1), "indexer")["replicas"] == 1
    assert "replicas" not in _executor(flow_document(source), "indexer")  # without --db, as before


def test_completing_a_milvus_indexer_with_two_replicas_is_accepted(exported):
    documents = exported["milvus"]["kubernetes"]["indexer/indexer.yml"]
    doubled = [
        {**doc, "spec": {**doc["spec"], "replicas": 2}} if doc["kind"] == "Deployment" else doc for doc in documents
    ]
    (deployment,) = [doc for doc in complete_kubernetes(doubled) if doc["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == 2


# --- refusals -------------------------------------------------------------------------------------------------


def test_an_indexer_with_two_replicas_is_refused(exported):
    documents = exported["cpu"]["kubernetes"]["indexer/indexer.yml"]
    doubled = [
        {**doc, "spec": {**doc["spec"], "replicas": 2}} if doc["kind"] == "Deployment" else doc for doc in documents
    ]
    with pytest.raises(DeploymentError, match="1 replica per shard"):
        complete_kubernetes(doubled)
    compose = exported["cpu"]["compose"]
    indexer = compose["services"]["indexer"]
    doubled_compose = {
        **compose,
        "services": {"indexer": {**indexer, "command": [*indexer["command"], "--replicas", "2"]}},
    }
    with pytest.raises(DeploymentError, match="1 replica per shard"):
        complete_compose(doubled_compose)


def test_deploy_refuses_a_folder_that_is_not_empty(tmp_path, capsys):
    (tmp_path / "stale.yml").write_text("kind: Deployment\n")
    assert main(["deploy", "kubernetes", "--out", str(tmp_path), "--flow", str(FLOW)]) == 2
    assert "is not empty" in capsys.readouterr().err


def _deploy_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str, *flags: str) -> str:
    """The message of ``deploy`` refused (exit status 2) before it wrote anything."""
    out = tmp_path / "out"
    assert main(["deploy", target, "--out", str(out), "--flow", str(FLOW), *flags]) == 2
    assert not out.exists() or not any(out.iterdir())
    return capsys.readouterr().err


@pytest.mark.parametrize("target", ["kubernetes", "docker-compose"])
def test_deploy_refuses_to_shard_an_indexer_on_a_milvus_server(tmp_path, capsys, target):
    assert "shards itself" in _deploy_refused(tmp_path, capsys, target, "--db", "http://milvus:19530", "--shards", "2")


@pytest.mark.parametrize("target", ["kubernetes", "docker-compose"])
def test_deploy_refuses_indexer_replicas_on_the_embedded_store(tmp_path, capsys, target):
    err = _deploy_refused(tmp_path, capsys, target, "--indexer-replicas", "2")
    assert "one process owns" in err and "--db http://" in err
    assert "one process owns" in _deploy_refused(tmp_path, capsys, target, "--db", "/data", "--indexer-replicas", "2")


@pytest.mark.parametrize(
    ("target", "flags", "message"),
    [
        ("kubernetes", ["--with-milvus"], "on Kubernetes, install Milvus"),
        ("docker-compose", ["--with-milvus", "--db", "http://milvus.example:19530"], "--with-milvus serves"),
        ("docker-compose", ["--with-milvus", "--db", "/index"], "--with-milvus serves"),
        ("kubernetes", ["--db", "index"], "absolute folder"),
        ("kubernetes", ["--db", "http://milvus:19530/2photos"], "collection"),
        ("kubernetes", ["--db", "http://milvus:19530", "--indexer-replicas", "0"], "at least 1"),
    ],
)
def test_deploy_refuses_a_store_it_cannot_deploy(tmp_path, capsys, target, flags, message):
    assert message in _deploy_refused(tmp_path, capsys, target, *flags)


def test_completing_a_sharded_indexer_on_a_milvus_server_is_refused(exported):
    compose = copy.deepcopy(exported["sharded"]["compose"])
    command = compose["services"]["indexer-0"]["command"]
    at = command.index("--uses-with") + 1
    command[at] = json.dumps({**json.loads(command[at]), "db": "http://milvus:19530"})
    with pytest.raises(OptionError, match="shards itself"):
        complete_compose(compose)
