"""A detector pixel mask prepared for zeroing frames in place, fast.

Detector masks are mostly module gaps: whole rows and whole columns. Zeroing them through flat
fancy indices (260 k indices for an EIGER2 4M) costs more than the slices they are: a
:class:`MaskPlan` keeps runs of fully masked rows and columns as slices and only the remaining
pixels (dead/hot pixels) as flat indices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

_EMPTY = np.empty(0, dtype=np.intp)


def _runs(flags: np.ndarray) -> tuple[slice, ...]:
    """Slices of the runs of True in a 1-D boolean array."""
    padded = np.concatenate(([False], flags, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return tuple(slice(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True))


@dataclass(frozen=True, slots=True)
class MaskPlan:
    """Which pixels of a ``shape`` frame to zero: row runs, column runs, then single pixels."""

    shape: tuple[int, int]
    rows: tuple[slice, ...] = ()
    cols: tuple[slice, ...] = ()
    rest: np.ndarray = field(default_factory=lambda: _EMPTY)
    """Flat indices of masked pixels not in a fully masked row or column (sorted)."""
    count: int = 0
    """How many pixels the mask covers."""

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> MaskPlan:
        """The plan of a 2-D mask (non-zero = masked)."""
        bad = np.asarray(mask) != 0
        if bad.ndim != 2:
            raise ValueError(f"a pixel mask is 2-D, got {bad.ndim}-D")
        count = int(np.count_nonzero(bad))
        if count == 0:
            return cls(shape=bad.shape)
        full_rows = bad.all(axis=1)
        full_cols = bad.all(axis=0)
        left = bad.copy()
        left[full_rows, :] = False
        left[:, full_cols] = False
        return cls(
            shape=bad.shape,
            rows=_runs(full_rows),
            cols=_runs(full_cols),
            rest=np.flatnonzero(left),
            count=count,
        )

    def apply(self, array: np.ndarray) -> None:
        """Zero the masked pixels of a writable C-contiguous ``shape`` array, in place."""
        if array.shape != self.shape:
            raise ValueError(f"mask is {self.shape}, frame is {array.shape}")
        for rows in self.rows:
            array[rows] = 0
        for cols in self.cols:
            array[:, cols] = 0
        if self.rest.size:
            array.reshape(-1)[self.rest] = 0
