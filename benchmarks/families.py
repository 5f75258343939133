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

Finished runs are reused, so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import concurrent.futures
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
    from training import metrics as metrics_lib

    families, datasets = args.families.split(","), args.datasets.split(",")
    jobs = [("uci", f, d, k) for d in datasets for f in families
            for k in range(min(args.splits, data_lib.num_uci_splits(d, args.data_dir)))]
    jobs += [("mnist", f, "mnist", 0) for f in families]
    start = time.time()
    uci_runs, mnist_runs = {}, {}
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(uci.run_split if kind == "uci" else lambda f, d, k, a: run_mnist(f, a),
                               f, d, k, args): (kind, f, d, k) for kind, f, d, k in jobs}
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            kind, f, d, k = futures[future]
            if kind == "uci":
                uci_runs.setdefault(f, {}).setdefault(d, []).append(future.result())
            else:
                mnist_runs[f] = future.result()
            print(f"[{done}/{len(jobs)}] {f} {d} {k} ({time.time() - start:.0f}s)", file=sys.stderr)

    rows = []
    for d in datasets:
        for metric, label in (("nll", "NLL"), ("rmse", "RMSE")):
            cells = []
            for f in families:
                s = metrics_lib.aggregate(uci_runs[f][d])
                digits = 3 if metric == "rmse" and d == "kin8nm" else 2
                cells.append(f"{s[f'test/{metric}']:.{digits}f} ± {s[f'test/{metric}_stderr']:.{digits}f}")
            rows.append((f"UCI {d}: test {label}", cells))
    for name, label, fmt in (("test/accuracy", "MNIST test accuracy", "{:.4f}"), ("test/ece", "MNIST test ECE",
                                                                                  "{:.4f}"),
                             ("test/ood_auroc_entropy", "OOD AUROC (Fashion-MNIST), entropy", "{:.3f}"),
                             ("test/ood_auroc_mutual_information", "OOD AUROC (Fashion-MNIST), mutual information",
                              "{:.3f}"),
                             ("model/variational_parameters", "variational parameters (MNIST model)", "{:,.0f}"),
                             ("train/seconds_per_epoch", "training seconds per MNIST epoch", "{:.1f}")):
        rows.append((label, [fmt.format(mnist_runs[f][name]) for f in families]))
    header = "| | " + " | ".join(families) + " |"
    print(f"Families side by side (UCI: first {args.splits} splits; MNIST: 784-100-10, {args.mnist_epochs} "
          f"epochs; measured in one run, {time.time() - start:.0f}s wall):\n")
    print(header)
    print("|---" * (len(families) + 1) + "|")
    for label, cells in rows:
        print(f"| {label} | " + " | ".join(cells) + " |")
    summary = {"uci": {f: {d: metrics_lib.aggregate(uci_runs[f][d]) for d in datasets} for f in families},
               "mnist": mnist_runs}
    (pathlib.Path(args.workdir) / "families_summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
