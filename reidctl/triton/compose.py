"""The docker-compose.yml that `reidctl setup-triton` writes beside the model repository, and its .env key.

NVIDIA's container (an NGC Triton image) serves the TensorRT model from the repository, one server or one replica
per GPU; the table of the TensorRT inside NGC images says when an image cannot load the engine.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import yaml

from reidctl.io.atomic import write_secret
from reidctl.triton.access import KEY_HEADER, is_loopback, read_key, restricted_api_options

# Triton 2.51 is the release that nvidia-pytriton 0.7.0 bundles: the container serves the same server version.
DEFAULT_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
NGC_TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:"
# The TensorRT inside NGC Triton images, by tag, as NVIDIA's release compatibility matrix lists it
# (triton-inference-server/server, docs/introduction/compatibility.md). That table covers the trtllm-python-py3
# images only; the plain py3 images' TensorRT is not listed there, so no claim is made about them.
NGC_IMAGE_TENSORRT = {
    "26.07-trtllm-python-py3": "10.14.1.48", "26.06-trtllm-python-py3": "10.14.1.48",
    "26.05-trtllm-python-py3": "10.14.1.48", "26.04-trtllm-python-py3": "10.14.1.48",
    "26.03-trtllm-python-py3": "10.14.1.48", "26.02-trtllm-python-py3": "10.13.3.9",
    "26.01-trtllm-python-py3": "10.13.3.9", "25.12-trtllm-python-py3": "10.13.3.9",
    "25.11-trtllm-python-py3": "10.13.3.9", "25.10-trtllm-python-py3": "10.11.0.33",
    "25.09-trtllm-python-py3": "10.11.0.33", "25.08-trtllm-python-py3": "10.11.0.33",
    "25.07-trtllm-python-py3": "10.10.0.31", "25.06-trtllm-python-py3": "10.10.0.31",
    "25.05-trtllm-python-py3": "10.9.0.34", "25.04-trtllm-python-py3": "10.9.0.34",
    "25.03-trtllm-python-py3": "10.9.0.34", "25.02-trtllm-python-py3": "10.8.0.43",
    "25.01-trtllm-python-py3": "10.8.0.43", "24.12-trtllm-python-py3": "10.7.0",
    "24.11-trtllm-python-py3": "10.6.0", "24.10-trtllm-python-py3": "10.4.0",
    "24.09-trtllm-python-py3": "10.4.0", "24.08-trtllm-python-py3": "10.3.0",
    "24.07-trtllm-python-py3": "10.1.0", "24.06-trtllm-python-py3": "10.0.1",
    "24.05-trtllm-python-py3": "10.0.1.6",
}  # fmt: skip
CONTAINER_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
# Replica i of docker-compose.yml publishes the configured ports plus i * REPLICA_PORT_STEP (gRPC 8101, 8111, 8121...).
REPLICA_PORT_STEP = 10


def same_tensorrt_release(a: str, b: str) -> bool:
    """Whether two TensorRT versions are one release (a table's "10.4.0" matches an engine's "10.4.0.26")."""
    a_parts, b_parts = a.split("."), b.split(".")
    common = min(len(a_parts), len(b_parts), 3)
    return a_parts[:common] == b_parts[:common]


def image_tensorrt_warning(engine_version: str, image: str) -> str | None:
    """A warning when the NGC image's TensorRT is known and differs from the engine's (the image cannot load it)."""
    tag = image.removeprefix(NGC_TRITON_IMAGE) if image.startswith(NGC_TRITON_IMAGE) else None
    image_version = NGC_IMAGE_TENSORRT.get(tag) if tag else None
    if image_version is None or same_tensorrt_release(engine_version, image_version):
        return None
    return (
        f"warning: the engine was built with TensorRT {engine_version}, but {image} has TensorRT {image_version}: "
        "its Triton cannot load the engine; build it inside that image or pick the image with its TensorRT "
        "(--image)"
    )


def replica_ports(triton, replica: int) -> dict[str, int]:
    """The host ports replica ``replica`` of docker-compose.yml publishes (replica 0: the configured ones)."""
    shift = replica * REPLICA_PORT_STEP
    return {"http": triton.http_port + shift, "grpc": triton.grpc_port + shift, "metrics": triton.metrics_port + shift}


KEY_VARIABLE = "REIDCTL_TRITON_KEY"  # docker compose reads it from the .env file beside docker-compose.yml
COMPOSE_KEY_FILE = ".env"


def _published(address: str, host_port: int, container_port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"{host}:{host_port}:{container_port}"


def _compose_service(triton, repository: Path, image: str, model: str, ports: dict[str, int], gpu: dict) -> dict:
    service = {
        "image": image,
        "command": [
            "tritonserver",
            "--model-repository=/models",
            "--model-control-mode=explicit",
            f"--load-model={model}",  # the python model needs reidctl, which the container lacks
            # Loading models (with code in them) and mapping shared memory need the key in .env.
            *restricted_api_options(f"${{{KEY_VARIABLE}:?run reidctl setup-triton to write .env}}"),
        ],
        "ports": [_published(triton.listen, ports[name], CONTAINER_PORTS[name])
                  for name in ("http", "grpc", "metrics")],
        "volumes": [f"{repository.resolve()}:/models:ro"],
    }
    if triton.input_memory != "none":
        # Clients on this host pass frames through shared memory (detection.triton.shared_memory): the container
        # must share this host's IPC namespace, for /dev/shm and for CUDA's handles alike.
        service["ipc"] = "host"
    return service | {
        "deploy": {"resources": {"reservations": {"devices": [{"driver": "nvidia", **gpu, "capabilities": ["gpu"]}]}}},
        "healthcheck": {
            "test": ["CMD", "curl", "-sf", f"localhost:{CONTAINER_PORTS['http']}/v2/health/ready"],
            "interval": "10s",
            "retries": 30,
        },
        "restart": "unless-stopped",
    }


def write_compose_key(repository: Path) -> Path:
    """The containers' key in .env (mode 0600), written once: a rewritten repository keeps the key clients hold."""
    path = Path(repository) / COMPOSE_KEY_FILE
    if read_key(path) is None:
        write_secret(path, f"{KEY_VARIABLE}={secrets.token_urlsafe(32)}\n")
    return path


def compose_file(triton, repository: Path, image: str, model: str, replicas: int = 1) -> str:
    """docker-compose.yml for NVIDIA's container serving the TensorRT model ``model`` from this repository.

    One replica: service ``triton`` on one GPU, or on every GPU when ``triton.gpus`` names them (the container then
    numbers them as the host does, so the instance groups hold). Several: services ``triton-0``, ``triton-1``...,
    replica i on GPU i alone and on the configured ports + i * REPLICA_PORT_STEP; clients shard cameras among them.
    ``write_repository`` checks ``replicas`` first (``check_replicas``).
    """
    if replicas == 1:
        gpu = {"count": 1} if triton.gpus is None else {"count": "all"}
        services = {"triton": _compose_service(triton, repository, image, model, replica_ports(triton, 0), gpu)}
        start = "docker compose up -d triton"
    else:
        services = {
            f"triton-{i}": _compose_service(triton, repository, image, model, replica_ports(triton, i),
                                            {"device_ids": [str(i)]})
            for i in range(replicas)
        }
        start = "docker compose up -d"
    host = "localhost" if is_loopback(triton.listen) else triton.listen
    endpoints = ", ".join(f"{name} {host}:{replica_ports(triton, i)['grpc']}" for i, name in enumerate(services))
    reach = ("this host only" if is_loopback(triton.listen)
             else f"every host that reaches {triton.listen} (detection.triton.listen): put TLS or a proxy in front")
    header = (
        f"# Written by `reidctl setup-triton`. Start: {start}\n"
        f"# gRPC: {endpoints}; reachable from {reach}\n"
        f"# The model repository, shared memory, logging and trace APIs need the key in {COMPOSE_KEY_FILE} "
        f"(header {KEY_HEADER}; clients elsewhere: detection.triton.key_file)\n"
        f"# Verify: curl localhost:{triton.http_port}/v2/health/ready\n"
    )
    return header + yaml.safe_dump({"services": services}, sort_keys=False)
