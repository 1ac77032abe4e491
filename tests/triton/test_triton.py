"""Triton: the repository setup-triton writes, a real bundled server, and the triton backend against it (CPU)."""

import base64
import dataclasses
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import urllib.error
import urllib.request
import threading
import time
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException
import yaml
from typer.testing import CliRunner

from helpers import (ROOT, SMALL_TEST_SIZE, assert_same_detections, free_ports, make_checkpoint, own_warnings,
                     project_env, write_config, write_video)
from reidctl.cli import app
from reidctl.config import Config, load_config, override
from reidctl.core.detector import create_detector
from reidctl.core.frames import letterbox_frame
from reidctl.core.device import TORCH_DTYPES
from reidctl.errors import BackendUnavailable, ReidctlError
from reidctl.io.cores import cpu_list_text, process_tree
from reidctl.triton.access import GRPC_KEY_HEADER, KEY_HEADER
from reidctl.triton.client import SUPPORTED_INPUTS, grpc_key_headers, metric_batch_counts, metrics_page
from reidctl.triton.watchdog import python_stubs
from reidctl.triton.repository import (
    HOST_INPUTS_PARAMETER,
    PYTHON_MODEL,
    TENSORRT_MODEL,
    batch_input_bytes,
    config_from_parameters,
    python_model_parameters,
    read_model_config,
    render,
    write_repository,
)
from reidctl.triton.install import install_server_files, python_backend_dir
from reidctl.triton.requests import left_by_an_ended_process
from reidctl.triton.server import Ports, move_server, running_server, start_server, stop_server

# Real Triton servers start here: these tests share one test worker, so that one server's clean-up of stubs
# left in the server cache never meets another test's server mid-run.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("triton-server")]

BROKEN_MODEL = "bytetrack_broken"
ANCHORS = (128 // 8) * (160 // 8) + (128 // 16) * (160 // 16) + (128 // 32) * (160 // 32)


def free_server_ports() -> Ports:
    return Ports(*free_ports())


def triton_config(config_path: Path, grpc_port: int, **triton):
    config = load_config(config_path)
    settings = dataclasses.replace(config.detection.triton, url=f"localhost:{grpc_port}", **triton)
    return override(config, triton=settings)


def server_regions(server, pid: int | None = None) -> dict[str, int]:
    """The shared memory regions process ``pid`` (default: this one) has registered on the server: name, bytes."""
    with grpcclient.InferenceServerClient(f"localhost:{server.grpc_port}") as client:
        key = {GRPC_KEY_HEADER: Path(server.key_file).read_text().strip()}
        regions = client.get_system_shared_memory_status(headers=key, as_json=True).get("regions", {})
    return {name: int(region["byte_size"]) for name, region in regions.items()
            if name.startswith(f"reidctl_{pid or os.getpid()}_")}


def video_frames(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    assert frames
    return frames


def assert_same_rows(got: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to float noise (1e-3 + 1e-4 relative); rows of equal score may come in any order."""
    assert_same_detections(got, expected, box_px=1e-3, score=1e-3, rtol=1e-4)


def one_line(exc: BaseException) -> str:
    message = str(exc)
    assert "\n" not in message and message, message
    return message


@pytest.fixture(scope="session")
def triton_cache(tmp_path_factory):
    """One cache per test session: the server files are downloaded (or taken from .whl/) and unpacked once."""
    cache = tmp_path_factory.mktemp("reidctl-cache")
    previous = os.environ.get("REIDCTL_CACHE")
    os.environ["REIDCTL_CACHE"] = str(cache)
    yield cache / "triton"
    if previous is None:
        os.environ.pop("REIDCTL_CACHE", None)
    else:
        os.environ["REIDCTL_CACHE"] = previous


@pytest.fixture(scope="session")
def nano_config(tmp_path_factory, nano_checkpoint) -> Path:
    return write_config(tmp_path_factory.mktemp("triton-config") / "config.yaml", nano_checkpoint)


def add_broken_model(repository: Path, tmp_dir: Path) -> None:
    """A second python model whose checkpoint vanished after setup: it fails to load on the server."""
    checkpoint = make_checkpoint(tmp_dir / "moved.pth.tar")
    model_dir = repository / BROKEN_MODEL
    shutil.copytree(repository / PYTHON_MODEL, model_dir)
    config = read_model_config(model_dir / "config.pbtxt")
    config.name = BROKEN_MODEL
    config.parameters["model_path"].string_value = str(checkpoint)
    (model_dir / "config.pbtxt").write_text(render(config))
    checkpoint.unlink()


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory, triton_cache, nano_config):
    """The bundled server on free ports with the YOLOX-nano python model (CPU) and one model that fails to load."""
    base = tmp_path_factory.mktemp("triton-server")
    repository = base / "model_repository"
    write_repository(load_config(nano_config), repository, warn=lambda message: None)
    add_broken_model(repository, base)
    ports = free_server_ports()
    warnings = []
    state = start_server(repository, ports, cache=triton_cache, warn=warnings.append)
    yield types.SimpleNamespace(**dataclasses.asdict(state), warnings=warnings)
    stop_server(repository, cache=triton_cache)


@pytest.fixture(autouse=True)
def no_regions_left_on_the_server(request):
    """A test that used the bundled server leaves none of this process's shared memory regions registered on it, so
    a client that leaks one fails its own test, not a later one that counts regions."""
    yield
    if "triton_server" in request.fixturenames:
        assert not server_regions(request.getfixturevalue("triton_server"))


# -- the repository ----------------------------------------------------------------------------------------------
def test_every_input_type_the_client_accepts_has_a_torch_type():
    assert {name: TORCH_DTYPES.get(name) for name in SUPPORTED_INPUTS} == {
        "UINT8": torch.uint8, "FP16": torch.float16, "FP32": torch.float32,
    }


def test_generated_configs_parse_and_hold_configured_values(tmp_path, nano_checkpoint):
    engine = tmp_path / "yolox_nano.trt"
    engine.write_bytes(b"serialized engine bytes")
    sidecar = {
        "inputs": [{"name": "images", "shape": [-1, 3, 128, 160], "dtype": "float16"}],
        "outputs": [{"name": "output", "shape": [-1, ANCHORS, 6], "dtype": "float16"}],
        "tensorrt_version": "10.9",
        "profile": {"min_batch": 1, "opt_batch": 4, "max_batch": 4},
    }
    Path(f"{engine}.json").write_text(json.dumps(sidecar))
    triton = {"max_batch_size": 4, "preferred_batch_sizes": [2, 4], "max_queue_delay_ms": 0.25, "http_port": 9100}
    config = load_config(write_config(tmp_path / "config.yaml", nano_checkpoint, triton=triton))
    repository = tmp_path / "repo"
    written = write_repository(config, repository, engine=engine, image="nvcr.io/nvidia/tritonserver:24.10-py3")
    assert {item.path.relative_to(repository).as_posix() for item in written} == {
        f"{TENSORRT_MODEL}/config.pbtxt", f"{TENSORRT_MODEL}/1/model.plan", f"{PYTHON_MODEL}/config.pbtxt",
        f"{PYTHON_MODEL}/1/model.py", "docker-compose.yml", ".env",
    }  # fmt: skip
    assert (repository / TENSORRT_MODEL / "1" / "model.plan").read_bytes() == engine.read_bytes()

    trt = read_model_config(repository / TENSORRT_MODEL / "config.pbtxt")
    assert trt.platform == "tensorrt_plan" and trt.max_batch_size == 4
    assert list(trt.dynamic_batching.preferred_batch_size) == [2, 4]
    assert trt.dynamic_batching.max_queue_delay_microseconds == 250
    assert trt.instance_group[0].kind == trt.instance_group[0].KIND_GPU and trt.instance_group[0].count == 1
    assert trt.optimization.cuda.graphs
    assert [(t.name, list(t.dims), t.data_type) for t in trt.input] == [
        ("images", [3, 128, 160], grpcclient.model_config_pb2.TYPE_FP16)
    ]
    assert [(t.name, list(t.dims)) for t in trt.output] == [("output", [ANCHORS, 6])]

    python = read_model_config(repository / PYTHON_MODEL / "config.pbtxt")
    assert python.backend == "python" and python.max_batch_size == 4
    assert list(python.dynamic_batching.preferred_batch_size) == [2, 4]
    assert python.instance_group[0].kind == python.instance_group[0].KIND_CPU
    assert [(t.name, list(t.dims), t.data_type) for t in python.input] == [
        ("frames", [128, 160, 3], grpcclient.model_config_pb2.TYPE_UINT8)
    ]
    assert [(t.name, list(t.dims), t.data_type) for t in python.output] == [
        ("detections", [-1, 7], grpcclient.model_config_pb2.TYPE_FP32),
        ("num_detections", [1], grpcclient.model_config_pb2.TYPE_INT32),
        ("server_seconds", [1], grpcclient.model_config_pb2.TYPE_FP32),
    ]
    rebuilt = config_from_parameters({k: v.string_value for k, v in python.parameters.items()}).detection
    assert rebuilt.model_path == str(nano_checkpoint.resolve())
    assert (rebuilt.model_type, rebuilt.test_size, rebuilt.device, rebuilt.fp16) == (
        "nano",
        list(SMALL_TEST_SIZE),
        "cpu",
        True,
    )
    assert (rebuilt.conf_threshold, rebuilt.nms_threshold, rebuilt.compile) == (
        config.detection.conf_threshold,
        0.7,
        False,
    )
    assert (
        batch_input_bytes(repository, PYTHON_MODEL) == 4 * 128 * 160 * 3
    )  # what the server sizes its shared memory by
    assert python.parameters[HOST_INPUTS_PARAMETER].string_value == "no"  # frames in the GPU's memory stay there
    assert (repository / PYTHON_MODEL / "1" / "model.py").read_text() == (
        Path(__file__).parents[2] / "model_repository" / PYTHON_MODEL / "1" / "model.py"
    ).read_text()

    compose = yaml.safe_load((repository / "docker-compose.yml").read_text())["services"]["triton"]
    assert compose["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"
    assert compose["ports"] == ["127.0.0.1:9100:8000", "127.0.0.1:8101:8001", "127.0.0.1:8102:8002"]
    assert compose["volumes"] == [f"{repository.resolve()}:/models:ro"]
    assert compose["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert f"--load-model={TENSORRT_MODEL}" in compose["command"]


def test_the_server_models_parameters_read_back_as_written():
    """A threshold that JSON writes in exponent form ("5e-05") comes back a number, not a string."""
    detection = override(Config(), conf_threshold=0.00005, test_size=[128, 160], fp16=True, device="cpu").detection
    rebuilt = config_from_parameters(python_model_parameters(detection)).detection
    assert (rebuilt.conf_threshold, rebuilt.test_size, rebuilt.fp16, rebuilt.device) == (0.00005, [128, 160], True,
                                                                                         "cpu")


def test_without_sidecar_triton_completes_the_tensorrt_io(tmp_path, nano_checkpoint):
    config = load_config(
        write_config(
            tmp_path / "c.yaml", nano_checkpoint, tensorrt={"fp16": True, "engine_path": str(tmp_path / "none.trt")}
        )
    )
    warnings = []
    write_repository(config, tmp_path / "repo", warn=warnings.append)
    trt = read_model_config(tmp_path / "repo" / TENSORRT_MODEL / "config.pbtxt")
    # No dims or types: an fp16 engine built by TensorRT 10 from an fp32 graph keeps fp32 I/O, so guessing from
    # the config's fp16 would make Triton refuse the model; Triton reads them from the engine instead.
    assert list(trt.input) == [] and list(trt.output) == []
    assert trt.max_batch_size == 8 and list(trt.dynamic_batching.preferred_batch_size) == [1, 2, 4, 8]
    assert len(warnings) == 1 and "none.trt not found" in warnings[0]
    assert not (tmp_path / "repo" / TENSORRT_MODEL / "1" / "model.plan").exists()


@pytest.mark.parametrize(
    ("sidecar", "expected"),
    [
        (
            {"inputs": [{"name": "images", "shape": [1, 3, 128, 160], "dtype": "complex64"}], "outputs": []},
            "unknown data type",
        ),
        (
            {
                "inputs": [{"name": "images", "shape": [128, 160], "dtype": "float32"}],
                "outputs": [{"name": "o", "shape": [1, 2], "dtype": "float32"}],
            },
            "shape",
        ),
        ({"outputs": []}, "'inputs'"),
    ],
)
def test_bad_engine_sidecar_is_one_line_error(tmp_path, nano_checkpoint, sidecar, expected):
    engine = tmp_path / "e.trt"
    Path(f"{engine}.json").write_text(json.dumps(sidecar))
    config = load_config(write_config(tmp_path / "c.yaml", nano_checkpoint))
    with pytest.raises(ReidctlError) as info:
        write_repository(config, tmp_path / "repo", engine=engine)
    assert expected in one_line(info.value)


def test_preferred_batch_sizes_beyond_max_are_rejected(tmp_path, nano_checkpoint):
    config = load_config(
        write_config(
            tmp_path / "c.yaml", nano_checkpoint, triton={"max_batch_size": 4, "preferred_batch_sizes": [2, 8]}
        )
    )
    with pytest.raises(ReidctlError, match="preferred_batch_sizes"):
        write_repository(config, tmp_path / "repo")


# -- the server's files ------------------------------------------------------------------------------------------
def test_server_files_install_once_and_missing_stub_is_explained(triton_cache):
    files = install_server_files(triton_cache)
    assert files.binary.is_file() and os.access(files.binary, os.X_OK)
    started = time.monotonic()
    assert install_server_files(triton_cache) == files
    assert time.monotonic() - started < 0.5  # already unpacked: nothing downloaded or extracted again
    backends = python_backend_dir(files)
    assert os.access(backends / "python" / "triton_python_backend_stub", os.X_OK)
    with pytest.raises(ReidctlError) as info:
        python_backend_dir(files, (3, 7))
    assert "no python backend stub for Python 3.7" in one_line(info.value) and "3.12" in str(info.value)


def test_taken_port_is_named(tmp_path, triton_cache, nano_config):
    write_repository(load_config(nano_config), tmp_path / "repo", warn=lambda message: None)
    http, grpc, metrics = free_ports()
    with socket.socket() as listener:
        listener.bind(("0.0.0.0", grpc))
        listener.listen()
        with pytest.raises(ReidctlError) as info:
            start_server(tmp_path / "repo", Ports(http, grpc, metrics), cache=triton_cache)
    assert f"port {grpc} (gRPC) is already in use" in one_line(info.value)
    assert running_server(tmp_path / "repo", triton_cache) is None


# -- the backend against the real server ------------------------------------------------------------------------
def test_failed_model_is_reported_at_start(triton_server):
    assert triton_server.models == sorted([PYTHON_MODEL, BROKEN_MODEL])
    (warning,) = own_warnings(triton_server.warnings)
    assert BROKEN_MODEL in warning and "checkpoint not found" in warning


def test_triton_detector_matches_pytorch(triton_server, nano_config, video_file):
    config = triton_config(nano_config, triton_server.grpc_port)
    frames = video_frames(video_file)
    with create_detector(config, "pytorch") as reference, create_detector(config, "triton") as remote:
        assert remote.runner.input_format == "canvas" and remote.runner.returns_detections
        assert str(remote.runner.device) == "cpu"  # the client leaves the GPU to the server
        assert remote.runner.describe()["server"].startswith("Triton 2.")
        assert remote.runner.peak_memory_bytes() is None  # no GPU here
        singles = [remote.detect(frame) for frame in frames]
        batched = remote.detect_batch(frames)  # 12 frames > max_batch_size 8: two requests in flight
        for frame, single, together in zip(frames, singles, batched):
            expected = reference.detect(frame)
            assert len(expected) > 0
            assert_same_rows(single, expected)
            assert_same_rows(together, expected)


def test_letterboxed_batches_go_through_one_region_written_in_place(triton_server, nano_config, video_file):
    """detect's batches (canvases letterboxed by the readers) are written straight into the thread's shared memory
    region, which holds the model's largest batch from the first request: batches of any size give the in-process
    detections, and no batch replaces the region."""
    config = triton_config(nano_config, triton_server.grpc_port)
    frames = video_frames(video_file)[:9]
    size = config.detection.input_size
    canvases, ratios = zip(*(letterbox_frame(frame, size) for frame in frames))

    with create_detector(config, "pytorch") as reference, create_detector(config, "triton") as remote:
        expected = reference.detect_canvases(canvases, ratios)
        seen, first = [], 0
        for count in (1, 3, 5):  # growing batches, as when a run's cameras start
            got = remote.detect_canvases(canvases[first : first + count], ratios[first : first + count])
            for rows, want in zip(got, expected[first : first + count]):
                assert_same_rows(rows, want)
            seen.append(server_regions(triton_server))
            first += count
        batch = remote.runner.input_array(2)
        batch[:] = 7  # what the next request sends is what the server's region holds
        (name, byte_size), = seen[0].items()
        assert (Path("/dev/shm") / name).read_bytes()[: batch.nbytes] == b"\x07" * batch.nbytes
    max_batch = remote.runner.max_batch_size
    assert byte_size == max_batch * size[0] * size[1] * 3
    assert seen == [seen[0]] * 3  # one region, registered once, for every batch size
    assert not server_regions(triton_server)  # gone with the detector


def test_cuda_inputs_for_a_model_on_the_cpu_go_through_system_shared_memory_said_once(triton_server, nano_config,
                                                                                       video_file):
    frames = video_frames(video_file)[:3]
    warnings = []
    cuda = triton_config(nano_config, triton_server.grpc_port, shared_memory="cuda")
    with create_detector(triton_config(nano_config, triton_server.grpc_port), "triton", warn=pytest.fail) as plain, \
            create_detector(cuda, "triton", warn=warnings.append) as remote:
        expected = plain.detect_batch(frames)
        got = remote.detect_batch(frames) + remote.detect_batch(frames)
        assert remote.runner.servers[0].input_memory == "system"
        assert remote.runner.describe()["shared_memory"] == "system"
    (warning,) = warnings
    assert "CUDA shared memory unused" in one_line(Exception(warning)) and "runs on the CPU" in warning
    for rows, want in zip(got, expected * 2):
        assert_same_rows(rows, want)


@pytest.mark.parametrize("asked", ["auto", "cuda"])
def test_cuda_inputs_without_a_gpu_here_step_down_to_system_shared_memory(triton_server, nano_config, video_file,
                                                                           asked):
    """A server whose model would take frames in the GPU's memory, and a client host that cannot put them there (no
    GPU here): the client sends through system shared memory, with the same detections, and says so once where
    CUDA was asked for by name ("auto" says nothing). The server here runs its model on the CPU, so the client's
    server is told after the start to try CUDA, as one whose model is on a GPU would be."""
    frames = video_frames(video_file)[:3]
    warnings = []
    with create_detector(triton_config(nano_config, triton_server.grpc_port), "triton", warn=pytest.fail) as plain, \
            create_detector(triton_config(nano_config, triton_server.grpc_port, shared_memory=asked), "triton",
                            warn=warnings.append) as remote:
        expected = plain.detect_batch(frames)
        warnings.clear()  # "cuda": the model on the CPU, said at the start (the test above)
        remote.runner.servers[0].input_memory = "cuda"
        got = remote.detect_batch(frames) + remote.detect_batch(frames)
        assert remote.runner.servers[0].input_memory == "system"
    if asked == "auto":
        assert warnings == []
    else:
        (warning,) = warnings
        assert one_line(Exception(warning)).startswith("warning: Triton CUDA shared memory unavailable (")
        assert warning.endswith("; sending inputs through system shared memory")
    for rows, want in zip(got, expected * 2):
        assert_same_rows(rows, want)


def test_a_remote_url_on_the_bundled_servers_port_is_another_server(triton_server):
    """The bundled server started here is found by host and port, never by the port alone: a remote host on the same
    port is another server, whose key and GPU memory are not this machine's to report."""
    port = triton_server.grpc_port
    key = Path(triton_server.key_file).read_text().strip()
    assert grpc_key_headers(f"localhost:{port}", None) == {GRPC_KEY_HEADER: key}
    assert grpc_key_headers(f"triton.example:{port}", None) == {}


def test_concurrent_clients_reach_the_models_batches(triton_server, nano_config, video_file):
    config = triton_config(nano_config, triton_server.grpc_port)
    frames = video_frames(video_file)[:6]
    with create_detector(config, "triton") as shared:
        expected = [shared.detect(frame) for frame in frames]
        before = shared.runner.batch_counts()
        results, errors = {}, []

        def stream(index: int, detector) -> None:
            try:
                for round_ in range(3):
                    for i, frame in enumerate(frames):
                        results[(index, round_, i)] = detector.detect(frame)
            except Exception as exc:  # surfaced below
                errors.append(exc)

        own = [create_detector(config, "triton") for _ in range(3)]
        threads = [threading.Thread(target=stream, args=(n, shared)) for n in range(6)]  # one Detector, many threads
        threads += [threading.Thread(target=stream, args=(6 + n, d)) for n, d in enumerate(own)]  # one Detector each
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        regions = server_regions(triton_server)
        for detector in own:
            detector.close()
        assert not errors, errors
        after = shared.runner.batch_counts()
    assert len(results) == 9 * 3 * len(frames)
    for (_, _, i), got in results.items():
        assert_same_rows(got, expected[i])
    # The model's own batches (its metric): every frame sent ran in one, and waiting frames joined larger ones.
    grown = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    assert sum(size * count for size, count in grown.items()) == len(results)
    assert any(count > 0 for size, count in grown.items() if size > 1), grown
    # shared memory: per-thread regions of this process while running, all gone once the detectors closed
    assert len(regions) >= 9
    assert not server_regions(triton_server)


# A client that holds a shared memory region on the server until its stdin closes.
REGION_HOLDER = """
import sys
import numpy as np
from reidctl.config import load_config
from reidctl.core.detector import create_detector
detector = create_detector(load_config(sys.argv[1]), "triton")
detector.detect(np.zeros((120, 160, 3), np.uint8))
print("sent", flush=True)
sys.stdin.read()
"""


def test_regions_of_a_killed_client_are_removed_by_the_next_one(triton_server, nano_checkpoint, tmp_path):
    """A client killed mid-run cannot unregister its shared memory region: the next client on this host unregisters
    it from the server and removes its /dev/shm file, says so once, and leaves a live client's region alone."""
    config = write_config(tmp_path / "c.yaml", nano_checkpoint, triton={"url": f"localhost:{triton_server.grpc_port}"})
    holders = [subprocess.Popen([sys.executable, "-c", REGION_HOLDER, str(config)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env=project_env())
               for _ in range(2)]

    def regions_of(process) -> list[str]:
        return list(server_regions(triton_server, process.pid))

    try:
        for holder in holders:
            assert holder.stdout.readline() == "sent\n"
        killed, live = holders
        (region,) = regions_of(killed)
        assert regions_of(live) and (Path("/dev/shm") / region).exists()
        killed.kill()
        killed.wait(timeout=10)
        assert regions_of(killed) == [region]  # nobody unregistered it
        warnings = []
        with create_detector(load_config(config), "triton", warn=warnings.append) as detector:
            assert detector.detect(np.zeros((120, 160, 3), np.uint8)) is not None
            assert regions_of(killed) == [] and not (Path("/dev/shm") / region).exists()
            assert regions_of(live)
        assert warnings == [f"warning: removed 1 shared memory region(s) that ended reidctl processes left on "
                            f"Triton at localhost:{triton_server.grpc_port}"]
    finally:
        for holder in holders:
            holder.kill()
            holder.wait(timeout=10)
            holder.stdin.close()
            holder.stdout.close()


def test_only_regions_of_ended_processes_of_this_pid_namespace_count_as_left_behind():
    ended = subprocess.Popen([sys.executable, "-c", ""])
    ended.wait()
    namespace = os.stat("/proc/self/ns/pid").st_ino
    assert left_by_an_ended_process(f"reidctl_{ended.pid}_{namespace}_0")
    assert left_by_an_ended_process(f"reidctl_cuda_{ended.pid}_{namespace}_3")
    assert not left_by_an_ended_process(f"reidctl_{os.getpid()}_{namespace}_0")  # alive
    assert not left_by_an_ended_process(f"reidctl_{ended.pid}_{namespace + 1}_0")  # its PID means another process
    assert not left_by_an_ended_process(f"reidctl_{ended.pid}_0")  # named by an earlier reidctl: whose is unknown
    assert not left_by_an_ended_process("triton_python_backend_shm_region_1")


def test_the_models_batches_are_read_from_the_servers_metrics_port(triton_server, nano_config, video_file):
    url = f"localhost:{triton_server.grpc_port}"
    with create_detector(triton_config(nano_config, triton_server.grpc_port), "triton") as detector:
        detector.detect_batch(video_frames(video_file)[:3])
    # A server started here is found by its gRPC port, whatever metrics port the config names.
    page = metrics_page(url, metrics_port=1, timeout=5.0)
    ran = metric_batch_counts(page, PYTHON_MODEL)
    assert ran and sum(size * count for size, count in ran.items()) >= 3
    assert metric_batch_counts(page, "another_model") == {}
    port = free_ports()[0]  # nothing listens there: the sizes are unknown, not an error
    assert metrics_page(f"localhost:{port}", port, 1.0) is None


def test_unreachable_server_says_how_to_start_it(nano_config):
    config = triton_config(nano_config, free_ports(1)[0])
    with pytest.raises(BackendUnavailable) as info:
        create_detector(config, "triton")
    message = one_line(info.value)
    assert "is not reachable" in message and "reidctl setup-triton --start" in message


@pytest.mark.parametrize(
    ("triton", "expected"),
    [
        ({"model_name": "yolox_nowhere"}, "is not in the repository"),
        ({"model_name": BROKEN_MODEL}, "is not ready (UNAVAILABLE: ReidctlError: checkpoint not found"),
    ],
)
def test_missing_or_unready_model_is_one_line_error(triton_server, nano_config, triton, expected):
    with pytest.raises(ReidctlError) as info:
        create_detector(triton_config(nano_config, triton_server.grpc_port, **triton), "triton")
    assert expected in one_line(info.value)


def test_client_may_be_stricter_than_the_servers_score_threshold(triton_server, nano_config, video_file):
    """Rows below the client's threshold are dropped after the server's NMS: the same as thresholding first."""
    base = triton_config(nano_config, triton_server.grpc_port)
    strict = override(base, conf_threshold=0.3)
    frames = video_frames(video_file)[:4]
    with create_detector(strict, "pytorch") as reference, create_detector(strict, "triton") as remote, \
            create_detector(base, "pytorch") as loose:  # fmt: skip
        expected = [reference.detect(frame) for frame in frames]
        for frame, rows in zip(frames, expected):
            assert_same_rows(remote.detect(frame), rows)
        assert sum(map(len, expected)) < sum(len(loose.detect(frame)) for frame in frames)  # 0.3 does drop rows


@pytest.mark.parametrize(
    ("thresholds", "expected"),
    [
        (
            {"nms_threshold": 0.5},
            "applies NMS at IoU 0.7 but detection.nms_threshold is 0.5: rewrite it with `reidctl setup-triton --nms "
            "0.5`",
        ),
        ({"conf_threshold": 0.0}, "but detection.conf_threshold is 0: rewrite it with `reidctl setup-triton --conf 0`"),
        ({"model_type": "tiny"}, "runs YOLOX model_type 'nano' but detection.model_type is 'tiny': rewrite it with "
                                 "`reidctl setup-triton --model-type tiny`"),
    ],
)
def test_thresholds_the_server_cannot_honour_are_one_line_errors(triton_server, nano_config, thresholds, expected):
    with pytest.raises(ReidctlError) as info:
        create_detector(override(triton_config(nano_config, triton_server.grpc_port), **thresholds), "triton")
    assert expected in one_line(info.value)


def test_input_size_mismatch_is_one_line_error(triton_server, tmp_path, nano_checkpoint):
    config_path = write_config(tmp_path / "c.yaml", nano_checkpoint, test_size=[160, 160])
    with pytest.raises(ReidctlError) as info:
        create_detector(triton_config(config_path, triton_server.grpc_port), "triton")
    assert "takes 128x160 input but detection.test_size is 160x160" in one_line(info.value)


def test_request_timeout_is_one_line_error(triton_server, nano_config, video_file):
    frame = video_frames(video_file)[0]
    with create_detector(triton_config(nano_config, triton_server.grpc_port), "triton") as detector:
        detector.detect(frame)  # the first request may take long (one-off costs on the server)
        detector.runner.timeout = 1e-4  # the server's answer cannot arrive within 0.1 ms
        with pytest.raises(ReidctlError) as info:
            detector.detect(frame)
    assert "timed out" in one_line(info.value) and "detection.triton.timeout" in str(info.value)
    # the server refuses to unregister the region while it still runs the abandoned request: closing waits for it
    assert not server_regions(triton_server)


def test_server_killed_during_a_run_fails_promptly(tmp_path, triton_cache, nano_config, video_file):
    repository = tmp_path / "repo"
    write_repository(load_config(nano_config), repository, warn=lambda message: None)
    state = start_server(repository, free_server_ports(), cache=triton_cache)
    try:
        frame = video_frames(video_file)[0]
        errors, first_done = [], threading.Event()
        with create_detector(triton_config(nano_config, state.grpc_port), "triton") as detector:

            def stream() -> None:
                try:
                    while True:
                        detector.detect(frame)
                        first_done.set()
                except ReidctlError as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=stream, daemon=True) for _ in range(4)]
            for thread in threads:
                thread.start()
            assert first_done.wait(60)
            os.killpg(state.pid, signal.SIGKILL)
            killed = time.monotonic()
            for thread in threads:
                thread.join(timeout=15)
            assert not any(thread.is_alive() for thread in threads), "a client hung after the server died"
            assert time.monotonic() - killed < 15
        assert len(errors) == 4
        assert all("stopped responding" in one_line(exc) for exc in errors)
        assert running_server(repository, triton_cache) is None
    finally:
        stop_server(repository, cache=triton_cache)


# -- the command line --------------------------------------------------------------------------------------------
def reidctl(*args):
    """The command in this process: the server it starts runs in its own process group regardless."""
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    result.returncode = result.exit_code
    return result


def test_detect_through_the_server_reports_the_batches_it_ran(triton_server, nano_checkpoint, tmp_path):
    clips = [write_video(tmp_path / f"{name}.avi", frames=6, size=(120, 160)) for name in "abc"]
    config = write_config(tmp_path / "c.yaml", nano_checkpoint,
                          triton={"url": f"localhost:{triton_server.grpc_port}", "max_in_flight": 3})
    summary = tmp_path / "summary.json"
    result = reidctl("detect", *clips, "-c", config, "--backend", "triton", "--summary-json", summary, "--no-progress")
    assert result.returncode == 0, result.output
    data = json.loads(summary.read_text())
    assert data["frames"] == 18 and [camera["frames"] for camera in data["cameras"]] == [6, 6, 6]
    assert data["requests_in_flight"] == 3  # detection.triton.max_in_flight, one server
    assert data["mean_step_frames"] == 1.0  # 3 cameras shared by 3 batch loops: a frame a step (a request each)
    # the model's own batches (its counter on the metrics port), every frame of the run in one of them
    assert sum(int(size) * count for size, count in data["batch_sizes"].items()) == 18
    # where a frame's time went on the server, stage by stage: Triton's queue and input copy (its own counters),
    # then the model's (its counter on the metrics port)
    stages = data["server_ms_per_frame"]
    assert list(stages) == ["queue", "input", "staging", "waiting", "model", "nms", "responding"]
    assert min(stages.values()) >= 0 and stages["model"] > 0 and stages["input"] > 0 and stages["responding"] > 0
    assert "server ms per frame: " in result.output and "cores busy: detect " in result.output
    # each of the longest steps with the part of it the server's model spent on its request (said in its response)
    assert data["slowest_steps"] and all(0 < step["server_ms"] < step["ms"] for step in data["slowest_steps"])
    assert f"longest step {data['slowest_steps'][0]['ms']:.1f} ({data['slowest_steps'][0]['server_ms']:.1f} in the " \
           "server)" in result.output


def test_a_runs_regions_on_the_server_are_its_batch_loops_alone(triton_server, nano_config, tmp_path):
    """detect's warm-up runs in the main thread, which then sends nothing: while the cameras run, the server holds
    one shared memory region per batch loop (detection.triton.max_in_flight), none of the main thread's; none after."""
    from reidctl.apps.pipeline import DetectOptions, OutputRequest, run_detect
    from reidctl.io.sources import camera_specs

    config = triton_config(nano_config, triton_server.grpc_port, max_in_flight=2)
    clips = [write_video(tmp_path / f"{name}.avi", frames=15, size=(120, 160), fps=10.0) for name in "ab"]

    def own_regions() -> int:
        return len(server_regions(triton_server))

    seen = []
    result = run_detect(config, camera_specs([str(clip) for clip in clips]), OutputRequest(no_output=True),
                        DetectOptions(realtime=True), backend="triton", warn=lambda line: None,
                        on_update=lambda stats: seen.append(own_regions()))
    assert result.summary["frames"] > 0 and not result.failed
    assert seen and set(seen) == {2}
    assert own_regions() == 0


def test_a_thread_that_leaves_gives_back_its_seat_and_region(triton_server, nano_config):
    """Runner.leave_thread: the calling thread's region goes from the server, and with several servers its seat
    (the camera it counted as), at once; a later request of the same thread joins again."""
    port = triton_server.grpc_port
    config = load_config(nano_config)
    config = override(config, triton=dataclasses.replace(config.detection.triton,
                                                         url=f"localhost:{port},127.0.0.1:{port}"))

    def own_regions() -> int:
        return len(server_regions(triton_server))

    frame = np.zeros((120, 160, 3), np.uint8)
    with create_detector(config, "triton") as remote:
        seated = lambda: sum(server["cameras"] for server in remote.runner.describe()["servers"])  # noqa: E731
        remote.detect(frame)
        assert (own_regions(), seated()) == (1, 1)
        remote.runner.leave_thread()
        assert (own_regions(), seated()) == (0, 0)
        remote.detect(frame)
        assert (own_regions(), seated()) == (1, 1)
    assert own_regions() == 0


def test_detect_with_blocking_requests_finds_what_the_runner_finds(triton_server, nano_checkpoint, tmp_path):
    """scripts/reidctl_variant.py --blocking-requests (each request a blocking call, the variant measured against
    the runner's asynchronous requests) detects the same rows in every frame through the same server."""
    clips = [write_video(tmp_path / f"{name}.avi", frames=6, size=(120, 160)) for name in "ab"]
    config = write_config(tmp_path / "c.yaml", nano_checkpoint, triton={"url": f"localhost:{triton_server.grpc_port}"})
    found = {}
    for name, wrapper in (("runner", []), ("blocking", ["scripts/reidctl_variant.py", "--blocking-requests", "--"])):
        jsonl = tmp_path / f"{name}.jsonl"
        command = [sys.executable, *(wrapper or ["-m", "reidctl"]), "detect", *map(str, clips), "-c", str(config),
                   "--backend", "triton", "--jsonl", str(jsonl), "--no-progress"]
        run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
                             env=project_env())
        assert run.returncode == 0, run.stderr[-2000:]
        lines = map(json.loads, jsonl.read_text().splitlines())
        found[name] = {(line["camera"], line["frame"]): line["detections"] for line in lines}
    assert len(found["runner"]) == 12 and found["blocking"].keys() == found["runner"].keys()
    for key, rows in found["runner"].items():
        assert rows  # an untrained model still finds candidates at the default threshold
        assert_same_detections(found["blocking"][key], rows, box_px=1e-3, score=1e-3, rtol=1e-4)


def test_setup_triton_cli_start_twice_status_stop(tmp_path, triton_cache, nano_config):
    repository = tmp_path / "repo"
    http, grpc, metrics = free_ports()
    common = ["-c", nano_config, "-r", repository, "--http-port", http, "--grpc-port", grpc, "--metrics-port", metrics]
    try:
        started = reidctl("setup-triton", *common, "--start")
        assert started.returncode == 0, started.stderr
        assert "Triton server ready" in started.stdout and f"127.0.0.1:{grpc}" in started.stdout
        warnings = own_warnings([line for line in started.stderr.splitlines() if line.startswith("warning:")])
        assert len(warnings) == 1 and "model.plan not written" in warnings[0], started.stderr  # no engine here
        state = running_server(repository, triton_cache)
        assert state is not None

        again = reidctl("setup-triton", *common, "--start")
        assert again.returncode == 0 and "already running" in again.stdout and str(state.pid) in again.stdout

        status = reidctl("setup-triton", *common, "--status", "--json")
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["running"] and report["ready"] and report["pid"] == state.pid
        assert {m["name"]: m.get("state") for m in report["model_states"]}[PYTHON_MODEL] == "READY"

        stopped = reidctl("setup-triton", *common, "--stop")
        assert stopped.returncode == 0 and f"stopped Triton server (pid {state.pid})" in stopped.stdout
        assert running_server(repository, triton_cache) is None
        assert (
            not Path(f"/proc/{state.pid}").exists()
            or b"tritonserver" not in Path(f"/proc/{state.pid}/cmdline").read_bytes()
        )

        after = reidctl("setup-triton", *common, "--status")
        assert after.returncode == 0 and "no Triton server is running" in after.stdout
    finally:
        stop_server(repository, cache=triton_cache)


def thread_cpus(pids: list[int]) -> set[frozenset[int]]:
    """The distinct CPU sets the threads of ``pids`` may run on."""
    return {frozenset(os.sched_getaffinity(int(task.name)))
            for pid in pids for task in Path(f"/proc/{pid}/task").glob("*")}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="keeping the server apart needs two CPUs to share")
def test_server_on_cores_of_its_own_and_detect_on_the_others(tmp_path, triton_cache, nano_checkpoint):
    """`setup-triton --start --cpus` runs every thread of the server and its stubs on those cores; detect through
    it runs on the rest, says so with the cores each side kept busy, and gives its thread back its cores after."""
    mine = os.sched_getaffinity(0)
    server_cpu = max(mine)
    repository = tmp_path / "repo"
    http, grpc, metrics = free_ports()
    config = write_config(tmp_path / "c.yaml", nano_checkpoint, triton={"url": f"localhost:{grpc}"})
    common = ["-c", config, "-r", repository, "--http-port", http, "--grpc-port", grpc, "--metrics-port", metrics]
    try:
        started = reidctl("setup-triton", *common, "--start", "--cpus", server_cpu)
        assert started.returncode == 0, started.stderr
        assert f"on CPUs {server_cpu})" in started.stdout
        state = running_server(repository, triton_cache)
        tree = process_tree(state.pid)
        assert len(tree) > 1 and state.cpus == [server_cpu]  # the server and its model's stub
        assert thread_cpus(tree) == {frozenset({server_cpu})}

        clips = [write_video(tmp_path / f"{name}.avi", frames=4, size=(120, 160)) for name in "ab"]
        summary = tmp_path / "summary.json"
        ran = reidctl("detect", *clips, "-c", config, "--backend", "triton", "--summary-json", summary,
                      "--no-output", "--no-progress")
        assert ran.returncode == 0, ran.output
        data = json.loads(summary.read_text())
        assert data["frames"] == 8
        assert data["cpus"] == {"detect": cpu_list_text(mine - {server_cpu}), "server": str(server_cpu)}
        assert data["cpu_cores_busy"]["detect"] > 0 and data["cpu_cores_busy"]["server"] > 0
        assert os.sched_getaffinity(0) == mine  # this thread's cores back as they were

        moved = move_server(state, None)  # every core again, and said so for the next run
        assert moved.cpus == [] and running_server(repository, triton_cache).cpus == []
        assert thread_cpus(process_tree(state.pid)) == {frozenset(mine)}
    finally:
        stop_server(repository, cache=triton_cache)


def test_setup_triton_start_on_cores_it_may_not_use_is_one_line_error(tmp_path, nano_config):
    for cpus, expected in (("99", "CPU 99 is not among the CPUs this process may use"),
                           ("2-1", "'2-1' is not a CPU list such as 0-3")):
        result = reidctl("setup-triton", "-c", nano_config, "-r", tmp_path / "repo", "--start", "--cpus", cpus)
        assert result.returncode != 0 and result.stderr.strip().count("\n") == 0
        assert expected in result.stderr and "--cpus" in result.stderr
        assert not (tmp_path / "repo").exists()  # checked before anything is written


def test_setup_triton_cli_rejects_conflicting_actions(nano_config, tmp_path):
    result = reidctl("setup-triton", "-c", nano_config, "-r", tmp_path / "repo", "--start", "--stop")
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "choose one of --start, --stop and --status" in result.stderr


@pytest.mark.parametrize(
    ("options", "compiled"),
    [((), False), (("--device", "cuda"), True), (("--device", "cuda", "--no-compile"), False), (("--compile",), True)],
)
def test_setup_triton_compiles_the_server_model_on_a_gpu_by_default(tmp_path, nano_config, options, compiled):
    """A long-lived GPU server repays torch.compile's start-up minute; a CPU server (this machine) does not."""
    result = reidctl("setup-triton", "-c", nano_config, "-r", tmp_path / "repo", *options)
    assert result.returncode == 0, result.stderr
    python = read_model_config(tmp_path / "repo" / PYTHON_MODEL / "config.pbtxt")
    assert (
        config_from_parameters({k: v.string_value for k, v in python.parameters.items()}).detection.compile is compiled
    )
    assert (python.instance_group[0].kind == python.instance_group[0].KIND_GPU) == ("cuda" in options)


# -- who reaches the server --------------------------------------------------------------------------------------
def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_no_client_loads_code_into_the_server(triton_server, tmp_path):
    """Triton's model-load API takes a model's files in the request: the bundled server refuses it, key or not."""
    ran = tmp_path / "ran"
    code = f"open({str(ran)!r}, 'w').write('ran')\nclass TritonPythonModel:\n    pass\n"
    config = json.dumps({"name": "evil", "backend": "python", "max_batch_size": 0,
                         "input": [{"name": "IN", "data_type": "TYPE_FP32", "dims": [1]}],
                         "output": [{"name": "OUT", "data_type": "TYPE_FP32", "dims": [1]}]})  # fmt: skip
    body = json.dumps({"parameters": {"config": config, "file:1/model.py": base64.b64encode(code.encode()).decode()}})
    key = Path(triton_server.key_file).read_text().strip()
    for headers, refusal in (({}, 403), ({KEY_HEADER: key}, 503)):  # restricted; with the key: no model control
        request = urllib.request.Request(f"http://127.0.0.1:{triton_server.http_port}/v2/repository/models/evil/load",
                                         data=body.encode(), method="POST", headers=headers)  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == refusal
    client = grpcclient.InferenceServerClient(f"localhost:{triton_server.grpc_port}")
    for headers in (None, {GRPC_KEY_HEADER: key}):
        with pytest.raises(InferenceServerException):
            client.load_model("evil", headers=headers, config=config, files={"file:1/model.py": code.encode()})
    time.sleep(1.0)
    assert not ran.exists()
    index = client.get_model_repository_index(headers={GRPC_KEY_HEADER: key}, as_json=True)["models"]
    assert "evil" not in {model["name"] for model in index}
    client.close()


def test_shared_memory_needs_the_key_which_reidctls_client_sends(triton_server, nano_config, video_file):
    client = grpcclient.InferenceServerClient(f"localhost:{triton_server.grpc_port}")
    with pytest.raises(InferenceServerException, match="restricted"):
        client.register_system_shared_memory("probe", "/probe", 64)
    client.close()
    with create_detector(triton_config(nano_config, triton_server.grpc_port), "triton", warn=pytest.fail) as detector:
        detector.detect(video_frames(video_file)[0])
        assert detector.runner.servers[0].input_memory == "system"  # registered with the key, not gRPC bytes
        regions = list(Path("/dev/shm").glob(f"reidctl_{os.getpid()}_*"))
        assert regions and all(mode(region) == 0o600 for region in regions)


def test_the_servers_files_and_shared_memory_are_its_users_alone(triton_server, triton_cache):
    key, log = Path(triton_server.key_file), Path(triton_server.log)
    assert mode(key) == 0o600 and mode(log) == 0o600
    assert mode(key.parent) == 0o700 and mode(key.parent.parent) == 0o700  # the state directory and servers/
    assert mode(triton_cache / ".install.lock") == 0o600
    regions = [Path("/dev/shm") / region for stub in python_stubs() if stub.group == triton_server.pid
               for region in stub.shm_regions]  # fmt: skip
    assert regions and all(mode(region) & 0o077 == 0 for region in regions)


def reachable_from(namespace: str, address: str, port: int) -> bool:
    probe = f"import socket; socket.create_connection(({address!r}, {port}), timeout=3).close()"
    result = subprocess.run(["ip", "netns", "exec", namespace, sys.executable, "-c", probe], capture_output=True)
    return result.returncode == 0


@pytest.fixture()
def second_address():
    """A network namespace joined to this host by a veth pair: (its name, this host's address as it sees it). The
    pair's /30 in 10.213.0.0/16 comes from the process id: two test runs at once on one machine (a clone's CI beside a
    developer's run) must not put the same subnet on two links, or the host answers one namespace through the other."""
    name, host_end, other_end = f"reidctl-{os.getpid()}", f"rh{os.getpid()}", f"rn{os.getpid()}"
    block = os.getpid() % 16384 * 4  # the /30's first address, counted from 10.213.0.0
    host_address, other_address = (f"10.213.{(block + end) // 256}.{(block + end) % 256}" for end in (1, 2))
    steps = [
        ["ip", "netns", "add", name],
        ["ip", "link", "add", host_end, "type", "veth", "peer", "name", other_end],
        ["ip", "link", "set", other_end, "netns", name],
        ["ip", "addr", "add", f"{host_address}/30", "dev", host_end],
        ["ip", "link", "set", host_end, "up"],
        ["ip", "-n", name, "addr", "add", f"{other_address}/30", "dev", other_end],
        ["ip", "-n", name, "link", "set", other_end, "up"],
    ]
    try:
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True)
            if done.returncode != 0:
                pytest.skip(f"cannot make a second address here ({' '.join(step[:3])}: {done.stderr.strip()})")
        yield name, host_address
    finally:
        subprocess.run(["ip", "link", "del", host_end], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_the_bundled_server_is_unreachable_from_another_address(triton_server, second_address):
    namespace, this_host = second_address
    with socket.socket() as control:  # what listens on every interface is reachable from there
        control.bind(("0.0.0.0", 0))
        control.listen()
        assert reachable_from(namespace, this_host, control.getsockname()[1])
    for port in (triton_server.http_port, triton_server.grpc_port, triton_server.metrics_port):
        assert not reachable_from(namespace, this_host, port)


def test_listening_beyond_this_host_is_asked_for_and_warned_about(tmp_path, triton_cache, nano_config, second_address):
    namespace, this_host = second_address
    repository = tmp_path / "repo"
    http, grpc, metrics = free_ports()
    common = ["-c", nano_config, "-r", repository, "--http-port", http, "--grpc-port", grpc, "--metrics-port", metrics]
    refused = reidctl("setup-triton", *common, "--listen", "every-host", "--start")
    assert refused.returncode != 0 and refused.stderr.strip().count("\n") == 0
    assert "listen address 'every-host' is not an IP address" in refused.stderr
    try:
        started = reidctl("setup-triton", *common, "--listen", "0.0.0.0", "--start")
        assert started.returncode == 0, started.stderr
        assert "the Triton server listens on 0.0.0.0" in started.stderr and "key in" in started.stderr
        assert reachable_from(namespace, this_host, grpc)
    finally:
        stop_server(repository, cache=triton_cache)
    compose = yaml.safe_load((repository / "docker-compose.yml").read_text())["services"]["triton"]
    assert compose["ports"] == [f"0.0.0.0:{http}:8000", f"0.0.0.0:{grpc}:8001", f"0.0.0.0:{metrics}:8002"]


def test_the_compose_file_publishes_on_this_host_and_closes_the_repository_api(tmp_path, nano_checkpoint):
    repository = tmp_path / "repo"
    write_repository(load_config(write_config(tmp_path / "c.yaml", nano_checkpoint)), repository, warn=lambda m: None)
    compose = yaml.safe_load((repository / "docker-compose.yml").read_text())["services"]["triton"]
    assert all(port.startswith("127.0.0.1:") for port in compose["ports"])
    assert compose["ipc"] == "host"  # clients here pass frames through the host's shared memory
    restricted = [arg for arg in compose["command"] if "restricted" in arg]
    assert restricted == [
        f"--http-restricted-api=model-repository,shared-memory,logging,trace:{KEY_HEADER}=${{REIDCTL_TRITON_KEY:?run "
        "reidctl setup-triton to write .env}",
        f"--grpc-restricted-protocol=model-repository,shared-memory,logging,trace:{KEY_HEADER}=${{REIDCTL_TRITON_KEY:?"
        "run reidctl setup-triton to write .env}",
    ]
    env = repository / ".env"
    key = env.read_text()
    assert mode(env) == 0o600 and key.startswith("REIDCTL_TRITON_KEY=") and len(key.strip()) > 40
    without_shm = write_config(tmp_path / "d.yaml", nano_checkpoint, triton={"shared_memory": False})
    write_repository(load_config(without_shm), repository, warn=lambda m: None)
    assert "ipc" not in yaml.safe_load((repository / "docker-compose.yml").read_text())["services"]["triton"]
    assert env.read_text() == key  # rewriting keeps the key clients hold
