"""Plots for the run folder and MLflow (matplotlib, headless)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from loop.core.metrics import by_name, shown


def condition_bars(summary: dict[str, dict], path: Path, title: str) -> Path:
    """One panel per metric: each condition's mean with its 95% interval as an error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m.name for m in shown() if any(isinstance(s.get(m.name), dict)
                                              for s in summary.values())]
    conditions = list(summary)
    width = max(3.2, 0.9 * len(conditions))  # per panel: room for each condition's label
    fig, axes = plt.subplots(1, len(metrics), figsize=(width * len(metrics), 3.4), squeeze=False)
    for ax, m in zip(axes[0], metrics, strict=True):
        ests = [summary[c][m]["estimate"] if m in summary[c] else None for c in conditions]
        means = [e["mean"] if e else 0.0 for e in ests]
        err = [[e["mean"] - e["low"] if e else 0 for e in ests],
               [e["high"] - e["mean"] if e else 0 for e in ests]]
        ax.bar(conditions, means, yerr=err, capsize=4, color=[f"C{i}" for i in range(len(means))])
        if m != "logprob":  # percentages: start at 0, and keep an all-zero panel readable
            ax.set_ylim(0, max(1.0, *(mean + hi for mean, hi in zip(means, err[1], strict=True))) * 1.1)
        ax.set_title(by_name(m).label, fontsize=10)
        ax.axhline(0, color="black", linewidth=0.5)
        ax.tick_params(axis="x", labelrotation=25)  # long names (teacher_base) would overlap
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    # wrapped to the figure's width (about 12 characters per inch at this size), not cut off
    fig.suptitle(textwrap.fill(title, int(12 * width * len(metrics))), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def rounds(summaries: list[dict], path: Path, metric: str) -> Path:
    """The loop at a glance: rewards per round, baseline vs after scores, kept fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = [s["round"] for s in summaries]
    m = [s["metrics"] for s in summaries]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(11, 3.2))
    rewards = [[v for v in s["rewards"] if v is not None] for s in summaries]  # absorbed ones
    a.boxplot(rewards, positions=r, widths=0.5)
    for x, values in zip(r, rewards, strict=True):
        a.scatter([x] * len(values), values, s=10, alpha=0.5, color="C0")
    a.axhline(0, color="black", linewidth=0.5)
    a.set(title="reward per self-edit", xlabel="round", ylabel=f"{metric} gain")
    b.plot(r, [x["student/score_base"] for x in m], "o-", label="baseline")
    b.plot(r, [x["student/score_after"] for x in m], "o-", label="after, all self-edits")
    b.plot(r, [x["student/score_after_kept"] for x in m], "o-", label="after, kept ones")
    b.set(title="student score", xlabel="round", ylabel=metric)
    b.legend(fontsize=8)
    c.bar(r, [x["filter/kept_frac"] for x in m])
    c.set(title="kept fraction", xlabel="round", ylim=(0, 1))
    for ax in (a, b, c):
        ax.set_xticks(r)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def forgetting(matrices: dict[str, list[list[dict]]], path: Path, mode: str) -> Path:
    """Per condition: the gold-answer log-prob of passage i (column) after edit j (row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(matrices), figsize=(4 * len(matrices), 3.6), squeeze=False)
    for ax, (cond, rows) in zip(axes[0], matrices.items(), strict=True):
        n = len(rows)
        grid = np.full((n, n), np.nan)
        for j, row in enumerate(rows):
            for i, means in enumerate(row):
                grid[j, i] = means["logprob"]
        im = ax.imshow(grid, cmap="viridis")
        ax.set(title=f"{cond} ({mode})", xlabel="passage i", ylabel="after edit j")
        fig.colorbar(im, ax=ax, label=by_name("logprob").label)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def family_bars(per_family: dict[str, dict[str, float]], counts: dict[str, int], path: Path,
                title: str) -> Path:
    """Per task family (rows), each condition's success % as a horizontal bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = sorted(per_family)
    conditions = list(next(iter(per_family.values()))) if per_family else []
    height = 0.8 / max(1, len(conditions))
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(families) + 1.4))
    for j, cond in enumerate(conditions):
        ys = [i + (j - (len(conditions) - 1) / 2) * height for i in range(len(families))]
        ax.barh(ys, [per_family[f][cond] for f in families], height=height, label=cond,
                color=f"C{j}")
    ax.set_yticks(range(len(families)), [f"{f} ({counts[f]})" for f in families], fontsize=8)
    ax.invert_yaxis()
    ax.set(xlim=(0, 100), xlabel=by_name("success").label + " (tasks in the family)")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
