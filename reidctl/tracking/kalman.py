"""ByteTrack's constant-velocity Kalman filter on (cx, cy, aspect, h), for all tracks of a camera at once.

State: (cx, cy, a, h, vcx, vcy, va, vh); the noise is scaled by the height, as in ByteTrack (after DeepSORT).
Each function takes (n, 8) means and (n, 8, 8) covariances and does ByteTrack's float64 operations. The four
dimensions never mix (per-dimension motion, diagonal noise), so every covariance keeps exact zeros outside each
dimension's (position, velocity) pair: each matrix product has one non-zero term per entry, and the innovation
covariance is diagonal, so ByteTrack's Cholesky solve is two multiplications by 1 / sqrt of its diagonal (as
LAPACK does it). The results are those of ByteTrack's filter bit for bit.
"""

from __future__ import annotations

import numpy as np

STD_POSITION = 1.0 / 20
STD_VELOCITY = 1.0 / 160
# Standard deviations are height x weight + constant (the aspect ratio's are constants): ByteTrack's values exactly,
# since h x 0 + c == c and h x w + 0 == h x w.
_INITIATE_WEIGHT = np.array([2 * STD_POSITION] * 2 + [0, 2 * STD_POSITION] + [10 * STD_VELOCITY] * 2
                            + [0, 10 * STD_VELOCITY])
_INITIATE_CONSTANT = np.array([0, 0, 1e-2, 0, 0, 0, 1e-5, 0])
_PREDICT_WEIGHT = np.array([STD_POSITION] * 2 + [0, STD_POSITION] + [STD_VELOCITY] * 2 + [0, STD_VELOCITY])
_PREDICT_CONSTANT = _INITIATE_CONSTANT
_MEASURE_WEIGHT = np.array([STD_POSITION, STD_POSITION, 0, STD_POSITION])
_MEASURE_CONSTANT = np.array([0, 0, 1e-1, 0])
_DIAGONAL_8 = slice(None, None, 9)  # the diagonal of a flattened 8x8 matrix
_POSITION_DIAGONAL = [0, 9, 18, 27]  # (i, i) for i < 4 in a flattened 8x8 matrix


def _variance(height: np.ndarray, weight: np.ndarray, constant: np.ndarray) -> np.ndarray:
    return np.square(height[:, None] * weight + constant)


def tlwh_to_xyah(tlwh: np.ndarray) -> np.ndarray:
    """(n, 4) boxes (left, top, width, height) -> (cx, cy, width / height, height)."""
    xyah = tlwh.copy()
    xyah[:, :2] += xyah[:, 2:] / 2
    xyah[:, 2] /= xyah[:, 3]
    return xyah


def mean_to_tlwh(mean: np.ndarray) -> np.ndarray:
    """(n, 8) states -> (n, 4) boxes (left, top, width, height)."""
    tlwh = mean[:, :4].copy()
    tlwh[:, 2] *= tlwh[:, 3]
    tlwh[:, :2] -= tlwh[:, 2:] / 2
    return tlwh


def initiate(xyah: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """New tracks from (n, 4) measurements: zero velocity, uncertainty proportional to the height."""
    n = len(xyah)
    mean = np.zeros((n, 8))
    mean[:, :4] = xyah
    covariance = np.zeros((n, 8, 8))
    covariance.reshape(n, 64)[:, _DIAGONAL_8] = _variance(xyah[:, 3], _INITIATE_WEIGHT, _INITIATE_CONSTANT)
    return mean, covariance


def predict(mean: np.ndarray, covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One frame ahead: x += v; P = F P F^T + Q(h)."""
    variance = _variance(mean[:, 3], _PREDICT_WEIGHT, _PREDICT_CONSTANT)
    mean = mean.copy()
    mean[:, :4] += mean[:, 4:]
    # F P: position rows gain the velocity rows; (F P) F^T: position columns gain the velocity columns.
    rows = covariance.copy()
    rows[:, :4, :] += covariance[:, 4:, :]
    predicted = rows.copy()
    predicted[:, :, :4] += rows[:, :, 4:]
    predicted.reshape(len(mean), 64)[:, _DIAGONAL_8] += variance
    return mean, predicted


def update(mean: np.ndarray, covariance: np.ndarray, xyah: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Correct (n, 8) states with (n, 4) measurements (x, y, a, h)."""
    n = len(mean)
    # Innovation covariance S = H P H^T + R: diagonal (see the module's docstring).
    innovation_variance = covariance.reshape(n, 64)[:, _POSITION_DIAGONAL] + _variance(
        mean[:, 3], _MEASURE_WEIGHT, _MEASURE_CONSTANT
    )
    # Gain K = P H^T S^-1, solved as ByteTrack's Cholesky solve does: forward, then back substitution.
    inverse_root = (1 / np.sqrt(innovation_variance))[:, :, None]
    gain_t = np.swapaxes(covariance[:, :, :4], 1, 2) * inverse_root * inverse_root
    innovation = xyah - mean[:, :4]
    new_mean = mean + (innovation[:, None, :] @ gain_t)[:, 0]
    new_covariance = covariance - np.swapaxes(gain_t, 1, 2) @ (innovation_variance[:, :, None] * gain_t)
    return new_mean, new_covariance
