"""ByteTrack's association on hand-built sequences: the ids and boxes its BYTETracker gives, derived stage by stage."""

import numpy as np
import pytest

from reidctl.config import TrackingConfig
from reidctl.errors import ReidctlError
from reidctl.tracking import ByteTracker
from reidctl.tracking.byte import iou_distance


def box(x: float, y: float, w: float = 40, h: float = 100, score: float = 0.9) -> list[float]:
    """A detection row (x1, y1, x2, y2, obj, cls, class) with score = obj."""
    return [x, y, x + w, y + h, score, 1.0, 0.0]


def rows(*boxes) -> np.ndarray:
    return np.array(boxes, np.float32).reshape(-1, 7)


def run(frames, config=None, fps=30.0, indices=None):
    """Outputs per frame as {id: (x, y, w, h, score)}."""
    tracker = ByteTracker(config or TrackingConfig(), fps)
    out = []
    for index, detections in zip(indices or range(len(frames)), frames):
        tracks = tracker.update(rows(*detections), index)
        out.append({int(t[0]): tuple(t[1:]) for t in tracks})
    return out, tracker


def test_iou_adds_one_pixel_to_widths_and_heights_as_cython_bbox():
    a = np.array([[0.0, 0.0, 9.0, 9.0]]).T  # 10 x 10 pixels; boxes are columns
    b = np.array([[5.0, 0.0, 14.0, 9.0], [20.0, 20.0, 30.0, 30.0]]).T
    assert iou_distance(a, b) == pytest.approx(np.array([[1 - 50 / 150, 1.0]]))


def test_first_frame_tracks_are_confirmed_at_once_later_ones_after_a_second_match():
    frames = [[box(0, 0), box(200, 0)], [box(0, 0), box(200, 0), box(400, 0)], [box(0, 0), box(200, 0), box(400, 0)]]
    out, tracker = run(frames)
    assert list(out[0]) == [1, 2] and out[0][1][:4] == pytest.approx((0, 0, 40, 100))
    assert list(out[1]) == [1, 2]  # the new box got id 3 but waits for a second frame
    assert list(out[2]) == [1, 2, 3] and out[2][3][:4] == pytest.approx((400, 0, 40, 100))
    assert (tracker.counts.active, tracker.counts.lost, tracker.counts.total) == (3, 0, 3)


def test_ids_of_new_tracks_follow_the_detection_order():
    out, _ = run([[box(400, 0), box(0, 0), box(200, 0)]])
    assert [out[0][i][0] for i in (1, 2, 3)] == pytest.approx([400, 0, 200])


def test_a_new_box_below_track_thresh_plus_margin_starts_nothing():
    below = [[box(0, 0, score=0.59)]] * 3
    out, tracker = run(below)
    assert out == [{}, {}, {}] and tracker.counts.total == 0
    out, _ = run([[box(0, 0, score=0.6)]] * 2)
    assert list(out[1]) == [1]


def test_a_low_score_box_keeps_a_track_alive():
    seen = [[box(0, 0)]] * 3
    low = [[box(0, 0, score=0.3)]] * 3
    out, tracker = run(seen + low)
    assert [list(frame) for frame in out] == [[1]] * 6
    assert out[-1][1][4] == pytest.approx(0.3)  # the track carries the low box's score
    out, tracker = run(seen + [[]] * 3)
    assert out[3:] == [{}, {}, {}] and tracker.counts.lost == 1


def test_a_box_in_no_band_is_ignored():
    out, tracker = run([[box(0, 0)]] + [[box(0, 0, score=0.1)]] + [[box(0, 0, score=0.05)]])
    assert out[1:] == [{}, {}] and tracker.counts.lost == 1


@pytest.mark.parametrize(
    ("return_frame", "expected_ids"),
    [
        (10, [1]),  # 6 frames since the last match, within max_time_lost + the frame ByteTrack keeps it
        (11, [1]),  # expired at frame 10, but ByteTrack keeps it in the lost list one more frame
        (12, []),  # gone: the box starts track 2, shown from the next frame
    ],
)
def test_a_lost_track_is_found_within_track_buffer_and_replaced_after(return_frame, expected_ids):
    config = TrackingConfig(track_buffer=5)  # max_time_lost = 5 frames at 30 FPS
    frames = [[box(0, 0)]] * 5 + [[]] * (return_frame - 5) + [[box(0, 0)]] * 2
    out, tracker = run(frames, config)
    assert list(out[return_frame]) == expected_ids
    assert list(out[return_frame + 1]) == (expected_ids or [2])


def test_track_buffer_scales_with_the_frame_rate():
    config = TrackingConfig(track_buffer=30)
    assert ByteTracker(config, fps=15).max_time_lost == 15 and ByteTracker(config, fps=60).max_time_lost == 60
    assert ByteTracker(TrackingConfig(track_buffer=5), fps=25).max_time_lost == 4  # int(25 / 30 * 5)


def walk(start: float, step: float, frames: int, y: float = 0.0):
    return [box(start + step * f, y) for f in range(frames)]


def test_crossing_people_keep_their_ids():
    left, right = walk(0, 8, 40), walk(312, -8, 40, y=4)  # they cross at frame 19
    out, tracker = run([[a, b] for a, b in zip(left, right)])
    for f, frame in enumerate(out):
        assert frame[1][0] == pytest.approx(left[f][0], abs=4) and frame[2][0] == pytest.approx(right[f][0], abs=4)
    assert tracker.counts.total == 2


def test_mot20_matches_on_iou_alone():
    """IoU 46/156 with score 0.65: fused, 1 - 0.29 x 0.65 = 0.81 > match_thresh 0.8, so the track is lost and the
    box starts another; on IoU alone (mot20), 1 - 0.29 = 0.71 matches it."""
    frames = [[box(0, 0, 100, 200)]] * 3 + [[box(55, 0, 100, 200, score=0.65)]]
    fused, tracker = run(frames)
    assert fused[3] == {} and tracker.counts.lost == 1 and tracker.counts.total == 2
    alone, tracker = run(frames, TrackingConfig(mot20=True))
    assert list(alone[3]) == [1] and tracker.counts.total == 1


def test_written_tracks_pass_min_box_area_and_aspect_ratio():
    frames = [[box(0, 0, 3, 3), box(100, 0, 200, 100), box(400, 0)]]  # area 9; w / h = 2; a person
    out, tracker = run(frames)
    assert list(out[0]) == [3] and tracker.counts.active == 3


def test_a_lost_track_predicted_onto_a_tracked_one_is_removed_as_duplicate():
    """Lost track 1 keeps moving (its velocity is kept) onto the older track 2 standing still: IoU > 0.85, and the
    one tracked longer (2) stays."""
    still = box(200, 0)
    frames = [[a, still] for a in walk(100, 10, 6)] + [[still]] * 6
    _, tracker = run(frames[:8])
    assert tracker.counts.lost == 1
    out, tracker = run(frames)
    assert tracker.counts.lost == 0 and list(out[-1]) == [2]


def test_dropped_frames_are_predicted_across():
    """Frames 10-14 dropped: told the gap, the filter predicts 6 steps and finds the person at x=150."""
    frames = walk(0, 10, 10) + [box(150, 0)]
    out, _ = run([[b] for b in frames], indices=[*range(10), 15])
    assert list(out[-1]) == [1] and out[-1][1][0] == pytest.approx(150, abs=2)
    out, _ = run([[b] for b in frames])  # the same boxes as consecutive frames: too far for the prediction
    assert 1 not in out[-1]


def test_lost_tracks_age_by_the_frames_the_camera_produced():
    """Last seen at frame 4, track_buffer 5: delivered frames 5, 6, 7, 11 are 7 real frames later, so it expires;
    numbered consecutively (5 to 9) the same deliveries are 5 frames later, and it is kept."""
    config = TrackingConfig(track_buffer=5)
    seen = [[box(0, 0)]] * 5
    _, dropping = run(seen + [[]] * 5, config, indices=[0, 1, 2, 3, 4, 5, 6, 7, 11, 12])
    _, consecutive = run(seen + [[]] * 5, config)
    assert dropping.counts.lost == 0 and consecutive.counts.lost == 1


def test_frames_must_increase_and_rows_have_seven_columns():
    tracker = ByteTracker(TrackingConfig())
    tracker.update(rows(box(0, 0)), 3)
    with pytest.raises(ReidctlError, match="frame 3 does not follow frame 3"):
        tracker.update(rows(box(0, 0)), 3)
    with pytest.raises(ReidctlError, match=r"\(N, 7\)"):
        tracker.update(np.zeros((2, 5), np.float32), 4)
