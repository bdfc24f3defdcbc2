"""Patch grids for PFF (patch feature fusion).

PFF cuts an auxiliary network's input into an n×n grid of patches and runs the auxiliary on one
patch at a time. The same grid, scaled, cuts the input image, so a reconstruction target always
matches the feature patch it is decoded from.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["grid_slices"]


def grid_slices(height: int, width: int, n: int) -> Iterator[tuple[slice, slice]]:
    """Row and column slices of an n×n grid tiling a ``height × width`` map exactly once.

    Boundaries fall at ``floor(i · size / n)``, so uneven sizes give patches that differ by at most
    one row or column, and every position belongs to exactly one patch.
    """
    if n < 1 or n > min(height, width):
        raise ValueError(f"cannot cut a {height}x{width} map into {n}x{n} patches")
    rows = [i * height // n for i in range(n + 1)]
    cols = [i * width // n for i in range(n + 1)]
    for i in range(n):
        for j in range(n):
            yield slice(rows[i], rows[i + 1]), slice(cols[j], cols[j + 1])
