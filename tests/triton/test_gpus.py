"""Scale-out on Triton: instance groups on named GPUs (--gpus), one server per GPU in docker-compose.yml
(--replicas), and the GPU each python-model instance runs on. Configs are parsed back with Triton's own schema."""

import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from helpers import free_ports, needs_gpu, write_config
from reidctl.cli import app
from reidctl.config import TritonConfig, load_config, override
from reidctl.core.detector import create_detector
from reidctl.errors import ReidctlError
from reidctl.triton.compose import DEFAULT_IMAGE, compose_file
from reidctl.triton.placement import instance_device, placed_on_gpus, resolve_gpus
from reidctl.triton.repository import (
    PYTHON_MODEL,
    TENSORRT_MODEL,
    check_replicas,
    python_model_config,
    read_model_config,
    render,
    tensorrt_model_config,
    tensorrt_model_io,
    write_repository,
)
from reidctl.triton.server import Ports, process_tree, start_server, stop_server

NO_GPU = not torch.cuda.is_available()


def reidctl(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result) -> str:
    assert result.exit_code != 0
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: "), result.stderr
    return result.stderr.strip()


def written_configs(tmp_path: Path, detection) -> dict:
    """config.pbtxt of both models for ``detection``, written out and parsed back with Triton's schema."""
    io = tensorrt_model_io(None, tmp_path / "e.trt.json", detection.triton)
    configs = {}
    for name, message in ((PYTHON_MODEL, python_model_config(detection)),
                          (TENSORRT_MODEL, tensorrt_model_config(detection, io))):  # fmt: skip
        path = tmp_path / name / "config.pbtxt"
        path.parent.mkdir()
        path.write_text(render(message))
        configs[name] = read_model_config(path)
    return configs


# -- instance groups ---------------------------------------------------------------------------------------------
def test_gpus_0_1_put_instances_of_both_models_on_each_gpu(tmp_path, nano_checkpoint):
    config = load_config(write_config(tmp_path / "c.yaml", nano_checkpoint, device="auto",
                                      triton={"gpus": "0,1", "instances": 2}))  # fmt: skip
    detection = placed_on_gpus(config.detection, visible=lambda: 2)  # as on a host with two GPUs
    for name, parsed in written_configs(tmp_path, detection).items():
        (group,) = parsed.instance_group
        assert (group.kind, list(group.gpus), group.count) == (group.KIND_GPU, [0, 1], 2), name


def test_without_gpus_the_instance_groups_are_unchanged(tmp_path, nano_checkpoint):
    config = load_config(write_config(tmp_path / "c.yaml", nano_checkpoint, device="cuda"))
    assert config.detection.triton.gpus is None
    for parsed in written_configs(tmp_path, placed_on_gpus(config.detection, visible=lambda: 0)).values():
        (group,) = parsed.instance_group
        assert (group.kind, list(group.gpus), group.count) == (group.KIND_GPU, [], 1)  # Triton: every GPU it sees


@pytest.mark.parametrize(
    ("value", "visible", "expected"),
    [(None, 0, None), ("all", 2, [0, 1]), ("all", 1, [0]), ("0,1", 2, [0, 1]), ("1", 2, [1]), ([1, 0], 2, [1, 0])],
)
def test_gpus_resolve_to_the_visible_ids(value, visible, expected):
    assert resolve_gpus(value, visible) == expected


@pytest.mark.parametrize(
    ("value", "visible", "message"),
    [
        ("all", 0, "--gpus all (detection.triton.gpus): no CUDA GPU is visible here; run setup-triton on the GPU "
                   "host or leave --gpus out"),
        ("2", 2, "--gpus 2 (detection.triton.gpus): GPU 2 does not exist here (2 visible: 0..1)"),
        ("0,0", 2, "--gpus 0,0 (detection.triton.gpus): expected all or distinct GPU ids such as 0,1"),
        ("first", 2, "--gpus first (detection.triton.gpus): expected all or distinct GPU ids such as 0,1"),
        ("-1", 2, "--gpus -1 (detection.triton.gpus): expected all or distinct GPU ids such as 0,1"),
    ],
)
def test_gpus_that_cannot_be_placed_are_refused(value, visible, message):
    with pytest.raises(ReidctlError) as info:
        resolve_gpus(value, visible)
    assert str(info.value) == message


def test_gpus_with_a_cpu_device_are_refused(tmp_path, nano_checkpoint):
    config = load_config(write_config(tmp_path / "c.yaml", nano_checkpoint, device="cpu", triton={"gpus": [0]}))
    with pytest.raises(ReidctlError, match="^--gpus places the models on GPUs, but detection.device is cpu"):
        placed_on_gpus(config.detection, visible=lambda: 1)


@pytest.mark.skipif(not NO_GPU, reason="checks the refusal on a machine without a GPU")
@pytest.mark.parametrize("gpus", ["all", "0,1"])
def test_cli_gpus_without_a_gpu_is_a_one_line_error(tmp_path, nano_checkpoint, gpus):
    config = write_config(tmp_path / "c.yaml", nano_checkpoint, device="auto")
    result = reidctl("setup-triton", "-c", config, "-r", tmp_path / "repo", "--gpus", gpus)
    assert one_line_error(result) == (f"error: --gpus {gpus} (detection.triton.gpus): no CUDA GPU is visible here; "
                                      "run setup-triton on the GPU host or leave --gpus out")
    assert not (tmp_path / "repo").exists()


@needs_gpu
def test_cli_gpus_all_names_every_visible_gpu(tmp_path, nano_checkpoint):
    config = write_config(tmp_path / "c.yaml", nano_checkpoint, device="auto")
    result = reidctl("setup-triton", "-c", config, "-r", tmp_path / "repo", "--gpus", "all", "--no-compile")
    assert result.exit_code == 0, result.stderr
    for name in (PYTHON_MODEL, TENSORRT_MODEL):
        (group,) = read_model_config(tmp_path / "repo" / name / "config.pbtxt").instance_group
        assert list(group.gpus) == list(range(torch.cuda.device_count())) and group.kind == group.KIND_GPU


# -- the python model's device -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("configured", "kind", "device_id", "expected"),
    [("auto", "GPU", "1", "cuda:1"), ("cuda:0", "GPU", "1", "cuda:1"), ("cuda", "GPU", "0", "cuda:0"),
     ("cpu", "CPU", "0", "cpu"), ("auto", "CPU", "0", "auto")],
)
def test_python_model_runs_on_the_gpu_triton_placed_it_on(configured, kind, device_id, expected):
    """Triton passes model_instance_kind and model_instance_device_id (a string) to initialize."""
    assert instance_device(configured, kind, device_id) == expected


# -- docker-compose.yml ------------------------------------------------------------------------------------------
def test_replicas_are_services_on_their_own_gpu_and_ports(tmp_path, nano_checkpoint):
    config = write_config(tmp_path / "c.yaml", nano_checkpoint)
    result = reidctl("setup-triton", "-c", config, "-r", tmp_path / "repo", "--replicas", "2", "--grpc-port", "8101")
    assert result.exit_code == 0, result.stderr
    services = yaml.safe_load((tmp_path / "repo" / "docker-compose.yml").read_text())["services"]
    assert list(services) == ["triton-0", "triton-1"]
    assert [s["ports"] for s in services.values()] == [
        ["127.0.0.1:8100:8000", "127.0.0.1:8101:8001", "127.0.0.1:8102:8002"],
        ["127.0.0.1:8110:8000", "127.0.0.1:8111:8001", "127.0.0.1:8112:8002"],
    ]
    devices = [s["deploy"]["resources"]["reservations"]["devices"] for s in services.values()]
    assert [d[0]["device_ids"] for d in devices] == [["0"], ["1"]]
    assert all("count" not in d[0] and d[0]["capabilities"] == ["gpu"] for d in devices)
    assert all(s["volumes"] == [f"{(tmp_path / 'repo').resolve()}:/models:ro"] for s in services.values())
    assert all(f"--load-model={TENSORRT_MODEL}" in s["command"] for s in services.values())


def test_one_server_on_named_gpus_sees_them_all(tmp_path):
    """Inside a container given every GPU, Triton numbers them as the host does: the groups' ids hold."""
    compose = compose_file(TritonConfig(gpus=[0, 1]), tmp_path, DEFAULT_IMAGE, TENSORRT_MODEL)
    services = yaml.safe_load(compose)["services"]
    assert list(services) == ["triton"]
    assert services["triton"]["deploy"]["resources"]["reservations"]["devices"][0]["count"] == "all"
    compose = compose_file(TritonConfig(), tmp_path, DEFAULT_IMAGE, TENSORRT_MODEL)
    default = yaml.safe_load(compose)["services"]["triton"]
    assert default["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 1


def test_replicas_that_cannot_work_are_refused(tmp_path, nano_checkpoint):
    # each replica's container sees its one GPU as GPU 0: a group naming GPU 1 would not load there
    with pytest.raises(ReidctlError, match=r"^--replicas 2 gives each server one GPU, GPU 0 inside its container, "
                                           r"but detection.triton.gpus names GPUs 0,1: leave --gpus out$"):
        check_replicas(TritonConfig(gpus=[0, 1]), 2)
    check_replicas(TritonConfig(gpus=[0]), 2)
    config = write_config(tmp_path / "c.yaml", nano_checkpoint)
    clash = reidctl("setup-triton", "-c", config, "-r", tmp_path / "repo", "--replicas", "2",
                    "--http-port", "9000", "--grpc-port", "9010", "--metrics-port", "9002")  # fmt: skip
    assert "replicas would share host port 9010" in one_line_error(clash)
    beyond = reidctl("setup-triton", "-c", config, "-r", tmp_path / "repo", "--replicas", "3",
                     "--http-port", "65520", "--grpc-port", "65521", "--metrics-port", "65522")  # fmt: skip
    assert "the last replica's port 65542 exceeds 65535" in one_line_error(beyond)
    assert not (tmp_path / "repo").exists()


# -- on a host with two GPUs -------------------------------------------------------------------------------------
def gpu_processes() -> dict[int, set[int]]:
    """pid -> indices of the GPUs it holds memory on, as nvidia-smi reports them."""
    def query(what: str) -> list[list[str]]:
        text = subprocess.run(["nvidia-smi", f"--query-{what}", "--format=csv,noheader"],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip
        return [[field.strip() for field in line.split(",")] for line in text.splitlines() if line.strip()]

    index = {uuid: int(i) for i, uuid in query("gpu=index,uuid")}
    processes: dict[int, set[int]] = {}
    for pid, uuid in query("compute-apps=pid,gpu_uuid"):
        processes.setdefault(int(pid), set()).add(index[uuid])
    return processes


@needs_gpu
@pytest.mark.slow
@pytest.mark.xdist_group("triton-server")
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_bundled_server_serves_from_an_instance_on_each_gpu(tmp_path, nano_checkpoint, frames):
    config = load_config(write_config(tmp_path / "c.yaml", nano_checkpoint, device="auto", triton={"gpus": "all"}))
    repository = tmp_path / "repo"
    write_repository(config, repository, warn=lambda _: None)
    ports = Ports(*free_ports())
    state = start_server(repository, ports, cache=tmp_path / "cache" / "triton")
    try:
        client = override(config, triton={"url": f"localhost:{ports.grpc}"})
        errors = []

        def camera():
            try:
                with create_detector(client, backend="triton") as detector:
                    for frame in frames:
                        detector.detect(frame)
            except Exception as exc:  # noqa: BLE001  reported below
                errors.append(exc)

        cameras = [threading.Thread(target=camera) for _ in range(8)]
        for thread in cameras:
            thread.start()
        for thread in cameras:
            thread.join()
        assert not errors, errors
        time.sleep(1)
        stubs = set(process_tree(state.pid)) - {state.pid}
        held = {pid: gpus for pid, gpus in gpu_processes().items() if pid in stubs}
        assert sorted(held.values(), key=min) == [{0}, {1}], held  # one instance per GPU, each on its own only
    finally:
        stop_server(repository, cache=tmp_path / "cache" / "triton")
