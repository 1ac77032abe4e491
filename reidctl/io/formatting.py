"""Detection rows as MOT17 and JSON-lines text, formatted with NumPy for a whole frame at once.

Per row and value in Python (an f-string a row, ``round`` a value) a 2-core machine formats about 0.2 M rows/s, below
16 crowded cameras' rate (~250 k rows/s); here every value of a frame is turned into digits by array arithmetic and
the rows are joined as one byte matrix (``scripts/writer_bench.py`` measures both).

The text is the text Python's formatting gives: ``f"{v:.2f}"`` rounds the exact binary value half to even, and so
does ``np.rint`` on ``|v| * 10**decimals``, a product that is exact for float32 values (24 + 17 bits fit a double's
53). A frame holding a value where the product may not be exact (float64 rows near a rounding tie, values past 2**53
once scaled, NaN or infinity) is formatted in Python instead, value by value.
"""

from __future__ import annotations

import functools
import json

import numpy as np

PAD = 0  # a byte that marks no character: each row is built at a fixed width, then every PAD byte is removed
EXACT_LIMIT = 2.0**53  # scaled values below it are integers a double holds exactly
MINUS, POINT = ord("-"), ord(".")


def _pair_table(text) -> np.ndarray:
    """Two characters per number 0..99 as one uint16 each (memory order kept), PAD where ``text`` gives a space."""
    return np.frombuffer("".join(text(i) for i in range(100)).replace(" ", chr(PAD)).encode(), dtype=np.uint16)


# Two digits are made at a time, by table: each pair of digit places reads the table that suits it, 100 entries each.
FULL, TRIMMED, LEADING, LEADING_UNITS = 0, 100, 200, 300
PAIR_TABLES = np.concatenate([
    _pair_table(lambda i: f"{i:02d}"),  # FULL: every digit
    _pair_table(lambda i: f"{i:02d}".rstrip("0").ljust(2)),  # TRIMMED: fraction digits with only zeros below them
    _pair_table(lambda i: f"{i:2d}" if i else "  "),  # LEADING: places above the number's first digit are empty
    _pair_table(lambda i: f"{i:2d}"),  # LEADING_UNITS: the same, but the lower place is the units digit: kept
])


@functools.lru_cache(maxsize=256)
def _text_block(text: tuple[str, ...], width: int) -> np.ndarray:
    """Per column, its text as characters (C, width), PAD-filled."""
    padded = [list(t.encode().ljust(width, bytes([PAD]))) for t in text]
    return np.array(padded, dtype=np.uint8).reshape(len(text), width)


POINT_PAIR = np.frombuffer(bytes([POINT, PAD]), dtype=np.uint16)[0]


def _number_columns(values: np.ndarray, decimals: int, before: tuple[str, ...], after: tuple[str, ...],
                    trim_zeros: bool = False) -> np.ndarray | None:
    """(N, C) numbers -> (N, C * W) uint8 characters: per column ``before[c]``, ``f"{v:.{decimals}f}"``, ``after[c]``,
    with PAD bytes in between.

    ``trim_zeros`` drops trailing zeros of the fraction, keeping one digit ("1.5", "2.0"): the same number, shorter.
    None where some value cannot be formatted exactly here (the module docstring says when).
    """
    scaled = np.abs(values.astype(np.float64)) * 10.0**decimals
    if not (scaled < EXACT_LIMIT).all():  # NaN compares false too
        return None
    if values.dtype.itemsize > 4 or values.dtype.kind not in "fiu":
        # The product was rounded: a value whose fraction lies within that rounding of .5 may round either way.
        fraction = scaled - np.floor(scaled)
        if (np.abs(fraction - 0.5) <= np.spacing(scaled)).any():
            return None
    whole = np.rint(scaled)
    largest = int(whole.max()) if whole.size else 0
    whole = whole.astype(np.int32 if largest < 2**31 else np.int64)  # int32 divides faster
    unit = 10**decimals
    integer = whole // unit
    integer_pairs, fraction_pairs = (len(str(largest // unit)) + 1) // 2, (decimals + 1) // 2
    # Per value: prefix, sign | integer digits | point, PAD | fraction digits | suffix: the digits start at even
    # offsets, so that each pair is written as one uint16.
    prefix_width = max(map(len, before)) | 1
    suffix_width = max(map(len, after))
    suffix_width += (prefix_width + 3 + suffix_width) % 2
    integer_at = (prefix_width + 1) // 2
    point_at = integer_at + integer_pairs
    suffix_at = 2 * (point_at + 1 + fraction_pairs)
    rows, columns = values.shape
    out = np.empty((rows, columns, suffix_at + suffix_width), dtype=np.uint8)
    out[..., :prefix_width] = _text_block(before, prefix_width)
    out[..., prefix_width] = np.signbit(values) * np.uint8(MINUS)
    out[..., suffix_at:] = _text_block(after, suffix_width)
    pairs = out.view(np.uint16)
    pairs[..., point_at] = POINT_PAIR
    rest = integer
    for place in range(integer_pairs):  # from the units up: an empty place above the number's first digit
        higher = rest // 100
        empty = LEADING_UNITS if place == 0 else LEADING
        pairs[..., point_at - 1 - place] = PAIR_TABLES[rest - higher * 100 + np.where(higher == 0, empty, FULL)]
        rest = higher
    rest = whole - integer * unit
    only_zeros_below = True
    for place in range(fraction_pairs):  # from the last decimal up
        higher = rest // 100
        pair = rest - higher * 100
        if 2 * place + 1 == decimals:  # an odd count of decimals: this pair's upper place is empty
            table = pair + LEADING_UNITS
        elif trim_zeros and 2 * place + 1 < decimals - 1:  # both places lie past the first decimal
            table = pair + TRIMMED * only_zeros_below
            only_zeros_below = only_zeros_below & (pair == 0)
        else:
            table = pair
        pairs[..., point_at + fraction_pairs - place] = PAIR_TABLES[table]
        rest = higher
    return out.reshape(rows, -1)


def _join(columns: list[np.ndarray]) -> bytes:
    """(N, *) character blocks side by side, row by row, without their PAD bytes."""
    matrix = columns[0] if len(columns) == 1 else np.concatenate(columns, axis=1)
    return matrix.tobytes().translate(None, bytes([PAD]))  # faster than a boolean mask


def _boxes_and_scores(detections: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x, y, w, h) and obj x class, computed in the rows' own dtype as the per-row formatting does."""
    x1, y1, x2, y2, obj, cls = (detections[:, i] for i in range(6))
    return np.stack([x1, y1, x2 - x1, y2 - y1], axis=1), (obj * cls)[:, None]


def _split(matrix: np.ndarray, counts: list[int]) -> list[bytes]:
    """A character matrix of several frames' rows -> each frame's text, without PAD bytes."""
    ends = np.cumsum(counts)
    return [matrix[end - count:end].tobytes().translate(None, bytes([PAD])) for count, end in zip(counts, ends)]


def mot_texts(frames: list[tuple[int, np.ndarray]]) -> list[bytes]:
    """``mot_text`` of several frames (a step's cameras), their rows turned into digits in one pass: the array
    operations' fixed cost is paid once per step, not once per frame."""
    counts = [len(detections) for _, detections in frames]
    if not sum(counts):
        return [b""] * len(frames)
    rows = np.concatenate([detections for _, detections in frames])
    boxes, scores = _boxes_and_scores(rows)
    box_text = _number_columns(boxes, 2, ("",) * 4, (",",) * 4)
    score_text = _number_columns(scores, 5, ("",), (",-1,-1,-1\n",))
    if box_text is None or score_text is None:
        return [mot_text_per_value(index, detections) for index, detections in frames]
    prefix_text = tuple(f"{index + 1},-1," for index, _ in frames)
    prefixes = _text_block(prefix_text, max(map(len, prefix_text)))
    matrix = np.concatenate([np.repeat(prefixes, counts, axis=0), box_text, score_text], axis=1)
    return _split(matrix, counts)


def mot_text(frame_index: int, detections: np.ndarray) -> bytes:
    """MOT17 rows ``frame,-1,x,y,w,h,score,-1,-1,-1`` of one frame (1-based frame number, score = obj x class)."""
    return mot_texts([(frame_index, detections)])[0]


def mot_text_per_value(frame_index: int, detections: np.ndarray) -> bytes:
    """``mot_text`` value by value in Python: where the arrays cannot be exact, and the reference measured."""
    return "".join(f"{frame_index + 1},-1,{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},{obj * cls:.5f},-1,-1,-1\n"
                   for x1, y1, x2, y2, obj, cls, _ in detections).encode()


def jsonl_texts(frames: list[tuple[str, int, str, np.ndarray]]) -> list[bytes]:
    """``jsonl_text`` of several frames, their rows turned into digits in one pass (as ``mot_texts``)."""
    counts = [len(detections) if detections.ndim == 2 else 0 for *_, detections in frames]
    columns = {detections.shape[1] for *_, detections in frames if len(detections) and detections.ndim == 2}
    rows = None
    if sum(counts) and len(columns) == 1:
        (width,) = columns
        rows = _number_columns(np.concatenate([d for *_, d in frames if len(d)]), 5, ("[",) + ("",) * (width - 1),
                               (", ",) * (width - 1) + ("], ",), trim_zeros=True)  # fmt: skip
    if rows is None:
        return [jsonl_text_per_value(*frame) for frame in frames]
    texts = _split(rows, counts)
    return [
        (json.dumps({"camera": camera, "frame": index, "name": name})[:-1] + ', "detections": [').encode()
        + text[:-2] + b"]}\n"  # the last row ends "]" instead of "], "
        if count else jsonl_text_per_value(camera, index, name, detections)
        for (camera, index, name, detections), text, count in zip(frames, texts, counts)
    ]


def jsonl_text(camera: str, frame_index: int, name: str, detections: np.ndarray) -> bytes:
    """One JSON line: camera, 0-based frame, name and the (N, 7) rows, each value rounded to 5 decimals."""
    return jsonl_texts([(camera, frame_index, name, detections)])[0]


def jsonl_text_per_value(camera: str, frame_index: int, name: str, detections: np.ndarray) -> bytes:
    """``jsonl_text`` value by value in Python: where the arrays cannot be exact, and the reference measured."""
    rows = [[round(float(v), 5) for v in row] for row in detections]
    return (json.dumps({"camera": camera, "frame": frame_index, "name": name, "detections": rows}) + "\n").encode()


def track_rows(tracks: np.ndarray) -> list[list]:
    """(M, 6) tracks as JSON rows [id, x, y, w, h, score]: an integer id, values rounded to 5 decimals."""
    return [[int(row[0]), *row[1:]] for row in np.round(tracks, 5).tolist()]
