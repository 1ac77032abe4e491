"""The cameras' readers and the decoder threads their videos start yield the CPU to the run's other threads
(detection.reader_niceness): on a busy host, frames already read are detected and written before new ones are
decoded."""

import os
import sys
import threading

import pytest

from helpers import write_video
from reidctl.apps.pipeline import DetectOptions, OutputRequest, open_cameras, run_detect
from reidctl.config import load_config, override
from reidctl.io.sources import MemorySource, camera_specs

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="niceness is a thread's own only on Linux; elsewhere reidctl leaves it alone")


def thread_niceness() -> dict[int, int]:
    """This process's threads and their niceness (field 19 of /proc's stat; the name before it may hold spaces)."""
    found = {}
    for thread in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{thread}/stat") as stat:
                found[int(thread)] = int(stat.read().rsplit(")", 1)[1].split()[16])
        except (FileNotFoundError, ProcessLookupError):  # ended meanwhile: gone from the listing, or its stat unread
            pass
    return found


def test_a_videos_decoder_threads_start_at_the_readers_niceness(tmp_path):
    clip = write_video(tmp_path / "clip.avi")
    before = thread_niceness()
    own = before[threading.get_native_id()]
    sources = open_cameras(camera_specs([str(clip)]), 5.0, None, reader_niceness=3)
    try:
        after = thread_niceness()
        started = {thread: niceness for thread, niceness in after.items() if thread not in before}
        assert started, "the decoder started no thread: nothing here shows where its threads run"
        assert set(started.values()) == {min(19, own + 3)}
        assert after[threading.get_native_id()] == own  # the caller's own niceness is left as it was
    finally:
        for source in sources:
            source.close()


class NicenessSeen(MemorySource):
    """Frames in memory that note the niceness of the thread reading them: a camera's reader."""

    def __iter__(self):
        self.seen = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        return super().__iter__()


@pytest.mark.parametrize("reader_niceness", [0, 4])
def test_each_camera_reader_runs_at_the_configured_niceness(small_config, frames, reader_niceness):
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    source = NicenessSeen(frames[:2], 2)
    config = override(load_config(small_config), reader_niceness=reader_niceness)
    result = run_detect(config, camera_specs(["cam=memory"]), OutputRequest(no_output=True), DetectOptions(),
                        warn=lambda line: None, sources=[source])
    assert result.summary["frames"] == 2
    assert source.seen == min(19, own + reader_niceness)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own
