"""Tracks for ReID: ByteTrack's association per camera, its outputs (MOT17 tracking files, crops) and evaluation."""

from reidctl.tracking.byte import TRACK_COLUMNS, ByteTracker, TrackCounts

__all__ = ["TRACK_COLUMNS", "ByteTracker", "TrackCounts"]
