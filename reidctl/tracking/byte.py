"""ByteTrack's BYTE association for one camera, vectorised over the camera's tracks.

It gives the tracks ByteTrack's ``BYTETracker`` gives for the same detections (same ids, boxes within float
rounding), stage by stage:

1. tracked (confirmed) and lost tracks, Kalman-predicted, against the high-score detections (score above
   ``track_thresh``): IoU distance fused with the score (unless ``mot20``), LAPJV up to ``match_thresh``;
2. the still-unmatched tracked tracks against the low-score band (``low_thresh``, ``track_thresh``): IoU, up to 0.5;
   tracked tracks left over become lost;
3. unconfirmed tracks (born in the previous frame, not predicted) against the high-score detections left: up to
   0.7; unconfirmed tracks left over are removed;
4. the high-score detections left start tracks (ids in detection order) if their score reaches
   ``track_thresh + 0.1``; only tracks born in the tracker's first frame are confirmed at once;
5. lost tracks older than ``max_time_lost`` frames are removed; as in ByteTrack, such a track stays in the lost
   list (and can be found) for one more frame, and its id is then barred from the lost list for good;
6. duplicates between tracked and lost (IoU distance below 0.15): the younger of the two goes.

The list orders that ByteTrack's tie-breaking depends on are kept: a track's row order is its place in
ByteTrack's tracked or lost list. Frame numbers are the camera's own: a jump of k frames predicts k steps and ages
lost tracks by k frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import lap
import numpy as np

from reidctl.config import TrackingConfig
from reidctl.errors import ReidctlError
import reidctl.tracking.kalman as kalman

# Columns of the array ``ByteTracker.update`` returns.
TRACK_COLUMNS = ("id", "x", "y", "w", "h", "score")
SECOND_MATCH_THRESH = 0.5
UNCONFIRMED_MATCH_THRESH = 0.7
DUPLICATE_THRESH = 0.15
NEW_TRACK_MARGIN = 0.1


@dataclass(frozen=True)
class TrackCounts:
    active: int  # tracks written this frame (before the box-size filter)
    lost: int  # tracks kept to be found again
    total: int  # ids given so far on this camera


def iou_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - IoU of (n, 4) and (m, 4) boxes (x1, y1, x2, y2) as ByteTrack's cython_bbox computes it: +1 on widths
    and heights, the same float64 operations in the same order."""
    if not len(a) or not len(b):
        return np.ones((len(a), len(b)))
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    inter = iw * ih
    union = area_a[:, None] + area_b[None, :] - inter
    iou = np.zeros(inter.shape)
    np.divide(inter, union, out=iou, where=(iw > 0) & (ih > 0))
    return 1 - iou


def fuse_score(cost: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ByteTrack's score fusion: 1 - IoU x detection score."""
    return 1 - (1 - cost) * scores[None, :]


def linear_assignment(cost: np.ndarray, thresh: float):
    """LAPJV with ByteTrack's extension: pairs above ``thresh`` stay unmatched. Returns the matched rows (ascending),
    their columns, the unmatched rows and the unmatched columns."""
    if cost.size == 0:
        empty = np.empty(0, dtype=np.intp)
        return empty, empty, np.arange(cost.shape[0]), np.arange(cost.shape[1])
    _, x, y = lap.lapjv(cost, extend_cost=True, cost_limit=thresh)
    rows = np.flatnonzero(x >= 0)
    return rows, x[rows], np.flatnonzero(x < 0), np.flatnonzero(y < 0)


def tlwh_to_tlbr(tlwh: np.ndarray) -> np.ndarray:
    tlbr = tlwh.copy()
    tlbr[:, 2:] += tlbr[:, :2]
    return tlbr


@dataclass
class _Tracks:
    """Tracks as rows of arrays: the tracked list first, then the lost list, each in ByteTrack's list order."""

    mean: np.ndarray  # (n, 8) Kalman state
    covariance: np.ndarray  # (n, 8, 8)
    ids: np.ndarray  # (n,) int64
    score: np.ndarray  # (n,) float32: score of the last matched detection
    last: np.ndarray  # (n,) frame of the last match (ByteTrack's frame_id / end_frame)
    start: np.ndarray  # (n,) frame the track was born
    confirmed: np.ndarray  # (n,) bool (ByteTrack's is_activated)
    barred: np.ndarray  # (n,) bool: the id is in ByteTrack's removed list, so it can no longer be lost and kept

    @classmethod
    def empty(cls) -> _Tracks:
        return cls(np.zeros((0, 8)), np.zeros((0, 8, 8)), np.zeros(0, np.int64), np.zeros(0, np.float32),
                   np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0, bool))

    def take(self, rows: np.ndarray) -> _Tracks:
        return _Tracks(*(getattr(self, name)[rows] for name in _FIELDS))

    def append(self, other: _Tracks) -> _Tracks:
        return _Tracks(*(np.concatenate([getattr(self, name), getattr(other, name)]) for name in _FIELDS))

    def tlbr(self, rows) -> np.ndarray:
        return tlwh_to_tlbr(kalman.mean_to_tlwh(self.mean[rows]))


_FIELDS = ("mean", "covariance", "ids", "score", "last", "start", "confirmed", "barred")


class ByteTracker:
    """ByteTrack's tracker for one camera; ids start at 1 on each camera.

    ``update(detections, frame_index)`` takes reidctl's float32 (N, 7) rows in image pixels (x1, y1, x2, y2,
    obj_conf, class_conf, class_id; score = obj_conf x class_conf) and the camera's 0-based frame number, which must
    increase; it returns the tracks written for that frame as float64 (M, 6) rows ``TRACK_COLUMNS`` (id, x, y, w, h,
    score), after ByteTrack's written-box filter (area above ``min_box_area``, w / h at most
    ``aspect_ratio_thresh``).
    """

    def __init__(self, config: TrackingConfig, fps: float = 30.0):
        if not fps > 0:
            raise ReidctlError(f"tracking needs a positive frame rate, got {fps}")
        self.config = config
        self.max_time_lost = int(fps / 30.0 * config.track_buffer)
        self._high = np.float32(config.track_thresh)
        self._low = np.float32(config.low_thresh)
        self._new = np.float32(config.track_thresh + NEW_TRACK_MARGIN)
        self._tracks = _Tracks.empty()
        self._n_tracked = 0  # rows [0, n_tracked) are the tracked list, the rest the lost list
        self._frame: int | None = None
        self._ids_given = 0

    @property
    def counts(self) -> TrackCounts:
        t, n = self._tracks, self._n_tracked
        return TrackCounts(int(t.confirmed[:n].sum()), int((~t.barred[n:]).sum()), self._ids_given)

    def update(self, detections: np.ndarray, frame_index: int) -> np.ndarray:
        detections = np.asarray(detections, dtype=np.float32)
        if detections.ndim != 2 or detections.shape[1] != 7:
            raise ReidctlError(f"tracker: detections must be (N, 7) rows, got shape {detections.shape}")
        first = self._frame is None
        steps = 1 if first else frame_index - self._frame
        if steps < 1:
            raise ReidctlError(f"tracker: frame {frame_index} does not follow frame {self._frame}")
        self._frame = frame = frame_index

        t, n_tracked = self._tracks, self._n_tracked
        n_rows = len(t.ids)
        scores = detections[:, 4] * detections[:, 5]
        # ByteTrack turns the float32 corners into float32 (x, y, w, h), then float64.
        det_tlwh = np.empty((len(detections), 4), np.float32)
        det_tlwh[:, :2] = detections[:, :2]
        det_tlwh[:, 2:] = detections[:, 2:4] - detections[:, :2]
        det_tlwh = det_tlwh.astype(np.float64)
        det_tlbr = tlwh_to_tlbr(det_tlwh)
        high = np.flatnonzero(scores > self._high)
        low = np.flatnonzero((scores > self._low) & (scores < self._high))

        tracked_rows = np.arange(n_tracked)
        confirmed_rows = tracked_rows[t.confirmed[:n_tracked]]
        unconfirmed_rows = tracked_rows[~t.confirmed[:n_tracked]]
        pool = np.concatenate([confirmed_rows, np.arange(n_tracked, n_rows)])
        if len(pool):
            self._predict(pool, lost=pool >= n_tracked, steps=steps)
        pool_tlbr = t.tlbr(pool)

        # 1. Confirmed and lost tracks against the high-score detections.
        cost = iou_distance(pool_tlbr, det_tlbr[high])
        if not self.config.mot20:
            cost = fuse_score(cost, scores[high])
        matched, matched_dets, unmatched, unmatched_high = linear_assignment(cost, self.config.match_thresh)
        first_rows, first_dets = pool[matched], high[matched_dets]

        # 2. Tracked tracks still unmatched against the low-score band; the rest become lost.
        remaining = unmatched[pool[unmatched] < n_tracked]  # positions in the pool
        matched, matched_dets, unmatched, _ = linear_assignment(
            iou_distance(pool_tlbr[remaining], det_tlbr[low]), SECOND_MATCH_THRESH
        )
        second_rows, second_dets = pool[remaining[matched]], low[matched_dets]
        newly_lost = pool[remaining[unmatched]]

        # 3. Unconfirmed tracks (not predicted, as in ByteTrack) against the high-score detections left.
        left = high[unmatched_high]
        cost = iou_distance(t.tlbr(unconfirmed_rows), det_tlbr[left])
        if not self.config.mot20:
            cost = fuse_score(cost, scores[left])
        matched, matched_dets, _, unmatched_left = linear_assignment(cost, UNCONFIRMED_MATCH_THRESH)
        third_rows, third_dets = unconfirmed_rows[matched], left[matched_dets]

        rows = np.concatenate([first_rows, second_rows, third_rows])
        dets = np.concatenate([first_dets, second_dets, third_dets])
        if len(rows):
            t.mean[rows], t.covariance[rows] = kalman.update(
                t.mean[rows], t.covariance[rows], kalman.tlwh_to_xyah(det_tlwh[dets])
            )
            t.score[rows] = scores[dets]
            t.last[rows] = frame
            t.confirmed[rows] = True

        # 4. New tracks from the high-score detections left that reach track_thresh + 0.1.
        born = left[unmatched_left]
        born = born[scores[born] >= self._new]

        # 5. The new lists, in ByteTrack's orders: tracked (kept, born, found again), then lost (kept, newly lost).
        is_matched = np.zeros(n_rows, bool)
        is_matched[rows] = True
        lost_rows = np.arange(n_tracked, n_rows)
        kept_lost = np.concatenate([lost_rows[~is_matched[n_tracked:]], newly_lost])
        kept_lost = kept_lost[~t.barred[kept_lost]]
        expired = kept_lost[(kept_lost >= n_tracked) & (frame - t.last[kept_lost] > self.max_time_lost)]
        t.barred[expired] = True  # after the lost list was filtered: ByteTrack keeps them one more frame
        new_tracked = np.concatenate([
            tracked_rows[is_matched[:n_tracked]], n_rows + np.arange(len(born)), lost_rows[is_matched[n_tracked:]]
        ])
        if len(born):
            t = t.append(self._born(det_tlwh[born], scores[born], frame, first))

        # 6. A track both tracked and lost (IoU distance < 0.15): the one tracked for a shorter time goes.
        pairs_tracked, pairs_lost = np.nonzero(
            iou_distance(t.tlbr(new_tracked), t.tlbr(kept_lost)) < DUPLICATE_THRESH
        )
        age = t.last - t.start
        tracked_age, lost_age = age[new_tracked[pairs_tracked]], age[kept_lost[pairs_lost]]
        keep_tracked = np.ones(len(new_tracked), bool)
        keep_tracked[pairs_tracked[tracked_age <= lost_age]] = False
        keep_lost = np.ones(len(kept_lost), bool)
        keep_lost[pairs_lost[tracked_age > lost_age]] = False

        self._n_tracked = int(keep_tracked.sum())
        self._tracks = t.take(np.concatenate([new_tracked[keep_tracked], kept_lost[keep_lost]]))
        return self._written()

    def _born(self, tlwh: np.ndarray, scores: np.ndarray, frame: int, first: bool) -> _Tracks:
        """New tracks, ids in detection order; confirmed at once only in the tracker's first frame."""
        mean, covariance = kalman.initiate(kalman.tlwh_to_xyah(tlwh))
        ids = self._ids_given + 1 + np.arange(len(tlwh))
        self._ids_given += len(tlwh)
        frames = np.full(len(tlwh), frame, np.int64)
        return _Tracks(mean, covariance, ids, scores, frames, frames.copy(), np.full(len(tlwh), first),
                       np.zeros(len(tlwh), bool))

    def _predict(self, rows: np.ndarray, lost: np.ndarray, steps: int) -> None:
        t = self._tracks
        mean, covariance = t.mean[rows], t.covariance[rows]
        mean[lost, 7] = 0  # a lost track's height stops changing
        for _ in range(steps):
            mean, covariance = kalman.predict(mean, covariance)
        t.mean[rows], t.covariance[rows] = mean, covariance

    def _written(self) -> np.ndarray:
        t, n = self._tracks, self._n_tracked
        rows = np.flatnonzero(t.confirmed[:n])
        tlwh = kalman.mean_to_tlwh(t.mean[rows])
        w, h = tlwh[:, 2], tlwh[:, 3]
        keep = (w * h > self.config.min_box_area) & ~(w / h > self.config.aspect_ratio_thresh)
        out = np.empty((int(keep.sum()), 6))
        out[:, 0] = t.ids[rows[keep]]
        out[:, 1:5] = tlwh[keep]
        out[:, 5] = t.score[rows[keep]]
        return out
