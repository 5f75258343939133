"""PNG figures written into the workdir: a reliability diagram and the predictive band of 1-D regression."""

from __future__ import annotations

import pathlib

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display is needed or wanted
    import matplotlib.pyplot as plt

    return plt


def reliability_diagram(probabilities: np.ndarray, labels: np.ndarray, path: pathlib.Path, bins: int = 15,
                        title: str = "") -> pathlib.Path:
    """Accuracy against confidence in equal-width bins, with the diagonal of perfect calibration."""
    from training.metrics import expected_calibration_error

    plt = _pyplot()
    confidence = probabilities.max(-1)
    correct = probabilities.argmax(-1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    accuracy = np.array([correct[which == b].mean() if (which == b).any() else np.nan for b in range(bins)])
    counts = np.bincount(which, minlength=bins)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(edges[:-1], accuracy, width=1.0 / bins, align="edge", edgecolor="black", label="accuracy")
    top.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    top.set_ylabel("accuracy")
    top.set_title(title or f"ECE ({bins} bins) = {expected_calibration_error(probabilities, labels, bins):.4f}")
    top.legend(loc="upper left")
    bottom.bar(edges[:-1], counts, width=1.0 / bins, align="edge", edgecolor="black")
    bottom.set_yscale("log")
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("examples")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def predictive_band(x_train, y_train, x_grid, summary: dict, path: pathlib.Path, title: str = "") -> pathlib.Path:
    """Training points, predictive mean, the 95% interval and the epistemic +-2 std band over a 1-D grid."""
    plt = _pyplot()
    x_grid = np.ravel(x_grid)
    order = np.argsort(x_grid)
    x_grid = x_grid[order]
    get = lambda k: np.ravel(summary[k])[order]  # noqa: E731
    mean, epistemic = get("mean"), get("epistemic_stddev")
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.fill_between(x_grid, get("lower"), get("upper"), color="tab:blue", alpha=0.2, label="95% predictive")
    ax.fill_between(x_grid, mean - 2 * epistemic, mean + 2 * epistemic, color="tab:orange", alpha=0.4,
                    label="mean ± 2 epistemic std")
    ax.plot(x_grid, mean, color="tab:blue", label="predictive mean")
    ax.scatter(np.ravel(x_train), np.ravel(y_train), s=6, color="black", label="training data")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
