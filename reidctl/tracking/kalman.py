"""ByteTrack's constant-velocity Kalman filter on (cx, cy, aspect, h), for all tracks of a camera at once.

State: (cx, cy, a, h, vcx, vcy, va, vh); the noise is scaled by the height, as in ByteTrack (after DeepSORT).
The four dimensions never mix (per-dimension motion, diagonal noise), so ByteTrack's 8x8 covariance keeps exact
zeros outside each dimension's (position, velocity) pair, and its innovation covariance is diagonal: each entry of
its matrix products has one non-zero term, and its Cholesky solve is two multiplications by 1 / sqrt of the
diagonal (as LAPACK does it). So the states of n tracks are one (6, 4, n) array: a row per quantity below, then
the dimension d, then the track, which keeps every quantity of all tracks contiguous (small arrays: the cost is
the number of NumPy calls). Each function does, entry by entry, the float64 operations of ByteTrack's filter, with
the same results bit for bit, in place on the states it is given. Boxes and measurements are (4, n) as well.
"""

from __future__ import annotations

import numpy as np

# Rows of the state; then d in (cx, cy, a, h).
POSITION = 0  # mean[d]
VELOCITY = 1  # mean[d + 4]
POSITION_VARIANCE = 2  # P[d, d]
VELOCITY_POSITION = 3  # P[d + 4, d]
POSITION_VELOCITY = 4  # P[d, d + 4]
VELOCITY_VARIANCE = 5  # P[d + 4, d + 4]
STATE_ROWS = 6
_MEAN = slice(POSITION, VELOCITY + 1)
# The covariance rows in the order (i, j) = (p, p), (v, p), (p, v), (v, v) of P[i, j], i the faster.
_COVARIANCE = slice(POSITION_VARIANCE, VELOCITY_VARIANCE + 1)
# P[d, d] and P[d + 4, d] are ByteTrack's P H^T, so its gain's position and velocity rows.
_GAIN_SOURCE = slice(POSITION_VARIANCE, VELOCITY_POSITION + 1)

STD_POSITION = 1.0 / 20
STD_VELOCITY = 1.0 / 160
# Standard deviations are height x weight + constant (the aspect ratio's are constants): ByteTrack's values exactly,
# since h x 0 + c == c and h x w + 0 == h x w. Rows: position, velocity; then d; then a trailing axis for tracks.
_INITIATE_WEIGHT = np.array([[2 * STD_POSITION] * 2 + [0, 2 * STD_POSITION],
                             [10 * STD_VELOCITY] * 2 + [0, 10 * STD_VELOCITY]])[..., None]
_INITIATE_CONSTANT = np.array([[0, 0, 1e-2, 0], [0, 0, 1e-5, 0]])[..., None]
_PREDICT_WEIGHT = np.array([[STD_POSITION] * 2 + [0, STD_POSITION],
                            [STD_VELOCITY] * 2 + [0, STD_VELOCITY]])[..., None]
_PREDICT_CONSTANT = _INITIATE_CONSTANT
_MEASURE_WEIGHT = np.array([STD_POSITION, STD_POSITION, 0, STD_POSITION])[:, None]
_MEASURE_CONSTANT = np.array([0, 0, 1e-1, 0])[:, None]


def _variance(height: np.ndarray, weight: np.ndarray, constant: np.ndarray) -> np.ndarray:
    variance = height * weight
    variance += constant
    return np.square(variance, out=variance)


def tlwh_to_xyah(tlwh: np.ndarray) -> np.ndarray:
    """(4, n) boxes (left, top, width, height) -> (cx, cy, width / height, height)."""
    xyah = tlwh.copy()
    xyah[:2] += xyah[2:] / 2
    xyah[2] /= xyah[3]
    return xyah


def position_to_tlwh(position: np.ndarray) -> np.ndarray:
    """(4, n) positions (cx, cy, a, h) -> (4, n) boxes (left, top, width, height)."""
    tlwh = position.copy()
    tlwh[2] *= tlwh[3]
    tlwh[:2] -= tlwh[2:] / 2
    return tlwh


def initiate(xyah: np.ndarray) -> np.ndarray:
    """New tracks from (4, n) measurements: zero velocity, uncertainty proportional to the height."""
    state = np.zeros((STATE_ROWS,) + xyah.shape)
    state[POSITION] = xyah
    variance = _variance(xyah[3], _INITIATE_WEIGHT, _INITIATE_CONSTANT)
    state[POSITION_VARIANCE] = variance[0]
    state[VELOCITY_VARIANCE] = variance[1]
    return state


def predict(state: np.ndarray) -> None:
    """One frame ahead: x += v; P = F P F^T + Q(h)."""
    noise = _variance(state[POSITION, 3], _PREDICT_WEIGHT, _PREDICT_CONSTANT)
    state[POSITION] += state[VELOCITY]
    # F P adds the velocity rows to the position rows, (F P) F^T the velocity columns to the position columns:
    # P[d, d] = (P[d, d] + P[d + 4, d]) + (P[d, d + 4] + P[d + 4, d + 4]); both off-diagonals gain P[d + 4, d + 4].
    state[POSITION_VARIANCE] += state[VELOCITY_POSITION]
    state[VELOCITY_POSITION:POSITION_VELOCITY + 1] += state[VELOCITY_VARIANCE]
    state[POSITION_VARIANCE] += state[POSITION_VELOCITY]
    state[POSITION_VARIANCE] += noise[0]
    state[VELOCITY_VARIANCE] += noise[1]


def update(state: np.ndarray, xyah: np.ndarray) -> None:
    """Correct (6, 4, n) states with (4, n) measurements (x, y, a, h)."""
    # Innovation covariance S = H P H^T + R: diagonal (see the module's docstring).
    innovation_variance = state[POSITION_VARIANCE] + _variance(state[POSITION, 3], _MEASURE_WEIGHT,
                                                               _MEASURE_CONSTANT)
    # Gain K = P H^T S^-1, solved as ByteTrack's Cholesky solve does: forward, then back substitution.
    inverse_root = np.sqrt(innovation_variance)
    np.divide(1, inverse_root, out=inverse_root)
    gain = state[_GAIN_SOURCE] * inverse_root
    gain *= inverse_root
    innovation = xyah - state[POSITION]
    state[_MEAN] += innovation * gain
    # P -= K S K^T, entry by entry: P[i, j] -= K[i] (S K[j]) for i, j in (position, velocity).
    scaled_gain = innovation_variance * gain
    state[_COVARIANCE] -= (gain * scaled_gain[:, None]).reshape(state[_COVARIANCE].shape)
