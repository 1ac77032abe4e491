"""The output stage tracks and formats a step's frames in a child process; what it writes does not depend on it."""

import os
import signal
import time

import numpy as np
import pytest

import reidctl.io.formatter as formatter
from reidctl.config import TrackingConfig
from reidctl.errors import ReidctlError
from reidctl.io.formatter import ROWS_WORTH_A_REQUEST, FormattingProcess, track_and_format
from reidctl.io.output_stage import OutputStage
from reidctl.io.sources import Frame
from reidctl.io.writers import FinishedFrame, JSONLWriter, MOTWriter
from reidctl.tracking import ByteTracker
from reidctl.tracking.outputs import MOTTrackTextWriter, SequenceInfo

CAMERAS = ("a", "b")
ROWS = ROWS_WORTH_A_REQUEST // len(CAMERAS)  # a step's rows are worth a request


def rows(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    corners = rng.uniform(0, 600, size=(count, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(5, 80, size=(count, 2)),
                            rng.uniform(0, 1, size=(count, 2)), np.zeros((count, 1))], axis=1)
    return boxes.astype(np.float32)


def step(index: int) -> list[tuple[str, Frame, np.ndarray]]:
    image = np.zeros((48, 64, 3), np.uint8)
    return [(camera, Frame(index, image, f"{camera}#{index}"), rows(ROWS + index, 10 * index + n))
            for n, camera in enumerate(CAMERAS)]


def trackers() -> dict[str, ByteTracker]:
    return {camera: ByteTracker(TrackingConfig()) for camera in CAMERAS}


def expected_texts(steps: list[int], tracked: bool) -> dict[str, bytes]:
    """Each file's text, tracked and formatted in this thread."""
    items = [FinishedFrame(camera, frame, detections) for index in steps for camera, frame, detections in step(index)]
    track_and_format(items, [], trackers() if tracked else None)
    kind = MOTTrackTextWriter if tracked else MOTWriter
    texts = {camera: b"".join(kind.texts([item for item in items if item.camera == camera])) for camera in CAMERAS}
    return texts | {"all.jsonl": b"".join(JSONLWriter.texts(items))}


def run_stage(tmp_path, steps: list[int], between=None, tracked: bool = False, fails: bool = False) -> dict[str, bytes]:
    def mot(camera):
        path = tmp_path / f"{camera}.txt"
        info = tmp_path / f"{camera}.ini"
        return MOTTrackTextWriter(path, info, SequenceInfo(camera, 30.0)) if tracked else MOTWriter(path)

    writers = {camera: [mot(camera)] for camera in CAMERAS}
    stage = OutputStage(writers, [JSONLWriter(tmp_path / "all.jsonl")], trackers=trackers() if tracked else None)
    for index in steps:
        if not stage.submit(step(index)):
            break
        if between is not None:
            between(stage, index)
    written, errors = stage.close()
    assert errors == [] and (stage.failure is not None) == fails, stage.failure
    return {path.name: path.read_bytes() for path in written if path.suffix != ".ini"}


@pytest.mark.parametrize("tracked", [False, True], ids=["detections", "tracks"])
def test_the_stage_works_in_its_child_and_writes_what_this_thread_would(tmp_path, monkeypatch, tracked):
    done_here = []
    monkeypatch.setattr(formatter, "track_and_format", lambda *args: done_here.append(args) or track_and_format(*args))
    pids = []
    texts = run_stage(tmp_path, list(range(6)), lambda stage, index: pids.append(stage._formatter.pid), tracked)
    assert done_here == []  # every step was tracked and formatted by the child
    assert len(set(pids)) == 1 and pids[0] not in (None, os.getpid())
    expected = expected_texts(list(range(6)), tracked)
    assert texts == {"a.txt": expected["a"], "b.txt": expected["b"], "all.jsonl": expected["all.jsonl"]}
    if tracked:
        assert b'"tracks": [[1, ' in texts["all.jsonl"]


def wait_for_frames(stage, frames: int) -> None:
    deadline = time.monotonic() + 10
    while stage.statistics()["frames"] < frames and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_child_killed_mid_run_loses_no_frame(tmp_path):
    def kill_after_three_steps(stage, index):
        if index == 2:
            wait_for_frames(stage, 6)
            os.kill(stage._formatter.pid, signal.SIGKILL)

    texts = run_stage(tmp_path, list(range(8)), kill_after_three_steps)
    expected = expected_texts(list(range(8)), tracked=False)
    assert texts == {"a.txt": expected["a"], "b.txt": expected["b"], "all.jsonl": expected["all.jsonl"]}


def test_a_tracking_child_killed_mid_run_stops_the_stage_with_every_frame_before_kept(tmp_path):
    failures = []

    def kill_after_three_steps(stage, index):
        if index == 2:
            wait_for_frames(stage, 6)
            stage._on_failure = failures.append
            os.kill(stage._formatter.pid, signal.SIGKILL)

    texts = run_stage(tmp_path, list(range(8)), kill_after_three_steps, tracked=True, fails=True)
    assert failures == ["the output stage's formatting process ended (killed by signal 9): its tracks are lost"]
    expected = expected_texts(list(range(3)), tracked=True)
    assert texts == {"a.txt": expected["a"], "b.txt": expected["b"], "all.jsonl": expected["all.jsonl"]}


def test_a_trackers_error_in_the_child_is_raised_as_this_thread_would():
    process = FormattingProcess([MOTWriter], trackers())
    later, earlier = (FinishedFrame("a", Frame(index, None, "a"), rows(4, index)) for index in (5, 3))
    process.run([later], [(MOTWriter, [0])])
    with pytest.raises(ReidctlError, match="tracker: frame 3 does not follow frame 5"):
        process.run([earlier], [(MOTWriter, [0])])
    process.close()


def test_the_child_ignores_ctrl_c_and_ends_with_its_parent_end():
    process = FormattingProcess([MOTWriter])
    pid = process.pid
    items = [FinishedFrame("a", Frame(0, None, "a#0"), rows(ROWS_WORTH_A_REQUEST, 0))]
    first = process.run(items, [(MOTWriter, [0])]).texts
    os.kill(pid, signal.SIGINT)  # a terminal's Ctrl-C goes to the parent; the child must not end before it
    time.sleep(0.2)
    assert process.run(items, [(MOTWriter, [0])]).texts == first and process.pid == pid
    process.close()
    assert process.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
