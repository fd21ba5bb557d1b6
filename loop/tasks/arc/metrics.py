"""ARC's metric: per task, whether the voted answers solve every test input (pass@2)."""

from __future__ import annotations

from loop.core.metrics import Metric

METRICS = (Metric("success", "success %", "ARC success %", reward="success"),)
