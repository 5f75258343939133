"""MNIST with calibration and out-of-distribution scores: the Bayesian network's three estimators side by side.

Trains `training.train_bnn --flagfile=configs/bnn_mnist.flags` (784-400-400-10, `--epochs` epochs of batch 128,
Adam 1e-3, S = 50 at test time) once per estimator (flipout, reparameterization, local reparameterization) and
prints the README table from each run's metrics.json: test accuracy, NLL (nats), Brier score, 15-bin expected
calibration error, and the AUROC of telling MNIST test digits from Fashion-MNIST test images by predictive
entropy and by mutual information (the epistemic part), with training seconds per epoch.

A second table scores each run's export twice on the same images with the same S and seed: `predict_mc` (exact
sampling) and `predict_moments` (the moment-propagation approximation, `models.bayesian_dense`), to show what the
approximation costs in accuracy, calibration and out-of-distribution detection.

    python benchmarks/mnist_uncertainty.py --data_dir=../shared/datasets --workdir=/tmp/vizoo_mnist_uncertainty

Finished runs are reused (`uci.run_binary`), so an interrupted benchmark continues where it stopped. A failed run
is reported and the others go on; its row reads "—" and it has no export to score.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import uci  # noqa: E402  (the shared runner)

ESTIMATORS = ("flipout", "reparameterization", "local_reparameterization")
COLUMNS = (("test/accuracy", "accuracy", "{:.4f}"), ("test/nll", "NLL", "{:.4f}"), ("test/brier", "Brier", "{:.4f}"),
           ("test/ece", "ECE (15 bins)", "{:.4f}"), ("test/ood_auroc_entropy", "OOD AUROC, entropy", "{:.3f}"),
           ("test/ood_auroc_mutual_information", "OOD AUROC, mutual information", "{:.3f}"),
           ("train/seconds_per_epoch", "s / epoch", "{:.1f}"))


def signature_metrics(export_dir: pathlib.Path, signature: str, data_dir: str, num_samples: int) -> dict:
    """The test metrics of one exported signature on MNIST test, with Fashion-MNIST test as the OOD set."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import numpy as np
    import tensorflow as tf

    sys.path.insert(0, str(REPO))
    from training import data as data_lib
    from training import metrics as metrics_lib

    fn = tf.saved_model.load(str(export_dir)).signatures[signature]

    def outputs(x):
        parts = [fn(x=tf.constant(x[i:i + 1000]), num_samples=tf.constant(num_samples),
                    seed=tf.constant([1, 2]))
                 for i in range(0, len(x), 1000)]
        return {k: np.concatenate([p[k].numpy() for p in parts]) for k in parts[0]}

    mnist, fashion = data_lib.load("mnist", data_dir), data_lib.load("fashion_mnist", data_dir)
    test = outputs(mnist.x_test)
    test["log_likelihood"] = np.log(test["probabilities"][np.arange(len(mnist.y_test)), mnist.y_test])
    return {**metrics_lib.classification_metrics(test, mnist.y_test, "test"),
            **metrics_lib.ood_metrics(test, outputs(fashion.x_test))}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "datasets"))
    parser.add_argument("--workdir", default="/tmp/vizoo_mnist_uncertainty")
    parser.add_argument("--estimators", default=",".join(ESTIMATORS))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (1 keeps s / epoch comparable)")
    args = parser.parse_args()

    estimators = args.estimators.split(",")
    start = time.time()

    def run(estimator):
        workdir = pathlib.Path(args.workdir) / f"{estimator}_e{args.epochs}_s{args.seed}"
        flags = ["--flagfile=configs/bnn_mnist.flags", f"--data_dir={args.data_dir}", f"--estimator={estimator}",
                 f"--epochs={args.epochs}", f"--seed={args.seed}", "--ood_dataset=fashion_mnist",
                 f"--export_base={workdir / 'export'}"]
        return uci.run_binary("training.train_bnn", flags, workdir)

    finished, failed = uci.run_jobs(run, [(e,) for e in estimators], args.jobs)
    metrics = {e: finished[(e,)] for e in estimators if (e,) in finished}
    print(f"MNIST, Bayesian MLP 784-400-400-10, {args.epochs} epochs, seed {args.seed}; out-of-distribution set: "
          f"Fashion-MNIST test ({time.time() - start:.0f} s wall for this run):\n")
    print("| estimator | " + " | ".join(label for _, label, _ in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for estimator in estimators:
        cells = [fmt.format(metrics[estimator][key]) if key in metrics.get(estimator, {}) else "—"
                 for key, _, fmt in COLUMNS]
        print(f"| {estimator} | " + " | ".join(cells) + " |")
    uci.print_failures(failed)

    print(f"\nThe same exports, exact sampling (predict_mc) against moment propagation (predict_moments), S = 50, "
          f"seed (1, 2), MNIST test and Fashion-MNIST test:\n")
    columns = COLUMNS[:-1] + (("test/mutual_information", "mean mutual information", "{:.4f}"),)
    print("| estimator | signature | " + " | ".join(label for _, label, _ in columns) + " |")
    print("|---" * (len(columns) + 2) + "|")
    for estimator in (e for e in estimators if e in metrics):
        exports = pathlib.Path(args.workdir) / f"{estimator}_e{args.epochs}_s{args.seed}" / "export"
        export_dir = max(exports.iterdir(), key=lambda p: int(p.name))
        for signature in ("predict_mc", "predict_moments"):
            scores = signature_metrics(export_dir, signature, args.data_dir, 50)
            cells = [fmt.format(scores[key]) for key, _, fmt in columns]
            print(f"| {estimator} | {signature} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
