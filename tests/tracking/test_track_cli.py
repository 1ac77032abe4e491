"""`reidctl track` on saved detections: JSON lines and MOT17 inputs, outputs, bad input and --eval."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from reidctl.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def people(frames: int = 10, missing: tuple[int, ...] = ()):
    """Per 0-based frame, (id, x, y, w, h) of two people walking 2 px a frame; person 2 unseen in ``missing``."""
    return [[(1, 10 + 2 * f, 20, 40, 100), *([] if f in missing else [(2, 200 - 2 * f, 30, 40, 100)])]
            for f in range(frames)]


def write_jsonl(path, cameras: dict):
    lines = []
    for frame in range(max(len(boxes) for boxes in cameras.values())):
        for camera, boxes in cameras.items():
            rows = [[x, y, x + w, y + h, 0.9, 1.0, 0] for _, x, y, w, h in boxes[frame]]
            lines.append(json.dumps({"camera": camera, "frame": frame, "name": f"{frame:06d}.jpg", "detections": rows}))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_mot_detections(path, boxes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{f + 1},-1,{x},{y},{w},{h},0.9,-1,-1,-1\n" for f, frame in enumerate(boxes)
                            for _, x, y, w, h in frame))
    return path


def read_mot(path) -> np.ndarray:
    return np.loadtxt(path, delimiter=",", ndmin=2)


def test_jsonl_with_two_cameras_writes_a_directory_of_tracks(tmp_path):
    dets = write_jsonl(tmp_path / "dets.jsonl", {"door": people(), "hall": people(missing=(3,))})
    out = tmp_path / "mot"
    result = invoke("track", dets, "--mot", out, "--jsonl", tmp_path / "tracks.jsonl",
                    "--summary-json", tmp_path / "summary.json")
    assert result.exit_code == 0, result.output
    door = read_mot(out / "door.txt")
    assert door.shape == (20, 10) and set(door[:, 1]) == {1, 2} and (door[:, 7:] == -1).all()
    assert door[0, :6] == pytest.approx([1, 1, 10, 20, 40, 100])
    assert "seqLength=10" in (out / "hall" / "seqinfo.ini").read_text()
    assert len(read_mot(out / "hall.txt")) == 19  # person 2 lost in frame 3 is not written
    records = [json.loads(line) for line in (tmp_path / "tracks.jsonl").read_text().splitlines()]
    assert len(records) == 20 and records[0]["camera"] == "door" and records[0]["tracks"][0][:1] == [1]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(c["name"], c["frames"], c["tracks"]) for c in summary["cameras"]] == [("door", 10, 2), ("hall", 10, 2)]


def test_mot_input_names_the_camera_by_its_sequence_and_reads_its_frame_rate(tmp_path):
    sequence = tmp_path / "MOT17-02"
    dets = write_mot_detections(sequence / "det" / "det.txt", people(missing=(4,)))
    (sequence / "seqinfo.ini").write_text("[Sequence]\nname=MOT17-02\nframeRate=15\nseqLength=12\n"
                                          "imWidth=640\nimHeight=480\n")
    result = invoke("track", dets, "--mot", tmp_path / "out" / "track.txt", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert [(c["name"], c["fps"], c["frames"]) for c in summary["cameras"]] == [("MOT17-02", 15.0, 12)]
    info = (tmp_path / "out" / "seqinfo.ini").read_text()
    assert "frameRate=15" in info and "seqLength=12" in info and "imWidth=640" in info


def test_mot_and_jsonl_inputs_of_the_same_detections_give_the_same_tracks(tmp_path):
    boxes = people(missing=(4, 5))
    invoke("track", write_jsonl(tmp_path / "cam.jsonl", {"cam": boxes}), "--mot", tmp_path / "a.txt")
    invoke("track", write_mot_detections(tmp_path / "cam.txt", boxes), "--mot", tmp_path / "b.txt")
    assert (tmp_path / "a.txt").read_text() == (tmp_path / "b.txt").read_text()


def test_track_options_override_the_config(tmp_path):
    dets = write_jsonl(tmp_path / "dets.jsonl", {"cam": people()})
    result = invoke("track", dets, "--track-thresh", "0.85", "--mot", tmp_path / "t.txt", "--json")
    assert json.loads(result.output)["cameras"][0]["tracks"] == 0  # 0.9 < 0.85 + 0.1: nothing starts


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ('{"camera": "a", "frame": 0, "detections": []}\n{"camera": "a", "frame": 1, "detections": [[1, 2]]}\n',
         ".jsonl", "dets.jsonl:2: each detection must be 7 numbers"),
        ('{"camera": "a", "frame": 0, "detections": []}\nnot json\n', ".jsonl", "dets.jsonl:2: not valid JSON"),
        ('{"camera": "a", "frame": 3, "detections": []}\n{"camera": "a", "frame": 3, "detections": []}\n',
         ".jsonl", "dets.jsonl:2: frame 3 of camera 'a' does not follow frame 3"),
        ("1,-1,1,2,3,4,0.9,-1,-1,-1\n2,-1,1,2,3,4,0.9\n", ".txt", "dets.txt:2: expected 10 columns"),
        ("1,-1,1,2,3,4,0.9,-1,-1,-1\n2,-1,1,x,3,4,0.9,-1,-1,-1\n", ".txt", "dets.txt:2: not a number"),
    ],
)
def test_bad_input_is_one_line_naming_file_and_line_with_no_output(tmp_path, content, suffix, message):
    dets = tmp_path / f"dets{suffix}"
    dets.write_text(content)
    out = tmp_path / "out"
    result = invoke("track", dets, "--mot", out / "t.txt", "--jsonl", out / "t.jsonl")
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists() or not any(out.iterdir())


def test_missing_detections_file_is_an_error(tmp_path):
    result = invoke("track", tmp_path / "absent.jsonl")
    assert result.exit_code == 2 and "detections file not found" in result.output


def write_ground_truth(root, name: str, boxes):
    (root / name / "gt").mkdir(parents=True)
    (root / name / "gt" / "gt.txt").write_text("".join(f"{f + 1},{i},{x},{y},{w},{h},1,1,1\n"
                                                        for f, frame in enumerate(boxes) for i, x, y, w, h in frame))
    (root / name / "seqinfo.ini").write_text(f"[Sequence]\nname={name}\nframeRate=30\nseqLength={len(boxes)}\n"
                                             "imWidth=640\nimHeight=480\n")


def test_eval_reports_mota_and_idf1_of_a_known_sequence(tmp_path):
    """Both people are in all 10 frames of the ground truth; person 2 goes undetected in frames 5 and 6, so the
    track is lost there and found again with its id: 2 misses of 20 boxes, no false positive, no switch.
    MOTA = 1 - 2 / 20 = 0.9; IDF1 = 2 x 18 / (2 x 18 + 0 + 2) = 36 / 38."""
    write_ground_truth(tmp_path / "gt", "walk", people())
    dets = write_jsonl(tmp_path / "dets.jsonl", {"walk": people(missing=(4, 5))})
    result = invoke("track", dets, "--eval", tmp_path / "gt", "--json")
    assert result.exit_code == 0, result.output
    evaluation = json.loads(result.output)["evaluation"]
    metrics = evaluation["sequences"]["walk"]
    assert metrics["MOTA"] == pytest.approx(0.9) and metrics["IDF1"] == pytest.approx(36 / 38)
    assert (metrics["HOTA"] is None) == (evaluation["tool"] == "motmetrics")
    assert not (tmp_path / "runs").exists()


def test_eval_without_ground_truth_fails_before_any_output(tmp_path):
    dets = write_jsonl(tmp_path / "dets.jsonl", {"walk": people()})
    result = invoke("track", dets, "--eval", tmp_path / "nothing", "--mot", tmp_path / "t.txt")
    assert result.exit_code == 2 and "ground-truth folder not found" in result.output
    assert not (tmp_path / "t.txt").exists()
