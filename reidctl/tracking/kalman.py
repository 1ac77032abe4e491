"""ByteTrack's constant-velocity Kalman filter on (cx, cy, aspect, h), for all tracks of a camera at once.

State: (cx, cy, a, h, vcx, vcy, va, vh); the noise is scaled by the height, as in ByteTrack (after DeepSORT).
Each function takes (n, 8) means and (n, 8, 8) covariances and follows ByteTrack's float64 arithmetic term for
term (the motion matrix only adds velocities, so its products are exact sums); only the gain's solve rounds
differently from its Cholesky solve, by float rounding.
"""

from __future__ import annotations

import numpy as np

STD_POSITION = 1.0 / 20
STD_VELOCITY = 1.0 / 160


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
    h = xyah[:, 3]
    std = np.empty((n, 8))
    std[:, [0, 1, 3]] = (2 * STD_POSITION * h)[:, None]
    std[:, 2] = 1e-2
    std[:, [4, 5, 7]] = (10 * STD_VELOCITY * h)[:, None]
    std[:, 6] = 1e-5
    covariance = np.zeros((n, 8, 8))
    diagonal = np.arange(8)
    covariance[:, diagonal, diagonal] = np.square(std)
    return mean, covariance


def predict(mean: np.ndarray, covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One frame ahead: x += v; P = F P F^T + Q(h)."""
    h = mean[:, 3]
    std = np.empty_like(mean)
    std[:, [0, 1, 3]] = (STD_POSITION * h)[:, None]
    std[:, 2] = 1e-2
    std[:, [4, 5, 7]] = (STD_VELOCITY * h)[:, None]
    std[:, 6] = 1e-5
    mean = mean.copy()
    mean[:, :4] += mean[:, 4:]
    # F P: position rows gain the velocity rows; (F P) F^T: position columns gain the velocity columns.
    rows = covariance.copy()
    rows[:, :4, :] += covariance[:, 4:, :]
    predicted = rows.copy()
    predicted[:, :, :4] += rows[:, :, 4:]
    diagonal = np.arange(8)
    predicted[:, diagonal, diagonal] += np.square(std)
    return mean, predicted


def update(mean: np.ndarray, covariance: np.ndarray, xyah: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Correct (n, 8) states with (n, 4) measurements (x, y, a, h)."""
    h = mean[:, 3]
    std = np.empty((len(mean), 4))
    std[:, [0, 1, 3]] = (STD_POSITION * h)[:, None]
    std[:, 2] = 1e-1
    projected = covariance[:, :4, :4].copy()
    diagonal = np.arange(4)
    projected[:, diagonal, diagonal] += np.square(std)
    # Gain K = P H^T S^-1, solved as S K^T = H P.
    gain_t = np.linalg.solve(projected, np.swapaxes(covariance[:, :, :4], 1, 2))
    innovation = xyah - mean[:, :4]
    new_mean = mean + (innovation[:, None, :] @ gain_t)[:, 0]
    new_covariance = covariance - np.swapaxes(gain_t, 1, 2) @ (projected @ gain_t)
    return new_mean, new_covariance
