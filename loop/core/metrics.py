"""The one registry of metrics: each domain declares its own (`Domain.metrics`, in
`loop/tasks/<name>/metrics.py`), registered when the domains are provided
(`loop.core.domain.provide`), and every table, plot, reward and launch check reads them here.

A metric is a field of the domain's score rows (one row per SQuAD question, one per ARC task):
its mean over a context is what a table shows and what `reward.metric` may average.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str  # the score rows' field, and the column of results.json and the tables
    header: str  # the table's column header
    label: str  # the plot's axis label
    percent: bool = True  # a 0/1 or [0, 1] value per row, shown as a percent; False: as it is
    reward: str | None = None  # the `reward.metric` that averages this field (None: not a reward)
    shown: bool = True  # a column of loop.evaluate's tables and plots (False: a reward only)


_registered: dict[str, Metric] = {}


def register(metrics: list[Metric]) -> None:
    """The provided domains' metrics, in order (a name two domains share must be one metric)."""
    out: dict[str, Metric] = {}
    for m in metrics:
        if out.setdefault(m.name, m) != m:
            raise ValueError(f"two domains define the metric '{m.name}' differently")
    _registered.clear()
    _registered.update(out)


def registered() -> list[Metric]:
    if not _registered:
        raise RuntimeError("no metrics registered: import loop.tasks before asking loop.core for "
                           "a metric (every entry point does)")
    return list(_registered.values())


def shown() -> list[Metric]:
    """The metrics tables and plots show, in order."""
    return [m for m in registered() if m.shown]


def by_name(name: str) -> Metric:
    return {m.name: m for m in registered()}[name]


def rewards() -> dict[str, Metric]:
    """`reward.metric` values and the metric each averages."""
    return {m.reward: m for m in registered() if m.reward is not None}


def reward_field(reward: str) -> str:
    """The score rows' field a `reward.metric` averages."""
    return rewards()[reward].name


def is_log_probability(reward: str) -> bool:
    """Whether a `reward.metric` is a mean as it is (nats per token), not a percent."""
    return not rewards()[reward].percent
