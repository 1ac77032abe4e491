"""Several real Triton servers: one client spreads the cameras (calling threads) over them, and moves the cameras of
a server that dies to the one left, every frame answered and the failures counted (CPU, YOLOX-nano)."""

import json
import os
import signal
import socket
import threading
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers import free_ports, read_frames, start_test_server, write_config, write_video
from reidctl.cli import app
from reidctl.config import load_config
from reidctl.core.detector import create_detector
from reidctl.errors import ReidctlError
from reidctl.triton.client import RECHECK_FIRST_S
from reidctl.triton.repository import write_repository
from reidctl.triton.server import Ports, start_server, stop_server

# Real Triton servers start here: beside the server lifecycle tests, so that the two server groups may run on two
# workers at once (a start ends only the stubs of dead servers of its own cache, and these tests kill servers).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("triton-server-lifecycle")]

CAMERAS = 4
FRAMES_PER_CAMERA = 60
FRAMES_BEFORE_KILL = 4


def rounded(rows: np.ndarray) -> np.ndarray:
    """Rows in a fixed order, rounded past float noise: rows of equal score may come in any order."""
    rows = np.round(rows, 2)
    return rows[np.lexsort(rows.T[::-1])]


@pytest.fixture()
def two_servers(tmp_path, nano_checkpoint):
    """Two bundled servers, each with its own repository and ports, serving the YOLOX-nano python model."""
    config = load_config(write_config(tmp_path / "base.yaml", nano_checkpoint))
    repositories = [tmp_path / f"repository-{name}" for name in "ab"]
    states = []
    try:
        for repository in repositories:
            write_repository(config, repository, warn=lambda message: None)
            states.append(start_test_server(repository, warn=lambda message: None))
        yield repositories, states
    finally:
        for repository in repositories:
            stop_server(repository)


def test_cameras_spread_over_two_servers_and_move_when_one_is_killed(tmp_path, nano_checkpoint, video_file,
                                                                     two_servers):  # fmt: skip
    repositories, (a, b) = two_servers
    urls = [f"localhost:{a.grpc_port}", f"localhost:{b.grpc_port}"]
    config = load_config(write_config(tmp_path / "c.yaml", nano_checkpoint, triton={"url": urls, "timeout": 5.0}))
    frames = read_frames(video_file)
    with create_detector(config, "pytorch") as reference:
        expected = [rounded(reference.detect(frame)) for frame in frames]
    results: dict[tuple[int, int], np.ndarray] = {}
    errors: list[Exception] = []
    warmed = threading.Barrier(CAMERAS + 1)
    warnings: list[str] = []
    with create_detector(config, "triton", warn=warnings.append) as detector:

        def camera(index: int) -> None:
            try:
                for i in range(FRAMES_PER_CAMERA):
                    results[(index, i)] = detector.detect(frames[i % len(frames)])
                    if i + 1 == FRAMES_BEFORE_KILL:
                        warmed.wait(timeout=120)  # the kill comes while the cameras go on sending
            except Exception as exc:  # surfaced below
                errors.append(exc)
                warmed.abort()

        threads = [threading.Thread(target=camera, args=(n,)) for n in range(CAMERAS)]
        for thread in threads:
            thread.start()
        warmed.wait(timeout=120)
        spread = detector.runner.describe()["servers"]
        os.killpg(a.pid, signal.SIGKILL)
        for thread in threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in threads)
        assert not errors, errors
        served_by_a, served_by_b = detector.runner.describe()["servers"]

        # A camera that starts now goes to the live server; the dead one is checked again after its back-off.
        late = []
        time.sleep(RECHECK_FIRST_S)
        newcomer = threading.Thread(target=lambda: late.append(detector.detect(frames[0])))
        newcomer.start()
        newcomer.join(timeout=60)
        after_newcomer = detector.runner.describe()["servers"]

    assert [server["url"] for server in spread] == urls
    assert [server["cameras"] for server in spread] == [2, 2]  # stable per camera: two threads each
    assert served_by_a["live"] is False and served_by_b["live"] is True
    # said once, when the first camera found it gone
    assert warnings == [f"warning: Triton server {urls[0]} stopped answering: its cameras move to the other servers "
                        "of detection.triton.url until it answers again"]
    assert served_by_a["cameras_moved_away"] == 2 and served_by_b["cameras_moved_away"] == 0
    assert served_by_a["failed_requests"] == 2 and served_by_b["failed_requests"] == 0  # one each, sent again
    assert served_by_a["cameras_assigned"] == 2 and served_by_b["cameras_assigned"] == 4  # 2 own + 2 moved in
    # every frame was answered, by one server or the other, and counted where it was sent
    assert served_by_a["requests"] + served_by_b["requests"] == CAMERAS * FRAMES_PER_CAMERA + 2
    assert served_by_a["requests"] >= 2 * FRAMES_BEFORE_KILL + 2
    assert sorted(results) == [(c, i) for c in range(CAMERAS) for i in range(FRAMES_PER_CAMERA)]
    for (_, i), rows in results.items():
        np.testing.assert_allclose(rounded(rows), expected[i % len(frames)], atol=0.02)
    # the cameras' threads have ended: no server counts them any more
    assert [server["cameras"] for server in (served_by_a, served_by_b)] == [0, 0]
    assert len(late) == 1
    assert [server["cameras"] for server in after_newcomer] == [0, 0]  # the newcomer ended too
    assert after_newcomer[1]["cameras_assigned"] == 5 and after_newcomer[0]["live"] is False


def test_detect_keeps_max_in_flight_requests_going_to_each_server(tmp_path, nano_checkpoint, two_servers):
    """detect's batch loops are detection.triton.max_in_flight for each server, so the pool gives each server as
    many: with several servers, none is left with fewer requests in flight than one server alone gets."""
    _, (a, b) = two_servers
    urls = [f"localhost:{a.grpc_port}", f"localhost:{b.grpc_port}"]
    config = write_config(tmp_path / "c.yaml", nano_checkpoint, triton={"url": urls, "max_in_flight": 2})
    clips = [write_video(tmp_path / f"{name}.avi", frames=6, size=(120, 160)) for name in "ab"]
    summary = tmp_path / "summary.json"
    result = CliRunner().invoke(app, ["detect", *map(str, clips), "-c", str(config), "--backend", "triton",
                                      "--no-output", "--summary-json", str(summary), "--no-progress"])
    assert result.exit_code == 0, result.output
    data = json.loads(summary.read_text())
    assert data["frames"] == 12 and data["requests_in_flight"] == 4
    servers = data["servers"]
    assert [server["url"] for server in servers] == urls
    # the four batch loops, two each; the first server also seated the thread of detect's warm-up, which ran first
    assert [server["cameras_assigned"] for server in servers] == [1 + 2, 2]
    assert all(server["requests"] >= 2 and not server["failed_requests"] for server in servers)  # a warm-up each


def wait_until_free(ports: Ports, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    for port in (ports.http, ports.grpc, ports.metrics):
        while True:
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server binds: past TIME_WAIT
                try:
                    probe.bind(("127.0.0.1", port))
                    break
                except OSError:
                    assert time.monotonic() < deadline, f"port {port} still taken after {timeout} s"
                    time.sleep(0.2)


def test_a_server_back_after_its_back_off_takes_new_cameras(tmp_path, nano_checkpoint, video_file, two_servers):
    repositories, (a, b) = two_servers
    urls = [f"localhost:{a.grpc_port}", f"localhost:{b.grpc_port}"]
    config = load_config(write_config(tmp_path / "c.yaml", nano_checkpoint, triton={"url": urls}))
    frame = read_frames(video_file)[0]
    with create_detector(config, "triton") as detector:
        first = detector.detect(frame)  # this thread is on server a (the first of two with no camera)
        os.killpg(a.pid, signal.SIGKILL)
        assert len(detector.detect(frame)) == len(first)  # moved to b, frame answered
        stop_server(repositories[0])
        wait_until_free(a.ports)  # no listener left: the killed server's process has gone
        start_server(repositories[0], a.ports, warn=lambda message: None)
        time.sleep(RECHECK_FIRST_S)
        newcomer = []
        thread = threading.Thread(target=lambda: newcomer.append(detector.detect(frame)))
        thread.start()
        thread.join(timeout=120)
        report = detector.runner.describe()["servers"]
    assert len(newcomer) == 1 and len(newcomer[0]) == len(first)
    assert report[0]["live"] is True and report[0]["cameras_assigned"] == 2  # the first thread, then the newcomer
    assert report[0]["cameras_moved_away"] == 1 and report[0]["failed_requests"] == 1


def test_a_server_down_at_start_is_skipped_and_every_server_gone_is_todays_error(
    tmp_path, nano_checkpoint, video_file, two_servers
):
    _, states = two_servers
    nowhere = f"localhost:{free_ports(1)[0]}"
    urls = [nowhere] + [f"localhost:{state.grpc_port}" for state in states]
    config = load_config(write_config(tmp_path / "c.yaml", nano_checkpoint, triton={"url": ",".join(urls)}))
    frame = read_frames(video_file)[0]
    warnings = []
    with create_detector(config, "triton", warn=warnings.append) as detector:
        detector.detect(frame)
        for state in states:
            os.killpg(state.pid, signal.SIGKILL)
        with pytest.raises(ReidctlError) as info:
            detector.detect(frame)
    assert nowhere in warnings[0] and "is not reachable" in warnings[0]
    assert [line.split(" stopped answering")[0] for line in warnings[1:]] == [
        f"warning: Triton server localhost:{state.grpc_port}" for state in states]  # each said once, when found gone
    message = str(info.value)
    assert "\n" not in message
    assert "stopped responding" in message and "no other server of detection.triton.url is live" in message
    report = detector.runner.describe()["servers"]
    assert [server["live"] for server in report] == [False, False, False]
    assert [server["cameras_assigned"] for server in report] == [0, 1, 1]  # moved once, then nowhere to go
    assert [server["failed_requests"] for server in report] == [0, 1, 1]
