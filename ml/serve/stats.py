"""Proportions with honest error bars: the Wilson interval, in plain Python so the web process can use it."""

from __future__ import annotations

import math


def wilson(hits: int, n: int, z: float = 1.96) -> list[float]:
    """95% Wilson score interval of a proportion: honest error bars for a few dozen cases."""
    if n == 0:
        return [float("nan"), float("nan")]
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def proportion(hits: int, n: int) -> dict:
    """A measured proportion as the cards store it: value, hits, n and its 95% Wilson interval."""
    return {"value": hits / n if n else float("nan"), "hits": hits, "n": n, "ci95": wilson(hits, n)}
