"""PNG figures written into the workdir: a reliability diagram, the predictive band of 1-D regression, and the VAE's
figures (image grids and a 2-D map of latent codes)."""

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


def image_grid(images: np.ndarray, columns: int, path: pathlib.Path, title: str) -> pathlib.Path:
    """Images [N, height, width, 1] in [0, 1] tiled `columns` wide, one pixel of white between them."""
    plt = _pyplot()
    n, height, width = images.shape[:3]
    rows = -(-n // columns)
    canvas = np.ones((rows * (height + 1) + 1, columns * (width + 1) + 1))
    for i, image in enumerate(images[..., 0]):
        r, c = divmod(i, columns)
        canvas[1 + r * (height + 1):1 + r * (height + 1) + height, 1 + c * (width + 1):1 + c * (width + 1) + width] \
            = image
    fig, ax = plt.subplots(figsize=(columns * 0.6 + 0.4, rows * 0.6 + 0.6))
    ax.imshow(canvas, cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def latent_map(means: np.ndarray, labels, path: pathlib.Path) -> pathlib.Path:
    """Latent means [N, features] on their first two principal components (as they are if 2-D), by label."""
    plt = _pyplot()
    if means.shape[1] == 2:
        points, axes = means, ("z_1", "z_2")
    else:
        centred = means - means.mean(axis=0)
        _, singular, components = np.linalg.svd(centred, full_matrices=False)
        points = centred @ components[:2].T
        explained = singular[:2] ** 2 / np.sum(singular ** 2)
        axes = tuple(f"principal component {i + 1} ({100 * e:.0f}% of variance)" for i, e in enumerate(explained))
    fig, ax = plt.subplots(figsize=(6, 5))
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.5)
    else:
        colours = plt.get_cmap("tab10")
        for i, label in enumerate(np.unique(labels)):
            mask = labels == label
            ax.scatter(points[mask, 0], points[mask, 1], s=2, alpha=0.7, color=colours(i % 10), label=str(label))
        ax.legend(title="label", markerscale=4, fontsize="small", loc="best")
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(f"mean of q(z | x) of {len(points)} test images")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def vae_figures(model, dataset, workdir: pathlib.Path, seeds) -> list:
    """A VAE's figures of the test split; returns their paths.

    `reconstructions.png` (test images and decoded means of z ~ q(z|x)), `prior_samples.png` (decoded means of
    z ~ p(z)), `latent_map.png` (the test latent means, class probabilities for the categorical latent, on their
    first two principal components, coloured by label when the data has labels), and for a 2-D Gaussian latent
    `latent_manifold.png` (decoded means over a grid of prior quantiles).

    Args:
      model: a `models.vae.VariationalAutoencoder`.
      dataset: its `training.data.Dataset`.
      workdir: where the PNGs go.
      seeds: b -> int32 [2], the stateless seeds of the figures' draws (`metrics.batch_seeds`).
    """
    import tensorflow_probability as tfp

    from training.metrics import evenly_spaced

    x, y = dataset.arrays("test")
    observed = model.observe(x[evenly_spaced(len(x), 32)]).numpy()
    reconstructed = model.predictive(observed, 1, seeds(0)).mean()[0].numpy()
    columns = min(8, len(observed))
    rows = len(observed) // columns
    shape = (rows, columns) + observed.shape[1:]
    pairs = np.stack([observed[:rows * columns].reshape(shape), reconstructed[:rows * columns].reshape(shape)],
                     axis=1).reshape((-1,) + observed.shape[1:])  # alternate rows: images, reconstructions
    paths = [image_grid(pairs, columns, workdir / "reconstructions.png",
                        "test images (odd rows) and reconstructions, mean of p(x | z), z ~ q(z | x)")]
    prior_draws = model.decode(model.prior.sample(64, seed=seeds(1))).mean().numpy()
    paths.append(image_grid(prior_draws, 8, workdir / "prior_samples.png", "mean of p(x | z), z ~ p(z)"))
    chosen = evenly_spaced(len(x), 5000)
    means = np.concatenate([model.encode(model.observe(x[chosen[i:i + 1000]])).mean().numpy().reshape(
        len(chosen[i:i + 1000]), -1) for i in range(0, len(chosen), 1000)])
    paths.append(latent_map(means, None if y is None else y[chosen], workdir / "latent_map.png"))
    if model.config.latent in ("normal", "full_covariance") and model.latent_shape == (2,):  # a Gaussian prior
        quantiles = tfp.distributions.Normal(0.0, 1.0).quantile(np.linspace(0.05, 0.95, 15).astype(np.float32))
        grid = quantiles.numpy()
        z = np.stack(np.meshgrid(grid, grid[::-1]), axis=-1).reshape(-1, 2)
        paths.append(image_grid(model.decode(z).mean().numpy(), 15, workdir / "latent_manifold.png",
                                "mean of p(x | z) over prior quantiles 0.05..0.95 of z"))
    return paths
