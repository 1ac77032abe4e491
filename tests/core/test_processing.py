"""Shared pre/post-processing against independent NumPy implementations of ByteTrack's formulas."""

import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from helpers import needs_gpu
from reidctl.core.device import PinnedStaging
from reidctl.core.frames import rescale
from reidctl.core.postprocess import select_detections
from reidctl.core.preprocess import bilinear_resize, letterbox, letterbox_frame, letterbox_into, normalize
from reidctl.errors import ReidctlError


def numpy_bilinear(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Half-pixel-centre bilinear resize (what cv2.INTER_LINEAR computes), in float64."""
    in_h, in_w = image.shape[:2]

    def axis(out_n, in_n):
        src = np.maximum((np.arange(out_n) + 0.5) * (in_n / out_n) - 0.5, 0.0)
        lo = np.minimum(np.floor(src).astype(int), in_n - 1)
        hi = np.minimum(lo + 1, in_n - 1)
        return lo, hi, src - lo

    y0, y1, wy = axis(out_h, in_h)
    x0, x1, wx = axis(out_w, in_w)
    img = image.astype(np.float64)
    top = img[y0][:, x0] * (1 - wx)[None, :, None] + img[y0][:, x1] * wx[None, :, None]
    bottom = img[y1][:, x0] * (1 - wx)[None, :, None] + img[y1][:, x1] * wx[None, :, None]
    return top * (1 - wy)[:, None, None] + bottom * wy[:, None, None]


def bytetrack_preproc(image: np.ndarray, test_size) -> np.ndarray:
    """ByteTrack's formula: letterbox with 114, BGR->RGB, /255, -mean, /std, CHW."""
    ratio = min(test_size[0] / image.shape[0], test_size[1] / image.shape[1])
    new_h, new_w = int(image.shape[0] * ratio), int(image.shape[1] * ratio)
    padded = np.full((*test_size, 3), 114.0)
    padded[:new_h, :new_w] = np.clip(np.round(numpy_bilinear(image, new_h, new_w)), 0, 255)
    rgb = padded[:, :, ::-1] / 255.0
    return ((rgb - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])).transpose(2, 0, 1)


@pytest.mark.parametrize("shape", [(37, 53), (101, 67), (480, 853), (96, 128), (17, 300)])
def test_preprocessing_matches_bytetrack_formula(shape):
    rng = np.random.default_rng(shape[0])
    frame = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    test_size = (96, 128)
    canvas, ratios = letterbox([frame], test_size)
    assert canvas.dtype == torch.uint8 and canvas.shape == (1, 96, 128, 3)
    assert ratios[0] == pytest.approx(min(96 / shape[0], 128 / shape[1]))
    ours = normalize(canvas)[0].numpy()
    expected = bytetrack_preproc(frame, test_size)
    # One uint8 rounding step is 1/255/std ~ 0.018 after normalisation.
    assert np.abs(ours - expected).max() <= 0.0176
    new_h, new_w = int(shape[0] * ratios[0]), int(shape[1] * ratios[0])
    assert (canvas[0, new_h:].numpy() == 114).all() and (canvas[0, :, new_w:].numpy() == 114).all()


def test_one_frame_letterbox_is_the_batch_letterbox_and_repaints_a_reused_canvas():
    """Camera readers letterbox frame by frame: the same canvas as the batch's, even into a canvas already used."""
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8) for shape in [(240, 320), (100, 90), (96, 128)]]
    batch, ratios = letterbox(frames, (96, 128))
    reused = np.zeros((96, 128, 3), dtype=np.uint8)
    for frame, canvas, ratio in zip(frames, batch.numpy(), ratios):
        single, single_ratio = letterbox_frame(frame, (96, 128))
        assert single_ratio == ratio and np.array_equal(single, canvas)
        assert letterbox_into(frame, reused) == ratio and np.array_equal(reused, canvas)


@pytest.mark.parametrize("shape", [(333, 517), (60, 70)])
def test_device_resize_matches_opencv(shape):
    """The GPU path's resize (run here on CPU tensors) against cv2.resize, which the host path calls."""
    frame = np.random.default_rng(1).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    ratio = min(128 / shape[0], 160 / shape[1])
    new_h, new_w = int(shape[0] * ratio), int(shape[1] * ratio)
    ours = bilinear_resize(torch.from_numpy(frame), (new_h, new_w)).numpy()
    reference = cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    assert ours.shape == reference.shape
    assert np.abs(ours.astype(int) - reference.astype(int)).max() <= 1


def prediction(cx, cy, w, h, obj, classes):
    return [cx, cy, w, h, obj, *classes]


def test_selection_threshold_nms_classes_and_rescale():
    preds = torch.tensor(
        [
            [
                prediction(50, 50, 20, 40, 0.9, [0.9, 0.1]),  # best box, class 0
                prediction(51, 50, 20, 40, 0.8, [0.9, 0.1]),  # overlaps the best, same class: suppressed
                prediction(51, 51, 20, 40, 0.8, [0.1, 0.95]),  # same place, other class: kept
                prediction(150, 80, 10, 10, 0.5, [0.5, 0.1]),  # elsewhere: kept
                prediction(10, 10, 10, 10, 0.05, [0.1, 0.1]),  # score 0.005 < 0.01: dropped
            ]
        ]
    )
    selection = select_detections(preds, conf_threshold=0.01, nms_threshold=0.7)
    assert selection.candidates == [4] and selection.kept == [3]
    (dets,) = rescale(selection.rows, [0.5])
    assert dets.dtype == np.float32 and dets.shape == (3, 7)
    np.testing.assert_allclose(dets[0], [80, 60, 120, 140, 0.9, 0.9, 0], rtol=1e-6)  # back in frame pixels (/0.5)
    assert sorted(dets[:, 6].tolist()) == [0, 0, 1]
    np.testing.assert_allclose(dets[:, 4] * dets[:, 5], sorted(dets[:, 4] * dets[:, 5], reverse=True))


def test_selection_keeps_frames_apart():
    box = prediction(50, 50, 20, 40, 0.9, [0.9])
    preds = torch.tensor([[box], [box], [prediction(5, 5, 2, 2, 0.001, [0.5])]])
    selection = select_detections(preds, 0.01, 0.7)
    assert selection.candidates == [1, 1, 0]
    dets = rescale(selection.rows, [1.0, 2.0, 1.0])
    assert [len(d) for d in dets] == [1, 1, 0]
    np.testing.assert_allclose(dets[1][0, :4], dets[0][0, :4] / 2)
    assert dets[2].shape == (0, 7)


def test_selection_groups_rows_by_frame_when_scores_interleave():
    """torchvision orders a batch's kept boxes by score across frames; each frame must still get its own rows."""
    frames = [[prediction(20 + 40 * i, 20, 10, 10, score, [1.0]) for i, score in enumerate(scores)]
              for scores in ([0.9, 0.5, 0.3], [0.8, 0.6], [0.7, 0.4, 0.2, 0.1])]
    preds = torch.full((3, 4, 6), 0.0)
    for frame, rows in enumerate(frames):
        preds[frame, : len(rows)] = torch.tensor(rows)
    selection = select_detections(preds, 0.05, 0.7)
    assert selection.candidates == [3, 2, 4] and selection.kept == [3, 2, 4]
    for rows, expected in zip(selection.rows, frames):
        np.testing.assert_allclose(rows[:, 4], [row[4] for row in expected])  # this frame's, by descending score


def test_detector_counts_candidates_and_kept_per_frame(small_config, frames):
    from reidctl.config import load_config
    from reidctl.core.detector import create_detector

    with create_detector(load_config(small_config)) as detector:
        first = detector.detect_batch(frames[:3])
        second = detector.detect(frames[3])
        load = detector.load
    kept = sum(len(rows) for rows in first) + len(second)
    assert load.frames == 4 and load.kept == kept and kept > 0
    assert load.candidates >= kept and load.candidates_per_frame == load.candidates / 4
    assert load.kept_per_frame == kept / 4


def test_detect_canvases_refuses_canvases_of_another_size(small_config, frames):
    from reidctl.config import load_config
    from reidctl.core.detector import create_detector

    with create_detector(load_config(small_config)) as detector:
        assert detector.input_size == (128, 160)  # the config's test_size
        canvas, ratio = letterbox_frame(frames[0], (64, 64))
        with pytest.raises(ReidctlError, match="canvases must be uint8 128x160x3"):
            detector.detect_canvases([canvas], [ratio])


@needs_gpu  # the pinned staging buffer and CUDA graphs exist only there
def test_pinned_staging_buffer_reused_across_batches_on_gpu(tmp_path, nano_checkpoint, frames):
    """Batches of growing and shrinking size through one reused pinned buffer and the CUDA graphs: each batch gives
    what detect_batch gives on the same canvases (already the input size, so it copies them as they are)."""
    from helpers import write_config
    from reidctl.config import load_config
    from reidctl.core.detector import create_detector

    # One Detector: its own staging buffer is what is checked.
    config = load_config(write_config(tmp_path / "gpu.yaml", nano_checkpoint, device="cuda", fp16=False,
                                      batches_in_flight=1))
    canvases = [letterbox_frame(frame, (128, 160))[0] for frame in frames]
    with create_detector(config) as detector:
        for start, size in [(0, 3), (3, 2), (5, 6), (1, 4), (2, 6)]:
            batch = canvases[start:start + size]
            got = detector.detect_canvases(batch, [1.0] * size)
            expected = detector.detect_batch(batch)
            assert [len(rows) for rows in got] == [len(rows) for rows in expected]
            for ours, theirs in zip(got, expected):
                np.testing.assert_array_equal(ours, theirs)
        (buffer,) = detector._staging.buffers
        assert buffer.is_pinned() and len(buffer) == 6  # grown twice: from 1 to 3, then 6


@needs_gpu  # pinned memory
def test_pinned_staging_takes_its_buffers_in_turn_and_each_copy_is_whole():
    """The Triton model's use: two buffers, requests of several frames joined into each batch."""
    device = torch.device("cuda", 0)
    staging = PinnedStaging((4, 5, 3), device, frames=2, buffers=2)
    batches = [torch.randint(0, 256, (frames, 4, 5, 3), dtype=torch.uint8) for frames in (2, 1, 2, 3)]
    # The third batch refills the first buffer, the fourth grows the second: earlier copies keep their frames.
    copies = [staging.to_device(len(batch), lambda slots, b=batch: torch.cat([b[:1], b[1:]], out=slots))
              for batch in batches]
    for batch, (on_device, copied) in zip(batches, copies):
        copied.synchronize()
        assert on_device.device == device and torch.equal(on_device.cpu(), batch)
    assert [len(buffer) for buffer in staging.buffers] == [2, 4] and all(b.is_pinned() for b in staging.buffers)


def test_detects_engine_loads_torchvision_only_for_its_nms():
    """A GPU's NMS kernels and a server's NMS never need torchvision, whose import takes seconds: importing detect's
    engine leaves it out, and NMS on the CPU brings it in."""
    probe = ("import sys, torch, reidctl.apps.pipeline as p; before = 'torchvision' in sys.modules; "
             "from reidctl.core.postprocess import select_detections; "
             "select_detections(torch.rand(1, 8, 6), 0.1, 0.5); print(before, 'torchvision' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False", "True"], done.stderr[-2000:]

