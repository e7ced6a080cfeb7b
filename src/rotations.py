"""The 24 proper rotations of a cube, applied to (B, C, D, H, W) patches: test-time and training augmentation."""

from __future__ import annotations

import numpy as np


def rotate_patches(batch: np.ndarray, k: int) -> np.ndarray:
    """The k-th of the 24 proper rotations of a cube, applied to (B, 1, D, H, W) patches."""
    return ROTATIONS[k % 24](batch)


def _cube_rotations():
    axes = (2, 3, 4)

    def r90(a, ax1, ax2, n):
        return np.rot90(a, n, axes=(ax1, ax2))

    rots = []
    # 6 orientations of the first axis x 4 rotations about it
    faces = [lambda a: a, lambda a: r90(a, axes[0], axes[1], 1), lambda a: r90(a, axes[0], axes[1], 2),
             lambda a: r90(a, axes[0], axes[1], 3), lambda a: r90(a, axes[0], axes[2], 1),
             lambda a: r90(a, axes[0], axes[2], 3)]
    for f in faces:
        for n in range(4):
            rots.append(lambda a, f=f, n=n: r90(f(a), axes[1], axes[2], n))
    return rots


ROTATIONS = _cube_rotations()


def inverse_rotation(k: int) -> int:
    a = np.arange(27, dtype=np.float32).reshape(1, 1, 3, 3, 3)
    rk = ROTATIONS[k](a)
    for j in range(24):
        if np.array_equal(ROTATIONS[j](rk), a):
            return j
    raise AssertionError("cube rotations are not closed under inversion")
