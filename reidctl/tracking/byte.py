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

The arrays are small (about 50 tracks, 100 detections), so an update costs about as much as the NumPy calls it
makes: boxes are coordinate-major (4, n) and a track is the last index of every array (its Kalman state too), so
each quantity of all tracks is one contiguous run, and rows are gathered with ``take``, which keeps the result
C-ordered (``a[:, rows]`` returns it transposed in memory, and the broadcasting that follows becomes strided).
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
_NO_ROWS = np.empty(0, np.intp)


@dataclass(frozen=True)
class TrackCounts:
    active: int  # tracks written this frame (before the box-size filter)
    lost: int  # tracks kept to be found again
    total: int  # ids given so far on this camera


def iou_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - IoU of (4, n) and (4, m) boxes (x1, y1, x2, y2 as rows) as ByteTrack's cython_bbox computes it: +1 on
    widths and heights, the same float64 operations in the same order."""
    # Widths and heights of the overlaps, (2, n, m).
    overlap = np.minimum(a[2:, :, None], b[2:, None, :])
    overlap -= np.maximum(a[:2, :, None], b[:2, None, :])
    overlap += 1
    size_a, size_b = a[2:] - a[:2], b[2:] - b[:2]
    size_a += 1
    size_b += 1
    inter = overlap[0] * overlap[1]
    union = (size_a[0] * size_a[1])[:, None] + size_b[0] * size_b[1]
    union -= inter
    iou = np.zeros(inter.shape)
    np.divide(inter, union, out=iou, where=np.minimum(overlap[0], overlap[1]) > 0)  # both overlap
    return np.subtract(1, iou, out=iou)


def fuse_score(cost: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ByteTrack's score fusion: 1 - IoU x detection score."""
    fused = 1 - cost
    fused *= scores
    return np.subtract(1, fused, out=fused)


def linear_assignment(cost: np.ndarray, thresh: float):
    """LAPJV with ByteTrack's extension: pairs above ``thresh`` stay unmatched. Returns the matched rows (ascending),
    their columns, the unmatched rows and the unmatched columns."""
    if cost.size == 0:
        empty = np.empty(0, dtype=np.intp)
        return empty, empty, np.arange(cost.shape[0]), np.arange(cost.shape[1])
    x, y = lap.lapjv(cost, extend_cost=True, cost_limit=thresh, return_cost=False)
    rows = (x >= 0).nonzero()[0]
    return rows, x[rows], (x < 0).nonzero()[0], (y < 0).nonzero()[0]


def tlwh_to_tlbr(tlwh: np.ndarray) -> np.ndarray:
    """(4, n) boxes (left, top, width, height) -> (x1, y1, x2, y2)."""
    tlbr = tlwh.copy()
    tlbr[2:] += tlbr[:2]
    return tlbr


@dataclass
class _Tracks:
    """Tracks along the last axis of arrays: the tracked list first, then the lost list, each in ByteTrack's list
    order. A track is called a row, as in ByteTrack's cost matrices."""

    state: np.ndarray  # (6, 4, n) Kalman mean and covariance (kalman.py)
    ids: np.ndarray  # (n,) int64
    score: np.ndarray  # (n,) float32: score of the last matched detection
    last: np.ndarray  # (n,) frame of the last match (ByteTrack's frame_id / end_frame)
    start: np.ndarray  # (n,) frame the track was born
    confirmed: np.ndarray  # (n,) bool (ByteTrack's is_activated)
    barred: np.ndarray  # (n,) bool: the id is in ByteTrack's removed list, so it can no longer be lost and kept

    @classmethod
    def empty(cls) -> _Tracks:
        return cls(np.zeros((kalman.STATE_ROWS, 4, 0)), np.zeros(0, np.int64), np.zeros(0, np.float32),
                   np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0, bool))

    def take(self, rows: np.ndarray) -> _Tracks:
        return _Tracks(self.state.take(rows, axis=-1), self.ids[rows], self.score[rows], self.last[rows],
                       self.start[rows], self.confirmed[rows], self.barred[rows])

    def append(self, other: _Tracks) -> _Tracks:
        return _Tracks(*(np.concatenate([getattr(self, name), getattr(other, name)], axis=-1) for name in _FIELDS))

    def tlbr(self) -> np.ndarray:
        return tlwh_to_tlbr(kalman.position_to_tlwh(self.state[kalman.POSITION]))


_FIELDS = ("state", "ids", "score", "last", "start", "confirmed", "barred")


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
        fields = detections.T  # (7, N)
        scores = fields[4] * fields[5]
        # ByteTrack turns the float32 corners into float32 (x, y, w, h), then float64.
        det_tlwh = np.empty((4, len(detections)))
        det_tlwh[:2] = fields[:2]
        det_tlwh[2:] = fields[2:4] - fields[:2]
        det_tlbr = tlwh_to_tlbr(det_tlwh)
        high = (scores > self._high).nonzero()[0]
        low = ((scores > self._low) & (scores < self._high)).nonzero()[0]

        # The pool: confirmed tracked tracks, then lost ones. All rows are predicted at once; the unconfirmed
        # tracks, which ByteTrack does not predict, are then put back.
        unconfirmed_rows = (~t.confirmed[:n_tracked]).nonzero()[0]
        pool = np.arange(n_rows)
        if len(unconfirmed_rows):
            pool = np.concatenate([t.confirmed[:n_tracked].nonzero()[0], pool[n_tracked:]])
            unconfirmed_state = t.state.take(unconfirmed_rows, axis=-1)
        t.state[kalman.VELOCITY, 3, n_tracked:] = 0  # a lost track's height stops changing
        for _ in range(steps):
            kalman.predict(t.state)
        if len(unconfirmed_rows):
            t.state[:, :, unconfirmed_rows] = unconfirmed_state
        tlbr = t.tlbr()
        pool_tlbr = tlbr.take(pool, axis=1)

        # 1. Confirmed and lost tracks against the high-score detections.
        matched, matched_dets, unmatched, unmatched_high = self._associate(
            pool_tlbr, det_tlbr.take(high, axis=1), scores[high], self.config.match_thresh
        )
        first_rows, first_dets = pool[matched], high[matched_dets]

        # 2. Tracked tracks still unmatched against the low-score band; the rest become lost.
        remaining = unmatched[pool[unmatched] < n_tracked]  # positions in the pool
        second_rows = second_dets = _NO_ROWS
        if len(remaining) and len(low):
            matched, matched_dets, unmatched, _ = self._associate(
                pool_tlbr.take(remaining, axis=1), det_tlbr.take(low, axis=1), None, SECOND_MATCH_THRESH
            )
            second_rows, second_dets = pool[remaining[matched]], low[matched_dets]
            remaining = remaining[unmatched]
        newly_lost = pool[remaining]

        # 3. Unconfirmed tracks (not predicted, as in ByteTrack) against the high-score detections left.
        left = high[unmatched_high]
        third_rows = third_dets = _NO_ROWS
        if len(unconfirmed_rows) and len(left):
            matched, matched_dets, _, unmatched_left = self._associate(
                tlbr.take(unconfirmed_rows, axis=1), det_tlbr.take(left, axis=1), scores[left],
                UNCONFIRMED_MATCH_THRESH,
            )
            third_rows, third_dets = unconfirmed_rows[matched], left[matched_dets]
            left = left[unmatched_left]

        rows = np.concatenate([first_rows, second_rows, third_rows])
        dets = np.concatenate([first_dets, second_dets, third_dets])
        if len(rows):
            matched_state = t.state.take(rows, axis=-1)
            kalman.update(matched_state, kalman.tlwh_to_xyah(det_tlwh.take(dets, axis=1)))
            t.state[:, :, rows] = matched_state
            t.score[rows] = scores[dets]
            t.last[rows] = frame
            t.confirmed[rows] = True

        # 4. New tracks from the high-score detections left that reach track_thresh + 0.1.
        born = left[scores[left] >= self._new]

        # 5. The new lists, in ByteTrack's orders: tracked (kept, born, found again), then lost (kept, newly lost).
        is_matched = np.zeros(n_rows, bool)
        is_matched[rows] = True
        kept_lost = np.concatenate([n_tracked + (~is_matched[n_tracked:]).nonzero()[0], newly_lost])
        kept_lost = kept_lost[~t.barred[kept_lost]]
        expired = kept_lost[(kept_lost >= n_tracked) & (frame - t.last[kept_lost] > self.max_time_lost)]
        t.barred[expired] = True  # after the lost list was filtered: ByteTrack keeps them one more frame
        new_tracked = np.concatenate([
            is_matched[:n_tracked].nonzero()[0], n_rows + np.arange(len(born)),
            n_tracked + is_matched[n_tracked:].nonzero()[0],
        ])
        if len(born):
            t = t.append(self._born(det_tlwh.take(born, axis=1), scores[born], frame, first))
        tlwh = kalman.position_to_tlwh(t.state[kalman.POSITION])

        # 6. A track both tracked and lost (IoU distance < 0.15): the one tracked for a shorter time goes.
        if len(new_tracked) and len(kept_lost):
            tlbr = tlwh_to_tlbr(tlwh)
            # Lost tracks as rows: there are fewer of them, and IoU is symmetric.
            pairs_lost, pairs_tracked = (
                iou_distance(tlbr.take(kept_lost, axis=1), tlbr.take(new_tracked, axis=1)) < DUPLICATE_THRESH
            ).nonzero()
            if len(pairs_tracked):
                age = t.last - t.start
                tracked_younger = age[new_tracked[pairs_tracked]] <= age[kept_lost[pairs_lost]]
                new_tracked = np.delete(new_tracked, pairs_tracked[tracked_younger])
                kept_lost = np.delete(kept_lost, pairs_lost[~tracked_younger])

        self._n_tracked = len(new_tracked)
        self._tracks = t.take(np.concatenate([new_tracked, kept_lost]))
        return self._written(t, new_tracked, tlwh)

    def _associate(self, track_tlbr: np.ndarray, det_tlbr: np.ndarray, det_scores: np.ndarray | None,
                   thresh: float):
        """IoU distance, fused with ``det_scores`` (unless None or mot20), then linear_assignment."""
        cost = iou_distance(track_tlbr, det_tlbr)
        if det_scores is not None and not self.config.mot20:
            cost = fuse_score(cost, det_scores)
        return linear_assignment(cost, thresh)

    def _born(self, tlwh: np.ndarray, scores: np.ndarray, frame: int, first: bool) -> _Tracks:
        """New tracks, ids in detection order; confirmed at once only in the tracker's first frame."""
        count = tlwh.shape[1]
        state = kalman.initiate(kalman.tlwh_to_xyah(tlwh))
        ids = self._ids_given + 1 + np.arange(count)
        self._ids_given += count
        frames = np.full(count, frame, np.int64)
        return _Tracks(state, ids, scores, frames, frames.copy(), np.full(count, first), np.zeros(count, bool))

    def _written(self, t: _Tracks, tracked: np.ndarray, tlwh: np.ndarray) -> np.ndarray:
        """The confirmed ones of the ``tracked`` rows of ``t`` (boxes ``tlwh``) that pass the box-size filter."""
        rows = tracked[t.confirmed[tracked]]
        boxes = tlwh.take(rows, axis=1)
        w, h = boxes[2], boxes[3]
        keep = (w * h > self.config.min_box_area) & ~(w / h > self.config.aspect_ratio_thresh)
        rows = rows[keep]
        out = np.empty((len(rows), 6))
        out[:, 0] = t.ids[rows]
        out[:, 1:5] = boxes.compress(keep, axis=1).T
        out[:, 5] = t.score[rows]
        return out
