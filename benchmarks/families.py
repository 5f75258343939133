"""The three families with a posterior over networks, side by side, in one table.

Families: the mean-field Bayesian network (`bnn`, flipout), the meta-representation network
(`meta_representation`, Karaletsos et al. 2018) and the Bayesian hypernetwork (`bayesian_hypernetwork`, Krueger et
al. 2017). For each:

  * UCI: test log-likelihood (reported as NLL, nats per point) and RMSE on concrete, energy, kin8nm, power-plant
    and yacht, mean +- standard error over the first `--splits` standard splits, each binary with its defaults
    (the same runs as `benchmarks/uci.py`, which it shares a work directory layout with);
  * MNIST with a 784-100-10 target network for all three (the family's flagfile, `--hidden_units=100`,
    `--mnist_epochs` epochs): test accuracy, 15-bin ECE, out-of-distribution AUROC against Fashion-MNIST by
    predictive entropy and by mutual information;
  * variational parameters of the MNIST model, and training seconds per MNIST epoch measured in this run.

    python benchmarks/families.py --data_dir=../shared/datasets --workdir=/tmp/vizoo_families --splits=5

Finished runs are reused, so an interrupted benchmark continues where it stopped. A failed run is reported and
the others go on; its cells in the table say how many splits failed ("—" where none finished).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import uci  # noqa: E402  (the UCI runner, shared)

FAMILIES = ("bnn", "meta_representation", "bayesian_hypernetwork")
MNIST_FLAGFILES = {"bnn": "configs/bnn_mnist.flags", "meta_representation": "configs/hypernetwork_mnist.flags",
                   "bayesian_hypernetwork": "configs/bhn_mnist.flags"}


def run_mnist(family: str, args) -> dict:
    module, _ = uci.FAMILIES[family]
    flags = [f"--flagfile={MNIST_FLAGFILES[family]}", f"--data_dir={args.data_dir}", "--hidden_units=100",
             f"--epochs={args.mnist_epochs}", "--train_steps=0"]
    return uci.run_binary(module, flags, pathlib.Path(args.workdir) / family / f"mnist_e{args.mnist_epochs}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "datasets"))
    parser.add_argument("--workdir", default="/tmp/vizoo_families")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--datasets", default=",".join(uci.DATASETS))
    parser.add_argument("--splits", type=int, default=5, help="first N standard splits (20: all)")
    parser.add_argument("--mnist_epochs", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    args.extra_flags = []

    from training import data as data_lib

    families, datasets = args.families.split(","), args.datasets.split(",")
    jobs = [(f, d, k) for d in datasets for f in families
            for k in range(min(args.splits, data_lib.num_uci_splits(d, args.data_dir)))]
    jobs += [(f, "mnist", 0) for f in families]
    start = time.time()
    finished, failed = uci.run_jobs(
        lambda f, d, k: run_mnist(f, args) if d == "mnist" else uci.run_split(f, d, k, args), jobs, args.jobs)
    uci_results = uci.summarize(finished, failed, families, datasets)
    mnist_runs = {f: finished[(f, "mnist", 0)] for f in families if (f, "mnist", 0) in finished}

    rows = []
    for d in datasets:
        for metric, label in (("nll", "NLL"), ("rmse", "RMSE")):
            digits = 3 if metric == "rmse" and d == "kin8nm" else 2
            rows.append((f"UCI {d}: test {label}", [uci.cell(uci_results[f][d], f"test/{metric}", digits)
                                                    for f in families]))
    for name, label, fmt in (("test/accuracy", "MNIST test accuracy", "{:.4f}"), ("test/ece", "MNIST test ECE",
                                                                                  "{:.4f}"),
                             ("test/ood_auroc_entropy", "OOD AUROC (Fashion-MNIST), entropy", "{:.3f}"),
                             ("test/ood_auroc_mutual_information", "OOD AUROC (Fashion-MNIST), mutual information",
                              "{:.3f}"),
                             ("model/variational_parameters", "variational parameters (MNIST model)", "{:,.0f}"),
                             ("train/seconds_per_epoch", "training seconds per MNIST epoch", "{:.1f}")):
        rows.append((label, [fmt.format(mnist_runs[f][name]) if name in mnist_runs.get(f, {})
                             else "— (failed)" if (f, "mnist", 0) in failed else "—" for f in families]))
    header = "| | " + " | ".join(families) + " |"
    print(f"Families side by side (UCI: first {args.splits} splits; MNIST: 784-100-10, {args.mnist_epochs} "
          f"epochs; measured in one run, {time.time() - start:.0f}s wall):\n")
    print(header)
    print("|---" * (len(families) + 1) + "|")
    for label, cells in rows:
        print(f"| {label} | " + " | ".join(cells) + " |")
    uci.print_failures(failed)
    summary = {"uci": uci_results, "mnist": mnist_runs}
    (pathlib.Path(args.workdir) / "families_summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
