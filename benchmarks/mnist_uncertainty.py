"""MNIST with calibration and out-of-distribution scores: the Bayesian network's three estimators side by side.

Trains `training.train_bnn --flagfile=configs/bnn_mnist.flags` (784-400-400-10, `--epochs` epochs of batch 128,
Adam 1e-3, S = 50 at test time) once per estimator (flipout, reparameterization, local reparameterization) and
prints the README table from each run's metrics.json: test accuracy, NLL (nats), Brier score, 15-bin expected
calibration error, and the AUROC of telling MNIST test digits from Fashion-MNIST test images by predictive
entropy and by mutual information (the epistemic part), with training seconds per epoch.

    python benchmarks/mnist_uncertainty.py --data_dir=../shared/datasets --workdir=/tmp/vizoo_mnist_uncertainty

Finished runs are reused (`uci.run_binary`), so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import concurrent.futures
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
        flags = ["--flagfile=configs/bnn_mnist.flags", f"--data_dir={args.data_dir}", f"--estimator={estimator}",
                 f"--epochs={args.epochs}", f"--seed={args.seed}", "--ood_dataset=fashion_mnist"]
        workdir = pathlib.Path(args.workdir) / f"{estimator}_e{args.epochs}_s{args.seed}"
        return uci.run_binary("training.train_bnn", flags, workdir)

    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        metrics = dict(zip(estimators, pool.map(run, estimators)))
    print(f"MNIST, Bayesian MLP 784-400-400-10, {args.epochs} epochs, seed {args.seed}; out-of-distribution set: "
          f"Fashion-MNIST test ({time.time() - start:.0f} s wall for this run):\n")
    print("| estimator | " + " | ".join(label for _, label, _ in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for estimator in estimators:
        cells = [fmt.format(metrics[estimator][key]) for key, _, fmt in COLUMNS]
        print(f"| {estimator} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
