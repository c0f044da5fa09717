"""Small figures shared by the benchmarks' reports: percentiles and latency summaries (pure)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (linear interpolation), rounded to ms; None for no values."""
    return round(float(np.percentile(values, q)), 3) if len(values) else None


def latency_summary(values: Sequence[float]) -> dict[str, float | int | None]:
    """``{"p50", "p95", "n"}`` of latencies in seconds (the benchmarks' JSON shape)."""
    return {"p50": percentile(values, 50), "p95": percentile(values, 95), "n": len(values)}
