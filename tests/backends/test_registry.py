"""The backend registry: each backend one file and one record, found by its name, and the checks create_detector
makes on every backend's runner."""

import dataclasses

import pytest

from helpers import onnx_config
from reidctl.core.artifact_checks import check_input_size
from reidctl.core.detector import create_detector
from reidctl.core.registry import BACKENDS, available_backends, get_backend, register, registered_backends
from reidctl.errors import ReidctlError


def test_each_backend_is_the_file_of_its_name():
    for name, backend in registered_backends().items():
        assert backend.make_runner.__module__ == f"reidctl.backends.{name}"


def test_backends_come_simplest_first_each_at_a_rank_of_its_own():
    ranks = [backend.simplicity for backend in registered_backends().values()]
    assert ranks == sorted(set(ranks))
    assert list(available_backends()) == list(registered_backends()) == ["pytorch", "onnxruntime", "tensorrt",
                                                                          "triton"]


def test_a_name_that_is_no_backend_is_refused_with_the_known_ones():
    with pytest.raises(ReidctlError, match=r"unknown backend 'artifact' \(known: pytorch, onnxruntime, tensorrt, "
                                           r"triton\)"):
        get_backend("artifact")  # a helper module of reidctl/backends, which registers no backend


@pytest.fixture()
def onnxruntime_kept():
    """ONNX Runtime registered again as 'onnxruntime-kept', keeping every runner it makes."""
    made = []

    def make_runner(config, warn):
        made.append(get_backend("onnxruntime").make_runner(config, warn))
        return made[-1]

    register(dataclasses.replace(get_backend("onnxruntime"), name="onnxruntime-kept", make_runner=make_runner))
    yield made
    del BACKENDS["onnxruntime-kept"]


def test_an_artifact_built_for_another_input_size_is_refused_and_its_runner_closed(onnx_fp32, onnxruntime_kept):
    config = onnx_config(onnx_fp32)
    wrong_size = dataclasses.replace(config, detection=dataclasses.replace(config.detection, test_size=[256, 256]))
    with pytest.raises(ReidctlError, match=r"nano.onnx takes 128x160 input but detection.test_size is 256x256: "
                                           r"pass --test-size 128x160 or set detection.test_size: \[128, 160\]"):
        create_detector(wrong_size, "onnxruntime-kept")
    [runner] = onnxruntime_kept
    assert runner.session is None  # closed
    with create_detector(config, "onnxruntime-kept") as detector:
        assert detector.runner.session is not None


def test_an_artifact_that_takes_any_input_size_takes_the_configured_one():
    check_input_size(None, (128, 160), "model 'dynamic'")
    check_input_size((128, 160), (128, 160), "model 'fixed'")
