"""The output stage's text is formatted in a child process; what it writes does not depend on that child."""

import os
import signal
import time

import numpy as np

import reidctl.io.formatter as formatter
from reidctl.io.formatter import FormattingProcess, format_jobs
from reidctl.io.output_stage import OutputStage
from reidctl.io.sources import Frame
from reidctl.io.writers import FinishedFrame, JSONLWriter, MOTWriter

CAMERAS = ("a", "b")


def rows(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    corners = rng.uniform(0, 600, size=(count, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(5, 80, size=(count, 2)),
                            rng.uniform(0, 1, size=(count, 2)), np.zeros((count, 1))], axis=1)
    return boxes.astype(np.float32)


def step(index: int) -> list[tuple[str, Frame, np.ndarray]]:
    image = np.zeros((48, 64, 3), np.uint8)
    return [(camera, Frame(index, image, f"{camera}#{index}"), rows(40 + index, 10 * index + n))
            for n, camera in enumerate(CAMERAS)]


def expected_texts(steps: list[int]) -> dict[str, bytes]:
    """Each file's text formatted in this thread."""
    items = {camera: [] for camera in CAMERAS}
    for index in steps:
        for camera, frame, detections in step(index):
            items[camera].append(FinishedFrame(camera, frame, detections))
    texts = {camera: b"".join(MOTWriter.texts(frames)) for camera, frames in items.items()}
    ordered = [item for index in range(len(steps)) for item in (items["a"][index], items["b"][index])]
    texts["all.jsonl"] = b"".join(JSONLWriter.texts(ordered))
    return texts


def run_stage(tmp_path, steps: list[int], between=None) -> dict[str, bytes]:
    writers = {camera: [MOTWriter(tmp_path / f"{camera}.txt")] for camera in CAMERAS}
    stage = OutputStage(writers, [JSONLWriter(tmp_path / "all.jsonl")])
    for index in steps:
        assert stage.submit(step(index))
        if between is not None:
            between(stage, index)
    written, errors = stage.close()
    assert errors == [] and len(written) == 3
    return {camera: (tmp_path / f"{camera}.txt").read_bytes() for camera in CAMERAS} | {
        "all.jsonl": (tmp_path / "all.jsonl").read_bytes()}


def test_the_stage_formats_in_its_child_and_writes_what_this_thread_would(tmp_path, monkeypatch):
    formatted_here = []
    monkeypatch.setattr(formatter, "format_jobs", lambda jobs: formatted_here.append(jobs) or format_jobs(jobs))
    pids = []
    texts = run_stage(tmp_path, list(range(6)), between=lambda stage, index: pids.append(stage._formatter.pid))
    assert formatted_here == []  # every step's text came from the child
    assert len(set(pids)) == 1 and pids[0] not in (None, os.getpid())
    assert texts == expected_texts(list(range(6)))


def test_a_child_killed_mid_run_loses_no_frame(tmp_path):
    def kill_after_two(stage, index):
        if index == 2:
            deadline = time.monotonic() + 10
            while stage.statistics()["frames"] < 6 and time.monotonic() < deadline:
                time.sleep(0.01)  # the child formatted steps 0-2
            os.kill(stage._formatter.pid, signal.SIGKILL)

    assert run_stage(tmp_path, list(range(8)), between=kill_after_two) == expected_texts(list(range(8)))


def test_the_child_ignores_ctrl_c_and_ends_with_its_parent_end():
    process = FormattingProcess([MOTWriter])
    pid = process.pid
    jobs = [(MOTWriter, [])]
    assert process.texts(jobs) == [[]]
    os.kill(pid, signal.SIGINT)  # a terminal's Ctrl-C goes to the parent; the child must not end before it
    time.sleep(0.2)
    assert process.texts(jobs) == [[]] and process.pid == pid
    process.close()
    assert process.pid is None
    try:
        os.kill(pid, 0)
        raise AssertionError(f"the child {pid} outlived close()")
    except ProcessLookupError:
        pass
