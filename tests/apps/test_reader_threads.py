"""Each camera's reader decodes and letterboxes on its share of the cores: its video's decoder runs that many
threads, and OpenCV's threads (which split each letterbox's resize) are that many during a run, instead of one per
core for every camera at once."""

import cv2
import pytest

from helpers import write_video
from reidctl.apps.pipeline import DetectOptions, OutputRequest, open_cameras, run_detect
from reidctl.config import load_config
from reidctl.io.cores import cores_per_reader, usable_cores
from reidctl.io.sources import MemorySource, camera_specs


def test_each_reader_gets_an_even_share_of_the_cores_and_at_least_one():
    cores = usable_cores()
    assert cores_per_reader(1) == cores
    assert cores_per_reader(cores) == 1
    assert cores_per_reader(4 * cores) == 1  # more cameras than cores: one each, never none
    if cores >= 4:
        assert cores_per_reader(2) == cores // 2


@pytest.mark.parametrize("decoder_threads", [1, 2])
def test_a_videos_decoder_runs_the_threads_it_is_given(tmp_path, decoder_threads):
    clip = write_video(tmp_path / "clip.mp4")  # MPEG-4: its decoder runs threads (MJPG's one only)
    sources = open_cameras(camera_specs([str(clip)]), 5.0, None, decoder_threads=decoder_threads)
    try:
        assert sources[0].capture.get(cv2.CAP_PROP_N_THREADS) == decoder_threads
        assert len(list(sources[0])) == 12  # and decodes every frame
    finally:
        for source in sources:
            source.close()


class OpenCVThreadsSeen(MemorySource):
    """Frames in memory that note OpenCV's thread count while a camera's reader reads them."""

    def __iter__(self):
        self.seen = cv2.getNumThreads()
        return super().__iter__()


def test_opencv_threads_are_each_readers_share_during_a_run_and_restored_after(small_config, frames):
    cameras = 3
    before = cv2.getNumThreads()
    sources = [OpenCVThreadsSeen(frames[:2], 2) for _ in range(cameras)]
    result = run_detect(load_config(small_config), camera_specs([f"cam{i}=memory" for i in range(cameras)]),
                        OutputRequest(no_output=True), DetectOptions(), warn=lambda line: None, sources=sources)
    assert result.summary["frames"] == 2 * cameras
    assert {source.seen for source in sources} == {cores_per_reader(cameras)}
    assert cv2.getNumThreads() == before
