"""Kubernetes and docker-compose files for the search Flow: Jina's exporter, then what it leaves out.

Jina's exporter turns ``deploy/flow.yml`` into a ConfigMap, Service and Deployment per Executor (a
compose service per replica) and starts each image as ``jina executor --uses config.yml`` with the
flow's ``uses_with``. `complete_kubernetes` and `complete_compose` add, over its documents and only
there, what a cluster needs to run this service:

- requests and limits (`RESOURCES`), and ``nvidia.com/gpu`` requested as well as limited;
- volumes: the Hugging Face cache at ``/cache`` (the images' ``HF_HOME``), one claim for all the encoder's
  replicas, and the index at the indexer's ``db``, one ReadWriteOnce claim per shard; the indexer runs
  one replica and is replaced, not rolled, since a second process would write the same index;
- or, where the indexer's ``db`` is a Milvus server (``http://HOST:19530[/COLLECTION]``), no index volume: the
  indexer holds no state, so it runs `DEFAULT_INDEXER_REPLICAS` rolled replicas (never shards: Milvus shards
  itself), each given ``MILVUS_TOKEN`` from the Secret `MILVUS_SECRET` (Kubernetes) or the environment of
  ``docker compose`` (``${MILVUS_TOKEN:-}``), never the token itself; compose can run the server too
  (`milvus_service`, ``milvus=True``);
- health checks: a readiness probe, and the kubelet's gRPC health probes (what ``jina ping`` asks)
  instead of Jina's ``jina ping`` exec probes, each of which starts a Python that imports Jina (4.5 s
  and 2.7 cpu-seconds here) every 5 s; compose keeps ``jina ping``, every 30 s instead of every 2 s.
  ``clip-image-encoder health`` cannot serve there: it asks for a gateway's dry run, which a bare
  Executor does not answer ("Method not found");
- a grace period longer than the Executors' drain (``stop_timeout_s``) after Jina's 2 s preStop sleep.

A sharded indexer (``shards``) gets, in the flow before the export, what makes its answers correct:
polling ``ALL`` and `ShardMerger` as its ``uses_after``, in an image of its own (`merger_image`). The
exporter runs the merger as a second container in the shard head's pod (Kubernetes, at 127.0.0.1) or as
the compose service ``indexer-uses-after``; it is completed like the others, with no index.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from clip_image_encoder.config.options import OPTIONS
from clip_image_encoder.errors import DeploymentError
from clip_image_encoder.search.stores import is_server_uri
from clip_image_encoder.search.stores.milvus import TOKEN_VARIABLE, split_uri
from clip_image_encoder.service import flow as search_flow

TARGETS = ("kubernetes", "docker-compose")
DEFAULT_FLOW = Path("deploy/flow.yml")
ENCODER, INDEXER = search_flow.ENCODER.name, search_flow.INDEXER.name
ROUTER, MERGER = "router", "merger"
"""The roles of the deployed containers: the search Flow's deployed Executors (`service.flow.SEARCH_FLOW`), a
router (Jina's gateway or a shard head) and the merger, a sharded indexer's ``uses_after``."""
USES_AFTER = "uses-after"
"""How Jina's exporter names a ``uses_after``: ``--name indexer/uses-after``, a container ``uses-after``."""
MERGER_IMAGE_NAME = "clip-image-encoder-merger"
"""deploy/Dockerfile.indexer built with ``--build-arg CONFIG=shard_merger.yml``."""

CACHE_DIR = "/cache"
"""``HF_HOME`` of the encoder images (Dockerfile, Dockerfile.gpu)."""
IMAGE_UID = 10001
"""The images' user: a claim mounted with this ``fsGroup`` is writable by it."""
GPU_TAG = "gpu"
CACHE_SIZE, INDEX_SIZE = "20Gi", "10Gi"
"""Claims: a few CLIP checkpoints (ViT-L/14 is 1.7 GB); an index of 1M 512-d float32 vectors is 2 GB."""

JINA_PRESTOP_S = 2
"""Jina's preStop hook sleeps this long before the container gets SIGTERM, within the grace period."""
STOP_MARGIN_S = 3
"""What closing the server takes after the drain."""
DEFAULT_STOP_TIMEOUT_S: int = OPTIONS["stop_timeout_s"].default
COMPOSE_HEALTHCHECK = {"interval": "30s", "timeout": "10s", "retries": 3, "start_period": "180s"}
"""As the images' HEALTHCHECK: the start period covers a first model download."""
READINESS = {"periodSeconds": 5, "timeoutSeconds": 5, "failureThreshold": 2}

DEFAULT_INDEXER_REPLICAS = 2
"""Indexers in front of a Milvus server unless told: one can be rolled or lost while the other answers."""
MILVUS_SECRET, MILVUS_SECRET_KEY = "milvus-token", "token"
"""The Kubernetes Secret that holds the Milvus token (optional: a server without authentication needs none)."""
MILVUS = "milvus"
"""The compose service of ``milvus=True``, and its named volume."""
MILVUS_DB = f"http://{MILVUS}:19530"
"""The indexer's ``db`` with the compose service: its default collection."""
MILVUS_IMAGE = "milvusdb/milvus:v2.3.5"
MILVUS_DATA = "/var/lib/milvus"
"""Everything the standalone server keeps: its embedded etcd, its write-ahead log, its segments."""
MILVUS_HEALTHCHECK = {
    "test": ["CMD", "curl", "-f", "http://localhost:9091/healthz"],
    "interval": "30s",
    "timeout": "20s",
    "retries": 3,
    "start_period": "90s",
}
"""Milvus's own standalone health check (port 9091); the indexers start once it passes."""
MILVUS_PORTS = ["127.0.0.1:19530:19530"]
"""Published on the host's loopback only, for ``clip-image-encoder index --db http://localhost:19530`` there: the
standalone server has no authentication unless configured, so it is not offered to the whole network."""


@dataclass(frozen=True)
class Resources:
    """What one container reserves and may not exceed.

    No cpu limit: a CFS quota throttles torch's thread pool in bursts; the request places the pod.
    """

    cpu_cores: float
    memory_mib: int
    memory_limit_mib: int


RESOURCES = {
    # ViT-B/32 on cpu peaks at 1.0-1.1 GB at batch 32, 1.3-1.5 GB on 12 MP photos (benchmarks/MEMORY.md,
    # RESULTS_LARGE.md); the limit leaves room for CUDA's host memory in the GPU image (not measured here).
    ENCODER: Resources(cpu_cores=2, memory_mib=2048, memory_limit_mib=4096),
    # FAISS keeps the index in memory: 2 GB per million 512-d vectors.
    INDEXER: Resources(cpu_cores=0.5, memory_mib=1024, memory_limit_mib=4096),
    ROUTER: Resources(cpu_cores=0.25, memory_mib=256, memory_limit_mib=1024),
    # Merges k matches per query and shard; the package's imports (torch, FAISS) take 430 MB here.
    MERGER: Resources(cpu_cores=0.25, memory_mib=512, memory_limit_mib=1024),
}
MILVUS_RESOURCES = Resources(cpu_cores=1, memory_mib=2048, memory_limit_mib=8192)
"""Milvus standalone: 8 GB is its documented recommendation; it loads the collection's vectors in memory."""


def grace_period_s(stop_timeout_s: int) -> int:
    """Seconds from the stop to SIGKILL: Jina's preStop sleep, the drain, and the server's close."""
    return JINA_PRESTOP_S + stop_timeout_s + STOP_MARGIN_S


def flow_document(
    flow: dict[str, Any],
    *,
    replicas: int | None = None,
    gpu: bool = False,
    shards: int | None = None,
    db: str | None = None,
    indexer_replicas: int | None = None,
) -> dict[str, Any]:
    """``deploy/flow.yml`` with the encoder's replicas and, for ``gpu``, its GPU image and one GPU each.

    ``shards`` (default: the flow's) splits the indexer; more than one also gets the polling and the merger
    without which every sharded request fails (`service.indexer`, `_shard`). ``db`` (default: the flow's)
    is the indexer's store; on a Milvus server it runs ``indexer_replicas`` (`_place_indexer`).
    """
    flow = copy.deepcopy(flow)
    executors = {executor["name"]: executor for executor in flow.get("executors", [])}
    if ENCODER not in executors or INDEXER not in executors:
        raise DeploymentError(f"the flow must have Executors named {ENCODER!r} and {INDEXER!r}, has {list(executors)}")
    encoder = executors[ENCODER]
    if replicas is not None:
        if replicas < 1:
            raise DeploymentError(f"the encoder's replicas must be at least 1, got {replicas}")
        encoder["replicas"] = replicas
    if gpu:
        encoder["uses"] = with_tag(encoder["uses"], GPU_TAG)
        encoder["gpus"] = 1
    _place_indexer(executors[INDEXER], db, indexer_replicas)
    _shard(executors[INDEXER], shards)
    indexer = executors[INDEXER]
    store = str(indexer.get("uses_with", {}).get("db", ""))
    search_flow.check_indexer_scale(store, indexer.get("shards", 1), indexer.get("replicas", 1))
    return flow


def _place_indexer(indexer: dict[str, Any], db: str | None, replicas: int | None) -> None:
    """Sets the indexer's ``db`` and ``replicas``: `DEFAULT_INDEXER_REPLICAS` on a Milvus server, unless told.

    A folder must be absolute in the container: the image's user cannot write its working folder.
    """
    if db is not None:
        if is_server_uri(db):
            split_uri(db)  # refuses a collection name that Milvus would refuse, now rather than at the first request
        elif not db.startswith("/"):
            raise DeploymentError(f"--db {db}: give an absolute folder in the container (/index) or http://HOST:19530")
        indexer["uses_with"] = {**indexer.get("uses_with", {}), "db": db}
    if replicas is None and is_server_uri(str(indexer.get("uses_with", {}).get("db", ""))):
        replicas = indexer.get("replicas", DEFAULT_INDEXER_REPLICAS)
    if replicas is not None:
        if replicas < 1:
            raise DeploymentError(f"the indexer's replicas must be at least 1, got {replicas}")
        indexer["replicas"] = replicas


def _shard(indexer: dict[str, Any], shards: int | None) -> None:
    """Sets the indexer's ``shards``; sharded, it polls every shard and merges their answers in `ShardMerger`.

    A ``uses_after`` that the flow gives (another registry, say) is kept; by default the merger image.
    """
    if shards is not None:
        if shards < 1:
            raise DeploymentError(f"the indexer's shards must be at least 1, got {shards}")
        indexer["shards"] = shards
    if indexer.get("shards", 1) > 1:
        indexer["polling"] = dict(search_flow.INDEXER.sharded_polling)
        indexer.setdefault("uses_after", merger_image(indexer["uses"]))


def merger_image(indexer_image: str) -> str:
    """The merger image beside the indexer's: the same ``docker://``, registry and tag, its own name."""
    head, slash, last = indexer_image.rpartition("/")
    _, colon, tag = last.partition(":")
    return f"{head}{slash}{MERGER_IMAGE_NAME}{colon}{tag}"


def with_tag(image: str, tag: str) -> str:
    """``image`` (optionally ``docker://``, a registry with a port) with its tag replaced by ``tag``."""
    head, slash, last = image.rpartition("/")
    return f"{head}{slash}{last.split(':')[0]}:{tag}"


def complete_kubernetes(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One file of Jina's Kubernetes export, completed; each Deployment's claims come just before it."""
    completed = []
    for document in documents:
        if document.get("kind") == "Deployment":
            deployment, claims = _complete_deployment(copy.deepcopy(document))
            completed += [*claims, deployment]
        else:
            completed.append(document)
    return completed


def _complete_deployment(deployment: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    name, pod = deployment["metadata"]["name"], deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    role = labels["jina_deployment_name"] if labels["pod_type"] == "WORKER" else ROUTER
    stop_timeout_s = DEFAULT_STOP_TIMEOUT_S
    for container in pod["spec"]["containers"]:
        args = container.get("args", [])
        stop_timeout_s = max(stop_timeout_s, _uses_with(args).get("stop_timeout_s", DEFAULT_STOP_TIMEOUT_S))
        _set_probes(container, container["ports"][0]["containerPort"], _protocol(args))
        resources = RESOURCES[_container_role(role, args)]
        container["resources"] = _kubernetes_resources(resources, container.get("resources") or {})
    pod["spec"]["terminationGracePeriodSeconds"] = grace_period_s(stop_timeout_s)
    if role == ENCODER:
        shared = "ReadWriteMany" if deployment["spec"].get("replicas", 1) > 1 else "ReadWriteOnce"
        return deployment, [_mount_claim(deployment, f"{name}-cache", CACHE_DIR, shared, CACHE_SIZE)]
    if role == INDEXER:
        executor = pod["spec"]["containers"][0]
        if _on_milvus(name, executor["args"], deployment["spec"].get("replicas", 1)):
            executor.setdefault("env", []).append(
                {
                    "name": TOKEN_VARIABLE,
                    "valueFrom": {"secretKeyRef": {"name": MILVUS_SECRET, "key": MILVUS_SECRET_KEY, "optional": True}},
                }
            )
            return deployment, []  # the exporter's rolling update: nothing is shared but the server
        deployment["spec"]["strategy"] = {"type": "Recreate"}  # a surge pod would wait on, or share, the claim
        db = _index_path(executor["args"], name)
        return deployment, [_mount_claim(deployment, f"{name}-index", db, "ReadWriteOnce", INDEX_SIZE)]
    return deployment, []


def _on_milvus(name: str, args: list[str], replicas: int) -> bool:
    """Whether the indexer ``name`` keeps its embeddings in a Milvus server; refuses a scale its store cannot take:
    replicas of one embedded store, which would write the same files, or shards of a server, which shards itself."""
    db = str(_uses_with(args).get("db", ""))
    if not is_server_uri(db) and replicas != 1:
        raise DeploymentError(f"{name}: the indexer must run 1 replica per shard (it writes its index alone)")
    search_flow.check_indexer_scale(db, int(_flag_value(args, "--shards") or 1), replicas)
    return is_server_uri(db)


def _container_role(pod_role: str, args: list[str]) -> str:
    """A container's role: its pod's, but for the merger beside a shard head, in the head's pod."""
    role = MERGER if (_flag_value(args, "--name") or "").endswith(f"/{USES_AFTER}") else pod_role
    if role not in RESOURCES:
        raise DeploymentError(f"the flow's Executor {role!r} is none of {ENCODER!r}, {INDEXER!r}: add its resources")
    return role


def _set_probes(container: dict[str, Any], port: int, protocol: str) -> None:
    """Jina's probe timings, checked by the kubelet itself; gRPC health where the port speaks gRPC."""
    check = {"grpc": {"port": port}} if protocol == "grpc" else {"tcpSocket": {"port": port}}
    for kind in ("startupProbe", "livenessProbe"):
        timings = {key: value for key, value in container.get(kind, {}).items() if key != "exec"}
        container[kind] = {**copy.deepcopy(check), **timings}
    container["readinessProbe"] = {**copy.deepcopy(check), **READINESS}


def _kubernetes_resources(resources: Resources, exported: dict[str, Any]) -> dict[str, Any]:
    """Requests and limits; the exporter's ``nvidia.com/gpu`` limit is kept and requested as well."""
    devices = dict(exported.get("limits", {}))
    return {
        "requests": {"cpu": f"{round(resources.cpu_cores * 1000)}m", "memory": f"{resources.memory_mib}Mi", **devices},
        "limits": {"memory": f"{resources.memory_limit_mib}Mi", **devices},
    }


def _mount_claim(deployment: dict[str, Any], claim: str, path: str, access_mode: str, size: str) -> dict[str, Any]:
    """Mounts a new claim at ``path`` in the Deployment's Executor; the PersistentVolumeClaim to apply with it."""
    pod = deployment["spec"]["template"]["spec"]
    pod.setdefault("volumes", []).append({"name": claim, "persistentVolumeClaim": {"claimName": claim}})
    pod["containers"][0].setdefault("volumeMounts", []).append({"name": claim, "mountPath": path})
    pod["securityContext"] = {**pod.get("securityContext", {}), "fsGroup": IMAGE_UID}
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": claim, "namespace": deployment["metadata"]["namespace"]},
        "spec": {"accessModes": [access_mode], "resources": {"requests": {"storage": size}}},
    }


def complete_compose(compose: dict[str, Any], *, milvus: bool = False) -> dict[str, Any]:
    """Jina's docker-compose file, completed: named volumes, resources, grace periods, health-check timing.

    With ``milvus``, also a Milvus standalone server (`milvus_service`) that the indexers on a server wait for.
    """
    compose = copy.deepcopy(compose)
    compose.pop("version", None)  # obsolete in the Compose Specification: docker compose warns at every command
    volumes = compose.setdefault("volumes", {})
    for service_name, service in compose["services"].items():
        args = service["command"]
        role, name = _compose_role(args)
        stop_timeout_s = _uses_with(args).get("stop_timeout_s", DEFAULT_STOP_TIMEOUT_S)
        service["stop_grace_period"] = f"{grace_period_s(stop_timeout_s)}s"
        service["healthcheck"] = {**service.get("healthcheck", {}), **COMPOSE_HEALTHCHECK}
        service["deploy"] = _compose_deploy(RESOURCES[role], service.get("deploy", {}))
        service.pop("volumes", None)  # the exporter's default mounts the host's ~/.cache/jina over /app
        if role == INDEXER and _on_milvus(service_name, args, int(_flag_value(args, "--replicas") or 1)):
            _connect_to_milvus(service, milvus)
            continue
        if role == ENCODER:
            volume, path = f"{name}-cache", CACHE_DIR
        elif role == INDEXER:
            volume, path = f"{service_name}-index", _index_path(args, service_name)
        else:
            continue
        service["volumes"] = [f"{volume}:{path}"]
        volumes[volume] = {}
    if milvus:
        if MILVUS in compose["services"]:
            raise DeploymentError(f"the flow already has a service {MILVUS!r}: leave out --with-milvus")
        compose["services"][MILVUS] = milvus_service(list(compose.get("networks", {})))
        volumes[MILVUS] = {}
    return compose


def _connect_to_milvus(service: dict[str, Any], milvus: bool) -> None:
    """The token from the environment of ``docker compose`` (empty if unset), never written here; with
    ``milvus``, a start once the compose file's server is healthy."""
    token = f"${{{TOKEN_VARIABLE}:-}}"
    environment = service.setdefault("environment", [])
    if isinstance(environment, dict):
        environment[TOKEN_VARIABLE] = token
    else:
        environment.append(f"{TOKEN_VARIABLE}={token}")
    if milvus:
        service["depends_on"] = {MILVUS: {"condition": "service_healthy"}}


def milvus_service(networks: list[str]) -> dict[str, Any]:
    """Milvus standalone on the Executors' ``networks``: etcd embedded and local storage, so one named volume
    keeps all its state and no etcd or MinIO service is needed; 19530 published for indexing from the host."""
    service: dict[str, Any] = {
        "image": MILVUS_IMAGE,
        "command": ["milvus", "run", "standalone"],
        "security_opt": ["seccomp:unconfined"],  # as Milvus's own standalone scripts run it
        "environment": ["ETCD_USE_EMBED=true", f"ETCD_DATA_DIR={MILVUS_DATA}/etcd", "COMMON_STORAGETYPE=local"],
        "volumes": [f"{MILVUS}:{MILVUS_DATA}"],
        "ports": list(MILVUS_PORTS),
        "healthcheck": copy.deepcopy(MILVUS_HEALTHCHECK),
        "deploy": _compose_deploy(MILVUS_RESOURCES, {}),
    }
    if networks:
        service["networks"] = networks
    return service


def _compose_role(command: list[str]) -> tuple[str, str]:
    """The service's role and its replicas' common name (``encoder/rep-0`` -> ``encoder``, shard ``indexer-0``)."""
    if command[0] == "gateway" or _flag_value(command, "--pod-role") == "HEAD":
        return ROUTER, ""
    full_name = _flag_value(command, "--name") or ""
    if full_name.endswith(f"/{USES_AFTER}"):
        return MERGER, ""
    name = full_name.split("/")[0]
    role = re.sub(r"-\d+$", "", name) if "--shards" in command else name
    if role not in RESOURCES:
        raise DeploymentError(f"the flow's Executor {role!r} is none of {ENCODER!r}, {INDEXER!r}")
    return role, name


def _compose_deploy(resources: Resources, exported: dict[str, Any]) -> dict[str, Any]:
    """Memory reserved and limited; the exporter's GPU reservation is kept."""
    exported_resources = exported.get("resources", {})
    return {
        **exported,
        "resources": {
            **exported_resources,
            "limits": {"memory": f"{resources.memory_limit_mib}m"},
            "reservations": {**exported_resources.get("reservations", {}), "memory": f"{resources.memory_mib}m"},
        },
    }


def _flag_value(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args[:-1] else None


def _uses_with(args: list[str]) -> dict[str, Any]:
    """The ``uses_with`` that the exporter passes to an Executor (``--uses-with JSON``)."""
    return json.loads(_flag_value(args, "--uses-with") or "{}")


def _protocol(args: list[str]) -> str:
    return (_flag_value(args, "--protocol") or "grpc").lower()


def _index_path(args: list[str], name: str) -> str:
    """Where the indexer writes: its ``db``, absolute (the image's user cannot write its working folder)."""
    db = _uses_with(args).get("db", "")
    if not db.startswith("/"):
        raise DeploymentError(f"{name}: give the indexer an absolute 'db' in the flow's uses_with (got {db!r})")
    return db


def export_manifests(
    target: str,
    flow_file: Path,
    out: Path,
    *,
    replicas: int | None = None,
    gpu: bool = False,
    shards: int | None = None,
    namespace: str = "default",
    db: str | None = None,
    indexer_replicas: int | None = None,
    with_milvus: bool = False,
) -> list[Path]:
    """Runs Jina's exporter on ``flow_file`` into the new folder ``out``, completes what it wrote; the files.

    ``with_milvus`` (docker-compose) adds a Milvus server and makes it the default ``db`` (`MILVUS_DB`).
    """
    if target not in TARGETS:
        raise DeploymentError(f"target must be one of {TARGETS}, got {target!r}")
    db = _milvus_db(target, db) if with_milvus else db
    if not flow_file.is_file():
        raise DeploymentError(f"{flow_file} does not exist: run from the repository root or pass --flow")
    if out.exists() and any(out.iterdir()):
        raise DeploymentError(f"{out} is not empty: stale files would be deployed too; give a new folder")
    source = yaml.safe_load(flow_file.read_text())
    flow = flow_document(source, replicas=replicas, gpu=gpu, shards=shards, db=db, indexer_replicas=indexer_replicas)
    cpu_image = next(executor["uses"] for executor in source["executors"] if executor["name"] == ENCODER)
    with _offline_exporter(gateway_image=cpu_image.removeprefix("docker://")):
        from jina import Flow

        exporter = Flow.load_config({"jtype": "Flow", **flow})  # Jina reads a dict's jtype only as its first key
        if target == "kubernetes":
            exporter.to_kubernetes_yaml(str(out), k8s_namespace=namespace)
            files = sorted(out.glob("*/*.yml"))
            for path in files:
                _write_all(path, complete_kubernetes(list(yaml.safe_load_all(path.read_text()))))
            return files
        out.mkdir(parents=True, exist_ok=True)
        path = out / "docker-compose.yml"
        exporter.to_docker_compose_yaml(str(path))
        _write_all(path, [complete_compose(yaml.safe_load(path.read_text()), milvus=with_milvus)])
        return [path]


def _milvus_db(target: str, db: str | None) -> str:
    """The ``db`` beside the compose file's own Milvus: `MILVUS_DB`, or a collection of that server."""
    if target != "docker-compose":
        raise DeploymentError(
            "--with-milvus writes a Milvus service into a docker-compose file; on Kubernetes, install Milvus "
            "(its Helm chart or operator) and pass --db http://HOST:19530"
        )
    if db is None:
        return MILVUS_DB
    if not is_server_uri(db) or urllib.parse.urlsplit(db).netloc != f"{MILVUS}:19530":
        raise DeploymentError(f"--with-milvus serves {MILVUS_DB}: give --db {MILVUS_DB}[/COLLECTION], not {db}")
    return db


@contextlib.contextmanager
def _offline_exporter(gateway_image: str) -> Iterator[None]:
    """The exporter asks Jina's hub for a gateway image unless ``JINA_GATEWAY_IMAGE`` names one.

    By default the gateway runs in the encoder's cpu image: it holds the same Jina, and no other image is
    needed. A ``JINA_GATEWAY_IMAGE`` already set is kept.
    """
    names = ("JINA_GATEWAY_IMAGE", "JINA_OPTOUT_TELEMETRY")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.setdefault("JINA_GATEWAY_IMAGE", gateway_image)
    os.environ.setdefault("JINA_OPTOUT_TELEMETRY", "1")
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class _PlainDumper(yaml.SafeDumper):
    """Writes every value in full: no YAML anchors and aliases, which people and some tools read poorly."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _write_all(path: Path, documents: list[dict[str, Any]]) -> None:
    with path.open("w") as handle:
        yaml.dump_all(documents, handle, Dumper=_PlainDumper, sort_keys=False)
