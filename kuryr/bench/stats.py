"""Statistics both benchmarks share (the Docker one in run.py, pods in k8s.py)."""

from __future__ import annotations

from collections.abc import Sequence


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest rank: p99 of 50 values is the slowest of them."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]
