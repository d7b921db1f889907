"""Seeded index subsets shared by every modality's prepare step (below the modalities layer)."""

from __future__ import annotations

import numpy as np


def subset(n: int, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``limit`` of ``n`` records drawn without replacement, or all of them.

    No draw is taken from ``rng`` when every record is kept, so a limit at or above ``n`` leaves the
    generator (and every later split drawn from it) exactly as with no limit.

    Shapes:
        → (min(n, limit),) int64
    """
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=limit, replace=False))
