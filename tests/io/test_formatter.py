"""The output stage tracks and formats a step's frames in a child process; what it writes does not depend on it."""

import json
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
from reidctl.io.writers import FinishedFrame, ImageDirWriter, JSONLWriter, MOTWriter
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
    """Each file's text (by its name), tracked and formatted in this thread."""
    items = [FinishedFrame(camera, frame, detections) for index in steps for camera, frame, detections in step(index)]
    track_and_format(items, [], trackers() if tracked else None)  # sets each item's tracks
    kind = MOTTrackTextWriter if tracked else MOTWriter
    texts = {f"{camera}.txt": b"".join(kind.texts([item for item in items if item.camera == camera]))
             for camera in CAMERAS}
    return texts | {"all.jsonl": b"".join(JSONLWriter.texts(items))}


def mot_frames(text: bytes) -> list[int]:
    """The frame indices a MOT file holds (its frame numbers count from 1)."""
    return sorted({int(line.split(b",")[0]) - 1 for line in text.splitlines()})


def run_stage(tmp_path, steps: list[int], between=None, tracked: bool = False, fails: bool = False,
              mot_dir=None) -> dict[str, bytes]:
    def mot(camera):
        path = (mot_dir or tmp_path) / f"{camera}.txt"
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
    assert texts == expected_texts(list(range(6)), tracked)
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

    assert run_stage(tmp_path, list(range(8)), kill_after_three_steps) == expected_texts(list(range(8)), tracked=False)


def test_a_tracking_child_killed_mid_run_stops_the_stage_with_every_frame_before_kept(tmp_path):
    failures = []

    def kill_after_three_steps(stage, index):
        if index == 2:
            wait_for_frames(stage, 6)
            stage._on_failure = failures.append
            os.kill(stage._formatter.pid, signal.SIGKILL)

    texts = run_stage(tmp_path, list(range(8)), kill_after_three_steps, tracked=True, fails=True)
    assert failures == ["the output stage's formatting process ended (killed by signal 9): its tracks are lost"]
    assert texts == expected_texts(list(range(3)), tracked=True)


def test_a_full_disk_under_the_childs_writes_keeps_the_same_frames_in_every_output(tmp_path, full_disk):
    """The child's one write per file fails on a full disk: it takes its step's text back, and the writer thread
    writes that step a frame at a time, so the stage stops at the first frame the disk cannot take, with every output
    holding the frames before it."""
    texts = run_stage(tmp_path, list(range(60)), mot_dir=full_disk, fails=True)
    frames = {name: mot_frames(text) for name, text in texts.items() if name.endswith(".txt")}
    records = [json.loads(line) for line in texts["all.jsonl"].splitlines()]
    assert 0 < len(records) < 120  # the disk filled before the last step
    for camera in CAMERAS:
        assert frames[f"{camera}.txt"] == [r["frame"] for r in records if r["camera"] == camera]
    expected = expected_texts(list(range(60)), tracked=False)
    for camera in CAMERAS:  # each file is a whole prefix of what it would hold
        assert expected[f"{camera}.txt"].startswith(texts[f"{camera}.txt"])


def test_text_the_child_wrote_for_frames_no_output_took_is_cut_before_publishing(tmp_path, full_disk):
    """Camera a's images fill the disk: the stage stops at a frame of a, and camera b's frame of that step, whose
    text the child had already appended, is not in b's file either."""
    writers = {"a": [MOTWriter(tmp_path / "a.txt"), ImageDirWriter(full_disk / "images")],
               "b": [MOTWriter(tmp_path / "b.txt")]}
    stage = OutputStage(writers, [JSONLWriter(tmp_path / "all.jsonl")])
    for index in range(200):
        if not stage.submit(step(index)):
            break
    stage.close()
    assert stage.failure is not None and "No space left on device" in stage.failure
    records = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    for camera in CAMERAS:
        assert mot_frames((tmp_path / f"{camera}.txt").read_bytes()) == [
            r["frame"] for r in records if r["camera"] == camera]
    images = len(list((full_disk / "images").iterdir()))
    assert 0 < images == len([r for r in records if r["camera"] == "a"]) < 200


def test_a_trackers_error_in_the_child_is_raised_as_this_thread_would(tmp_path):
    process = FormattingProcess([MOTWriter], trackers())
    later, earlier = (FinishedFrame("a", Frame(index, None, "a"), rows(4, index)) for index in (5, 3))
    (tmp_path / "a.txt").touch()
    job, target = [(MOTWriter, [0], [1])], {1: (str(tmp_path / "a.txt"), 0)}
    process.run([later], job, target)
    with pytest.raises(ReidctlError, match="tracker: frame 3 does not follow frame 5"):
        process.run([earlier], job, target)
    process.close()


def test_the_child_writes_at_the_offset_given_ignores_ctrl_c_and_ends_with_its_parent_end(tmp_path):
    process = FormattingProcess([MOTWriter])
    pid = process.pid
    items = [FinishedFrame("a", Frame(0, None, "a#0"), rows(ROWS_WORTH_A_REQUEST, 0))]
    text = MOTWriter.texts(items)[0]
    path = tmp_path / "a.txt"
    path.write_bytes(b"kept\n")
    job = [(MOTWriter, [0], [7])]
    assert process.run(items, job, {7: (str(path), 5)}).texts == [[len(text)]]
    os.kill(pid, signal.SIGINT)  # a terminal's Ctrl-C goes to the parent; the child must not end before it
    time.sleep(0.2)
    assert process.run(items, job, {7: (str(path), 5 + len(text))}).texts == [[len(text)]] and process.pid == pid
    assert path.read_bytes() == b"kept\n" + text + text
    process.close()
    assert process.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts the child's threads in Linux's /proc")
def test_the_child_starts_no_thread_pool_that_would_spin_beside_the_cameras(monkeypatch):
    """NumPy's BLAS starts a thread per core at import, each spinning a while: the child works on small arrays in
    its one thread, and its start must not take the cores the cameras' readers start on."""
    for name in formatter.ONE_THREAD_POOLS:  # as a user's shell has them (the test session sets one)
        monkeypatch.delenv(name, raising=False)
    process = FormattingProcess([MOTWriter], trackers())
    try:
        assert os.listdir(f"/proc/{process.pid}/task") == [str(process.pid)]
    finally:
        process.close()


@pytest.mark.parametrize("in_formatting_process", [True, False], ids=["formatting process", "this thread"])
def test_the_stage_counts_what_each_output_and_the_tracking_took(tmp_path, monkeypatch, in_formatting_process):
    """The seconds of each output (by its writer's label), of tracking and of the handover to the formatting process
    and back, wherever the work was done: what a run's summary divides its write stage by."""
    if not in_formatting_process:
        monkeypatch.setattr(formatter, "ROWS_WORTH_A_REQUEST", 10**9)  # every step formatted in the calling thread
    writers = {camera: [MOTWriter(tmp_path / f"{camera}.txt"), ImageDirWriter(tmp_path / camera)]
               for camera in CAMERAS}
    stage = OutputStage(writers, [JSONLWriter(tmp_path / "all.jsonl")],
                        trackers=trackers() if in_formatting_process else None)
    for index in range(3):
        assert stage.submit(step(index))
    assert stage.close()[1] == []
    seconds = stage.statistics()["seconds_by_output"]
    assert set(seconds) == {"mot", "jsonl", "images", "handover"} | ({"tracking"} if in_formatting_process else set())
    assert all(value > 0 for value in seconds.values())
