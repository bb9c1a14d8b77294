"""How the card writes a figure: a value, a percentage, a proportion with its count and 95% interval."""

from __future__ import annotations

import numpy as np


def fmt(value) -> str:
    return "—" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"


def pct(value: float) -> str:
    return "—" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{100 * value:.1f}%"


def rate_words(r: dict) -> str:
    """A measured proportion with its count and 95% interval: 0.905 (199/220, 0.86-0.94)."""
    low, high = r["ci95"]
    return f"{fmt(r['value'])} ({r['hits']}/{r['n']}, {low:.2f}-{high:.2f})"
