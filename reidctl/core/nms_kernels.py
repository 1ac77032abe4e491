"""Exact greedy NMS for a whole batch on the GPU, every frame at once, with no host round trip.

``torchvision.ops.nms`` walks its suppression mask one box at a time in a single thread block: 8,400 sequential
steps for a YOLOX frame whose every anchor passes the threshold, and ``batched_nms`` loops over groups in Python
above 5,000 boxes. Here the work is split in two Triton-language kernels over the dense (frames, anchors) layout:

1. ``_suppression_mask_kernel``: for each frame, in 64x64 tiles of score-sorted candidates, bit j of word
   ``mask[b, i, j // 64]`` says that candidate i suppresses candidate j (j after i, same class, IoU > threshold).
   Only the upper triangle of tiles within the frame's candidate count is computed, and a summary bit records
   which tiles suppress anything at all.
2. ``_greedy_scan_kernel``: one program per frame walks the candidates 64 at a time: the block's word of removed
   bits, the greedy within the block (a fixed point over the diagonal tile, vectorised), then the kept rows' mask
   words are OR-ed into the removed words of the later blocks, skipping the tiles the summary marks empty.
   The sequential part is A/64 blocks, not A boxes.

The result equals ``torchvision.ops.batched_nms`` (IoU = inter / (area_a + area_b - inter), no +1, suppression
when IoU > threshold) with frames as separate groups, up to the order of exactly tied scores (ties are broken by
anchor index). Memory: the mask holds frames x ceil(A/64)*64 x ceil(A/64) int64 words, 71 MB for 8 frames of
8,400 anchors (YOLOX at 640x640).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import triton
import triton.language as tl

WORD_BITS = 64  # candidates per tile side and bits per mask word
SCAN_CHUNK = 128  # mask words OR-ed at once by the scan: all later blocks of a 640x640 frame but the last 4
MASK_WARPS = 4  # warps per mask-kernel program
SCAN_WARPS = 8  # warps of the one scan program per frame
# Programs of the mask kernel: 8 for each of a Hopper GPU's 132 multiprocessors, so that every multiprocessor has
# work at once; each program loops over its share of tiles.
PROGRAMS_PER_BATCH = 132 * 8


@dataclass(frozen=True)
class BatchKeep:
    """Greedy NMS of a batch, on the device of its input.

    ``order[b]``: frame b's anchor indices by descending score (ties by index); ``keep[b, p]``: whether the anchor
    at sorted position p survives (False past the candidates); ``candidates[b]``: anchors scored at or above the
    threshold, before NMS.
    """

    order: torch.Tensor  # (B, A) int64
    keep: torch.Tensor  # (B, A) bool
    candidates: torch.Tensor  # (B,) int32


def batched_greedy_nms(
    boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, score_threshold: float, iou_threshold: float
) -> BatchKeep:
    """Class-aware greedy NMS of (B, A, 4) x1y1x2y2 boxes, (B, A) scores and class ids, per frame.

    Anchors scored below ``score_threshold`` are not candidates. Runs on CUDA tensors (or on CPU tensors when
    the Triton language's interpreter is enabled with TRITON_INTERPRET=1).
    """
    batch, anchors = scores.shape
    device = scores.device
    candidate = scores >= score_threshold
    candidates = candidate.sum(dim=1, dtype=torch.int32)
    order = torch.sort(torch.where(candidate, scores.float(), -1.0), dim=1, descending=True, stable=True).indices
    sorted_boxes = torch.gather(boxes.float(), 1, order[..., None].expand(-1, -1, 4)).contiguous()
    sorted_classes = torch.gather(classes.to(torch.int32), 1, order)
    words = triton.cdiv(max(anchors, 1), WORD_BITS)
    # Rows padded to whole tiles so that the last tile needs no row bounds; unread entries stay uninitialised.
    mask = torch.empty((batch, words * WORD_BITS, words), dtype=torch.int64, device=device)
    removed = torch.zeros((batch, words), dtype=torch.int64, device=device)
    keep = torch.zeros((batch, anchors), dtype=torch.uint8, device=device)
    # Bit c of word c // 64 of a row block's summary: its tile in column block c suppresses something.
    summary_words = triton.cdiv(words, WORD_BITS)
    nonzero_tiles = torch.zeros((batch, words, summary_words), dtype=torch.int64, device=device)
    if batch and anchors:
        programs = max(1, min(words * (words + 1) // 2, triton.cdiv(PROGRAMS_PER_BATCH, batch)))
        _suppression_mask_kernel[(programs, batch)](
            sorted_boxes, sorted_classes, candidates, mask, nonzero_tiles, anchors, words, summary_words,
            float(np.float32(iou_threshold)), BLOCK=WORD_BITS, num_warps=MASK_WARPS,
        )
        _greedy_scan_kernel[(batch,)](
            mask, nonzero_tiles, removed, keep, candidates, anchors, words, summary_words,
            BLOCK=WORD_BITS, CHUNK=SCAN_CHUNK, num_warps=SCAN_WARPS,
        )
    return BatchKeep(order, keep.view(torch.bool), candidates)


@triton.jit
def _bit_or(a, b):
    return a | b


@triton.jit
def _suppression_mask_kernel(
    boxes_ptr, classes_ptr, count_ptr, mask_ptr, nonzero_ptr, anchors, words, summary_words, threshold,
    BLOCK: tl.constexpr,
):
    program = tl.program_id(0)
    programs = tl.num_programs(0)
    frame = tl.program_id(1)
    count = tl.load(count_ptr + frame)
    blocks = (count + BLOCK - 1) // BLOCK
    box_base = boxes_ptr + frame.to(tl.int64) * anchors * 4
    class_base = classes_ptr + frame.to(tl.int64) * anchors
    mask_frame = mask_ptr + frame.to(tl.int64) * words * BLOCK * words
    offsets = tl.arange(0, BLOCK)
    # Each 64-bit word is built from two 32-bit halves: 64-bit integer arithmetic costs the GPU twice the work.
    half_bit = tl.full((BLOCK,), 1, tl.int32) << (offsets % 32)
    # Upper-triangle tiles (column block >= row block) of the frame's candidates only, in row-major order.
    span = 2 * blocks + 1
    for tile in range(program, blocks * (blocks + 1) // 2, programs):
        row_block = ((span - tl.sqrt((span * span - 8 * tile).to(tl.float32))) / 2).to(tl.int32)
        row_block = tl.where(row_block * span - row_block * row_block > 2 * tile, row_block - 1, row_block)
        next_row = row_block + 1
        row_block = tl.where(next_row * span - next_row * next_row <= 2 * tile, next_row, row_block)
        col_block = row_block + tile - (row_block * span - row_block * row_block) // 2
        rows = row_block * BLOCK + offsets
        cols = col_block * BLOCK + offsets
        row_in = rows < count
        col_in = cols < count
        rx1 = tl.load(box_base + rows * 4 + 0, mask=row_in, other=0.0)
        ry1 = tl.load(box_base + rows * 4 + 1, mask=row_in, other=0.0)
        rx2 = tl.load(box_base + rows * 4 + 2, mask=row_in, other=0.0)
        ry2 = tl.load(box_base + rows * 4 + 3, mask=row_in, other=0.0)
        cx1 = tl.load(box_base + cols * 4 + 0, mask=col_in, other=0.0)
        cy1 = tl.load(box_base + cols * 4 + 1, mask=col_in, other=0.0)
        cx2 = tl.load(box_base + cols * 4 + 2, mask=col_in, other=0.0)
        cy2 = tl.load(box_base + cols * 4 + 3, mask=col_in, other=0.0)
        row_class = tl.load(class_base + rows, mask=row_in, other=-1)
        col_class = tl.load(class_base + cols, mask=col_in, other=-2)

        # torchvision's formula: clamped intersection over (area_a + area_b - intersection), no +1.
        width = tl.maximum(tl.minimum(rx2[:, None], cx2[None, :]) - tl.maximum(rx1[:, None], cx1[None, :]), 0.0)
        height = tl.maximum(tl.minimum(ry2[:, None], cy2[None, :]) - tl.maximum(ry1[:, None], cy1[None, :]), 0.0)
        inter = width * height
        row_area = (rx2 - rx1) * (ry2 - ry1)
        col_area = (cx2 - cx1) * (cy2 - cy1)
        union = row_area[:, None] + col_area[None, :] - inter
        # torchvision's CUDA test is float(inter / union) > float(threshold). Away from the threshold a product
        # decides it (rounding moves the margin by under union * 2.4e-7); the few pairs near it, and degenerate
        # boxes, get the correctly rounded division, computed only for tiles that hold such a pair.
        margin = inter - union * threshold
        over = margin > 0
        near = (tl.abs(margin) <= union * 1e-6) | (union <= 0)
        if tl.max(near.to(tl.int32)) != 0:
            over = tl.where(near, tl.div_rn(inter, union) > threshold, over)
        suppress = over & (row_class[:, None] == col_class[None, :])
        suppress = suppress & (cols[None, :] > rows[:, None]) & col_in[None, :]
        halves = tl.sum(tl.reshape(tl.where(suppress, half_bit[None, :], 0), (BLOCK, 2, BLOCK // 2)), 2)
        low, high = tl.split(halves)  # distinct bits: each sum is their OR
        row_words = (low.to(tl.int64) & 0xFFFFFFFF) | (high.to(tl.int64) << 32)
        tl.store(mask_frame + rows * words + col_block, row_words)
        # Most tiles of a real frame suppress nothing: the scan skips them.
        suppresses = tl.max((row_words != 0).to(tl.int32), 0) != 0
        summary = nonzero_ptr + (frame.to(tl.int64) * words + row_block) * summary_words + col_block // BLOCK
        tl.atomic_or(summary, tl.full((), 1, tl.int64) << (col_block % BLOCK).to(tl.int64), mask=suppresses)


@triton.jit
def _greedy_scan_kernel(
    mask_ptr, nonzero_ptr, removed_ptr, keep_ptr, count_ptr, anchors, words, summary_words,
    BLOCK: tl.constexpr, CHUNK: tl.constexpr,
):
    frame = tl.program_id(0)
    count = tl.load(count_ptr + frame)
    blocks = (count + BLOCK - 1) // BLOCK
    mask_frame = mask_ptr + frame.to(tl.int64) * words * BLOCK * words  # within a frame int32 offsets suffice
    removed_frame = removed_ptr + frame * words
    offsets = tl.arange(0, BLOCK)
    bit = tl.full((BLOCK,), 1, tl.int64) << offsets.to(tl.int64)
    nonzero_frame = nonzero_ptr + frame.to(tl.int64) * words * summary_words
    for block in range(blocks):
        positions = block * BLOCK + offsets
        rows = mask_frame + positions * words
        nonzero_row = nonzero_frame + block * summary_words
        # Issued first: the block's next mask words do not depend on the greedy below.
        cols = block + 1 + tl.arange(0, CHUNK)
        needed = _suppressing_tiles(nonzero_row, cols, blocks, BLOCK)
        ahead = tl.load(rows[:, None] + cols[None, :], mask=needed[None, :], other=0)
        diagonal = tl.load(rows + block)
        # Written by the earlier blocks' OR step (the barrier below orders it before this load).
        removed = tl.load(removed_frame + block, volatile=True)
        # Greedy within the block as a fixed point: a row is kept when no kept earlier row of the block
        # suppresses it. Row k is final after k + 1 rounds, and a fixed point is the greedy result, so this
        # ends after (longest suppression chain + 1) rounds instead of always 64 sequential steps.
        kept = ~removed
        changed = True
        while changed:
            hits = tl.reduce(tl.where((kept & bit) != 0, diagonal, 0), 0, _bit_or)
            now = ~(removed | hits)
            changed = now != kept
            kept = now
        tl.store(removed_frame + block, ~kept)
        kept_rows = (kept & bit) != 0
        tl.store(keep_ptr + frame.to(tl.int64) * anchors + positions, kept_rows.to(tl.uint8),
                 mask=positions < count)
        hits = tl.reduce(tl.where(kept_rows[:, None], ahead, 0), 0, _bit_or)
        _or_into(removed_frame + cols, hits)
        for first in range(block + 1 + CHUNK, blocks, CHUNK):
            cols = first + tl.arange(0, CHUNK)
            needed = _suppressing_tiles(nonzero_row, cols, blocks, BLOCK)
            tile = tl.load(rows[:, None] + cols[None, :], mask=kept_rows[:, None] & needed[None, :], other=0)
            _or_into(removed_frame + cols, tl.reduce(tile, 0, _bit_or))
        tl.debug_barrier()


@triton.jit
def _suppressing_tiles(nonzero_row, cols, blocks, BLOCK: tl.constexpr):
    """Which of the column blocks ``cols`` (before ``blocks``) hold a tile of this row block with any bit set."""
    inside = cols < blocks
    summary = tl.load(nonzero_row + cols // BLOCK, mask=inside, other=0)
    return inside & (((summary >> (cols % BLOCK).to(tl.int64)) & 1) != 0)


@triton.jit
def _or_into(pointers, bits):
    """removed[pointers] |= bits, touching only the words that gain bits."""
    gains = bits != 0
    earlier = tl.load(pointers, mask=gains, other=0, volatile=True)
    tl.store(pointers, earlier | bits, mask=gains)
