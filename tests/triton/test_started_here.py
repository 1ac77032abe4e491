"""The bundled server started on this machine is found by its gRPC port on the address it listens on: a server bound
to one address is reached there, not on loopback; one on loopback or every interface is reached by loopback names."""

import pytest

from reidctl.triton import client
from reidctl.triton.access import GRPC_KEY_HEADER
from reidctl.triton.client import grpc_key_headers
from reidctl.triton.server import ServerState


@pytest.mark.parametrize(
    ("listen", "url", "found"),
    [
        ("10.0.0.5", "10.0.0.5:8001", True),
        ("10.0.0.5", "localhost:8001", False),  # it listens on 10.0.0.5 only: loopback reaches another server
        ("10.0.0.5", "127.0.0.1:8001", False),
        ("10.0.0.5", "10.0.0.6:8001", False),
        ("10.0.0.5", "10.0.0.5:8000", False),  # its HTTP port, not the gRPC one
        ("127.0.0.1", "localhost:8001", True),
        ("127.0.0.1", "127.0.0.1:8001", True),
        ("127.0.0.1", "triton.example:8001", False),
        ("0.0.0.0", "localhost:8001", True),
        ("::", "[::1]:8001", True),
        ("fd00::5", "[fd00:0::5]:8001", True),
        ("fd00::5", "[::1]:8001", False),
    ],
)
def test_the_server_started_here_is_matched_by_port_and_listen_address(tmp_path, monkeypatch, listen, url, found):
    key_file = tmp_path / "key"
    key_file.write_text("secret\n")
    state = ServerState(pid=1, http_port=8000, grpc_port=8001, metrics_port=8002, repository=str(tmp_path),
                        log=str(tmp_path / "log"), models=["m"], listen=listen, key_file=str(key_file))
    # What the state files name: the server's own key is sent only where the URL reaches it.
    monkeypatch.setattr(client, "all_running_servers", lambda: [state])
    assert grpc_key_headers(url, None) == ({GRPC_KEY_HEADER: "secret"} if found else {})
