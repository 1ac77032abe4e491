"""Track outputs: MOT17 tracking text with seqinfo.ini, and the ReID crops with their index, published atomically."""

import csv
import configparser

import cv2
import numpy as np
import pytest

from reidctl.tracking.outputs import CropsWriter, MOTTrackWriter, SequenceInfo, mot_track_text

TRACKS = np.array([[1, 10.0, 20.0, 30.0, 60.0, 0.9], [2, 100.5, 0.0, 40.0, 80.0, 0.456789]])


def test_mot_tracking_rows_have_ten_columns_and_one_based_frames():
    assert mot_track_text(0, TRACKS) == (
        "1,1,10.00,20.00,30.00,60.00,0.90000,-1,-1,-1\n1,2,100.50,0.00,40.00,80.00,0.45679,-1,-1,-1\n"
    )
    assert mot_track_text(4, TRACKS[:0]) == ""


def test_mot_writer_publishes_file_and_seqinfo(tmp_path):
    writer = MOTTrackWriter(tmp_path / "cam.txt", tmp_path / "seqinfo.ini", SequenceInfo("cam", 25.0, 0, 640, 480))
    for frame in range(3):
        writer.write(frame, TRACKS)
    assert not (tmp_path / "cam.txt").exists()
    assert writer.close()
    assert len((tmp_path / "cam.txt").read_text().splitlines()) == 6
    info = configparser.ConfigParser()
    info.read(tmp_path / "seqinfo.ini")
    assert dict(info["Sequence"]) == {"name": "cam", "framerate": "25", "seqlength": "3", "imwidth": "640",
                                      "imheight": "480"}


def test_discarded_mot_writer_leaves_nothing(tmp_path):
    writer = MOTTrackWriter(tmp_path / "cam.txt", tmp_path / "seqinfo.ini", SequenceInfo("cam", 30.0))
    writer.write(0, TRACKS)
    assert not writer.close(publish=False)
    assert list(tmp_path.iterdir()) == []


def frame_image(index: int) -> np.ndarray:
    """A 200 x 300 BGR frame whose colour says its index."""
    return np.full((200, 300, 3), (index * 20, 100, 200), np.uint8)


def crop_tracks(score_by_frame):
    return [np.array([[7, 50.0, 20.0, 40.0, 100.0, score], [9, 280.0, 150.0, 60.0, 80.0, 0.5]])
            for score in score_by_frame]


@pytest.mark.parametrize("index_format", ["csv", "parquet"])
def test_crops_every_nth_frame_and_the_best_with_an_index(tmp_path, index_format):
    scores = [0.6, 0.7, 0.95, 0.8, 0.7]
    writer = CropsWriter(tmp_path, every=2, size=(64, 128), index_format=index_format)
    for frame, tracks in enumerate(crop_tracks(scores)):
        writer.write("lobby cam", frame, frame_image(frame), tracks)
    assert all(p.name.startswith(".") for p in tmp_path.iterdir())  # only the staging folder until published
    assert writer.close()

    every = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.jpg"))
    assert every == [f"lobby_cam/{track:06d}/{name}" for track in (7, 9)
                     for name in ("000000.jpg", "000002.jpg", "000004.jpg", "best.jpg")]
    best = cv2.imread(str(tmp_path / "lobby_cam/000007/best.jpg"))
    assert best.shape == (128, 64, 3) and abs(int(best[..., 0].mean()) - 2 * 20) <= 3  # frame 2 scored 0.95
    # Track 9's box runs off the image: its crop is the part inside, resized.
    assert cv2.imread(str(tmp_path / "lobby_cam/000009/000000.jpg")).shape == (128, 64, 3)

    if index_format == "csv":
        with (tmp_path / "index.csv").open() as handle:
            index = list(csv.DictReader(handle))
    else:
        index = pytest.importorskip("pyarrow.parquet").read_table(tmp_path / "index.parquet").to_pylist()
    assert len(index) == 8
    best_row = next(row for row in index if str(row["best"]) == "True" and int(row["track_id"]) == 7)
    assert (best_row["camera"], int(best_row["frame"]), float(best_row["score"])) == ("lobby cam", 2, 0.95)
    assert best_row["file"] == "lobby_cam/000007/best.jpg"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # staging removed


def test_discarded_crops_publish_nothing(tmp_path):
    writer = CropsWriter(tmp_path, every=1, size=(64, 128), index_format="csv")
    writer.write("cam", 0, frame_image(0), crop_tracks([0.9])[0])
    assert not writer.close(publish=False)
    assert list(tmp_path.iterdir()) == []


def test_crops_of_every_finished_frame_are_kept_on_a_stop(tmp_path):
    writer = CropsWriter(tmp_path, every=1, size=(64, 128), index_format="csv")
    try:
        for frame, tracks in enumerate(crop_tracks([0.9, 0.8, 0.7])):
            if frame == 2:
                raise KeyboardInterrupt
            writer.write("cam", frame, frame_image(frame), tracks)
    except KeyboardInterrupt:
        pass
    finally:
        writer.close(publish=True)
    names = sorted(p.name for p in (tmp_path / "cam" / "000007").iterdir())
    assert names == ["000000.jpg", "000001.jpg", "best.jpg"]
    assert len((tmp_path / "index.csv").read_text().splitlines()) == 1 + 6
