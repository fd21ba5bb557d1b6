"""Plots for the run folder and MLflow (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

LABELS = {"exact_match": "exact match %", "f1": "token F1 %", "contains": "gold contained %",
          "logprob": "gold log-prob / token", "judge": "judge %"}


def condition_bars(summary: dict[str, dict], path: Path, title: str) -> Path:
    """One panel per metric: each condition's mean with its 95% interval as an error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in LABELS if any(isinstance(s.get(m), dict) for s in summary.values())]
    conditions = list(summary)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.2), squeeze=False)
    for ax, m in zip(axes[0], metrics, strict=True):
        ests = [summary[c][m]["estimate"] if m in summary[c] else None for c in conditions]
        means = [e["mean"] if e else 0.0 for e in ests]
        err = [[e["mean"] - e["low"] if e else 0 for e in ests],
               [e["high"] - e["mean"] if e else 0 for e in ests]]
        ax.bar(conditions, means, yerr=err, capsize=4, color=[f"C{i}" for i in range(len(means))])
        if m != "logprob":  # percentages: start at 0, and keep an all-zero panel readable
            ax.set_ylim(0, max(1.0, *(mean + hi for mean, hi in zip(means, err[1], strict=True))) * 1.1)
        ax.set_title(LABELS[m], fontsize=10)
        ax.axhline(0, color="black", linewidth=0.5)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
