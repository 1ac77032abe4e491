"""HOTA, MOTA and IDF1 of MOT17 tracking files against MOTChallenge ground truth.

Ground truth in the MOTChallenge layout: ``GT_DIR/<seq>/gt/gt.txt`` with ``GT_DIR/<seq>/seqinfo.ini`` (or GT_DIR
itself one such sequence). TrackEval computes all three where it is installed (its MOTChallenge preprocessing:
pedestrians only, distractors removed); otherwise motmetrics computes MOTA and IDF1 (ground-truth rows marked
ignored or of another class than pedestrian dropped, IoU >= 0.5 to match) and HOTA is reported as unavailable.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reidctl.errors import ReidctlError

PEDESTRIAN = 1
COMBINED = "COMBINED"


@dataclass
class Evaluation:
    tool: str  # "TrackEval" or "motmetrics"
    # Per sequence and COMBINED: {"HOTA": float | None, "MOTA": float, "IDF1": float}
    sequences: dict[str, dict[str, float | None]] = field(default_factory=dict)


def ground_truth_sequences(gt_dir: Path) -> dict[str, Path]:
    """Sequence name -> its folder (holding gt/gt.txt), sorted by name."""
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise ReidctlError(f"ground-truth folder not found: {gt_dir}")
    if (gt_dir / "gt" / "gt.txt").is_file():
        return {gt_dir.resolve().name: gt_dir}
    found = {p.parent.parent.name: p.parent.parent for p in sorted(gt_dir.glob("*/gt/gt.txt"))}
    if not found:
        raise ReidctlError(f"no ground truth in {gt_dir}: expected <seq>/gt/gt.txt (MOTChallenge layout)")
    return found


def pair_sequences(results: dict[str, Path], sequences: dict[str, Path]) -> dict[str, tuple[Path, Path]]:
    """Sequence -> (its folder, the tracking file) by camera name; one camera and one sequence pair by default."""
    if len(results) == 1 and len(sequences) == 1:
        ((_, result),), ((name, folder),) = results.items(), sequences.items()
        return {name: (folder, result)}
    pairs = {name: (folder, results[name]) for name, folder in sequences.items() if name in results}
    if not pairs:
        raise ReidctlError(f"no camera is named like a ground-truth sequence (cameras: {', '.join(results)}; "
                           f"sequences: {', '.join(sequences)})")
    return pairs


def evaluate(gt_dir: Path, results: dict[str, Path]) -> Evaluation:
    """Metrics of each camera's MOT17 tracking file whose camera name is a sequence of ``gt_dir``."""
    pairs = pair_sequences(results, ground_truth_sequences(gt_dir))
    for name, (folder, _) in pairs.items():
        if not (folder / "seqinfo.ini").is_file():
            raise ReidctlError(f"ground truth of {name} has no seqinfo.ini: {folder / 'seqinfo.ini'}")
    trackeval = _import_trackeval()
    if trackeval is not None:
        with contextlib.redirect_stdout(io.StringIO()):  # it reports its progress on stdout
            return _with_trackeval(trackeval, pairs)
    try:
        import motmetrics
    except ImportError:
        raise ReidctlError("evaluation needs TrackEval or motmetrics: pip install motmetrics") from None
    return _with_motmetrics(motmetrics, pairs)


def _import_trackeval():
    with contextlib.redirect_stdout(io.StringIO()):  # it prints which optional datasets it cannot load
        try:
            import trackeval
        except ImportError:
            return None
    return trackeval


def _with_trackeval(trackeval, pairs: dict[str, tuple[Path, Path]]) -> Evaluation:
    with tempfile.TemporaryDirectory(prefix="reidctl-eval-") as scratch:
        scratch = Path(scratch)
        gt_root, data = scratch / "gt", scratch / "trackers" / "reidctl" / "data"
        data.mkdir(parents=True)
        for name, (folder, result) in pairs.items():
            (gt_root / name / "gt").mkdir(parents=True)
            shutil.copyfile(folder / "seqinfo.ini", gt_root / name / "seqinfo.ini")
            shutil.copyfile(folder / "gt" / "gt.txt", gt_root / name / "gt" / "gt.txt")
            shutil.copyfile(result, data / f"{name}.txt")
        dataset = trackeval.datasets.MotChallenge2DBox({
            **trackeval.datasets.MotChallenge2DBox.get_default_dataset_config(),
            "GT_FOLDER": str(gt_root), "TRACKERS_FOLDER": str(scratch / "trackers"), "TRACKERS_TO_EVAL": ["reidctl"],
            "OUTPUT_FOLDER": str(scratch / "out"), "SKIP_SPLIT_FOL": True, "SEQ_INFO": {name: None for name in pairs},
            "GT_LOC_FORMAT": "{gt_folder}/{seq}/gt/gt.txt", "PRINT_CONFIG": False,
        })
        evaluator = trackeval.Evaluator({
            **trackeval.Evaluator.get_default_eval_config(),
            "USE_PARALLEL": False, "PRINT_RESULTS": False, "PRINT_CONFIG": False, "TIME_PROGRESS": False,
            "OUTPUT_SUMMARY": False, "OUTPUT_DETAILED": False, "PLOT_CURVES": False, "DISPLAY_LESS_PROGRESS": True,
        })
        metrics = [trackeval.metrics.HOTA(), trackeval.metrics.CLEAR(), trackeval.metrics.Identity()]
        results, _ = evaluator.evaluate([dataset], metrics)
    found = results["MotChallenge2DBox"]["reidctl"]
    evaluation = Evaluation("TrackEval")
    for name in [*pairs, "COMBINED_SEQ"]:
        res = found[name]["pedestrian"]
        evaluation.sequences[COMBINED if name == "COMBINED_SEQ" else name] = {
            "HOTA": float(np.mean(res["HOTA"]["HOTA"])), "MOTA": float(res["CLEAR"]["MOTA"]),
            "IDF1": float(res["Identity"]["IDF1"]),
        }
    return evaluation


def _load_mot(path: Path, ground_truth: bool) -> np.ndarray:
    """Rows (frame, id, x, y, w, h) of a MOTChallenge file; of ground truth, the pedestrians to count."""
    try:
        table = np.loadtxt(path, delimiter=",", ndmin=2)
    except ValueError as exc:
        raise ReidctlError(f"{path} is not a MOTChallenge file: {exc}") from None
    if table.size == 0:
        return np.zeros((0, 6))
    if table.shape[1] < 6:
        raise ReidctlError(f"{path}: expected at least 6 columns (frame,id,x,y,w,h,...), got {table.shape[1]}")
    if ground_truth and table.shape[1] >= 8:
        table = table[(table[:, 6] != 0) & (table[:, 7] == PEDESTRIAN)]
    return table[:, :6]


def _match_distance(truth: np.ndarray, tracks: np.ndarray) -> np.ndarray:
    """1 - IoU of (x, y, w, h) boxes, NaN (no match) below IoU 0.5, as MOTChallenge matches. (motmetrics 1.4's own
    iou_matrix needs NumPy < 2.)"""
    low = np.maximum(truth[:, None, :2], tracks[None, :, :2])
    high = np.minimum(truth[:, None, :2] + truth[:, None, 2:4], tracks[None, :, :2] + tracks[None, :, 2:4])
    inter = np.prod(np.clip(high - low, 0, None), axis=2)
    union = np.prod(truth[:, None, 2:4], axis=2) + np.prod(tracks[None, :, 2:4], axis=2) - inter
    distance = 1 - inter / np.maximum(union, np.finfo(float).tiny)
    distance[distance > 0.5] = np.nan
    return distance


def _with_motmetrics(mm, pairs: dict[str, tuple[Path, Path]]) -> Evaluation:
    accumulators = []
    for folder, result in pairs.values():
        truth, tracks = _load_mot(folder / "gt" / "gt.txt", True), _load_mot(result, False)
        accumulator = mm.MOTAccumulator(auto_id=True)
        for frame in np.union1d(truth[:, 0], tracks[:, 0]):
            want, got = truth[truth[:, 0] == frame], tracks[tracks[:, 0] == frame]
            accumulator.update(want[:, 1].astype(int), got[:, 1].astype(int), _match_distance(want[:, 2:], got[:, 2:]))
        accumulators.append(accumulator)
    summary = mm.metrics.create().compute_many(accumulators, metrics=["mota", "idf1"], names=list(pairs),
                                               generate_overall=True)
    evaluation = Evaluation("motmetrics")
    for name, row in summary.iterrows():
        evaluation.sequences[COMBINED if name == "OVERALL" else name] = {
            "HOTA": None, "MOTA": float(row["mota"]), "IDF1": float(row["idf1"]),
        }
    return evaluation
