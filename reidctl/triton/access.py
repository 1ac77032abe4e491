"""Who reaches a Triton server that reidctl starts or writes, and with which key.

The bundled server and docker-compose.yml's ports listen on this host only unless the user names another address.
The APIs that would let a client change what the server runs or reads need a per-server key: model control is off
on the bundled server (it serves a fixed view of its models), and its key lives in its state directory, mode 0600.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from reidctl.errors import ReidctlError

LOCAL_ADDRESS = "127.0.0.1"  # the bundled server listens on this host only unless told otherwise
KEY_HEADER = "reidctl-key"  # the request header that carries a server's key (HTTP)
GRPC_KEY_HEADER = f"triton-grpc-protocol-{KEY_HEADER}"  # the same over gRPC, under the name Triton looks for
# The APIs that change what the server runs or reads (models, shared memory mapped into it, its log and trace
# files) need the server's key; inference, health, metadata and statistics do not.
RESTRICTED_APIS = "model-repository,shared-memory,logging,trace"


def check_listen_address(address: str) -> str:
    """An IP address to bind to (0.0.0.0: every interface of this host)."""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        raise ReidctlError(f"listen address '{address}' is not an IP address (e.g. 127.0.0.1, or 0.0.0.0 for every "
                           "interface)") from None


def is_loopback(address: str) -> bool:
    return ipaddress.ip_address(address).is_loopback


def exposure_warning(address: str, ports, key_file: Path | str) -> str:
    """What a server listening beyond this host exposes, said in one line."""
    endpoints = ", ".join(f"{label} {port}" for label, port in ports.items())
    return (
        f"warning: the Triton server listens on {address} ({endpoints}): other hosts can run inference and read its "
        f"health, metadata, statistics and metrics without a key; the model repository, shared memory, logging and "
        f"trace APIs need the key in {key_file}. Serve other networks through TLS (Triton's gRPC SSL options) or a "
        "proxy in front"
    )


def connect_address(listen: str) -> str:
    """Where a client on this host reaches a server that listens on ``listen``."""
    return LOCAL_ADDRESS if ipaddress.ip_address(listen).is_unspecified else listen


def read_key(path: Path) -> str | None:
    """A server key from its file: the bare key, or a ``NAME=key`` line (the .env beside docker-compose.yml)."""
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return text.rpartition("=")[2].strip() or None


def key_headers(key: str | None, protocol: str) -> dict[str, str]:
    """The request headers that carry ``key`` over ``protocol`` ("http" or "grpc"); none without a key."""
    if not key:
        return {}
    return {GRPC_KEY_HEADER if protocol == "grpc" else KEY_HEADER: key}


def restricted_api_options(key: str) -> list[str]:
    return [
        f"--http-restricted-api={RESTRICTED_APIS}:{KEY_HEADER}={key}",
        f"--grpc-restricted-protocol={RESTRICTED_APIS}:{KEY_HEADER}={key}",
    ]
