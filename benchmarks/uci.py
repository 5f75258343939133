"""UCI regression benchmark: our families on the standard splits against the published rows.

Runs each family's training binary with its defaults (one configuration for every dataset) on every standard
split, then prints test RMSE and test NLL (negative log predictive density per point, original units), mean +-
standard error over splits, next to the published numbers:

  * PBP, MC dropout, deep ensembles: Lakshminarayanan, Pritzel and Blundell 2017, Table 1 (PBP from
    Hernandez-Lobato and Adams 2015, MC dropout from Gal and Ghahramani 2016, as quoted there);
  * VI: Graves 2011 as quoted by Hernandez-Lobato and Adams 2015 (their test log-likelihood, negated here).

    python benchmarks/uci.py --data_dir=../shared/datasets --workdir=/tmp/uci_bench --families=linear,bnn

Splits run as separate processes, `--jobs` at a time; a finished split is not run again (its metrics.json is
reused), so an interrupted benchmark continues where it stopped. A run that fails is reported (its command and the
tail of its stderr) and the others go on; a cell whose splits did not all finish says how many failed, and one
with none finished is "—". Running the benchmark again retries the failed runs (a run whose training finished
trains nothing again: it evaluates and exports).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATASETS = ("concrete", "energy", "kin8nm", "power-plant", "yacht")

# (RMSE, its standard error, NLL, its standard error) per dataset.
PUBLISHED = {
    "PBP": {"bostonHousing": (3.01, 0.18, 2.57, 0.09), "concrete": (5.67, 0.09, 3.16, 0.02),
            "energy": (1.80, 0.05, 2.04, 0.02), "kin8nm": (0.10, 0.00, -0.90, 0.01),
            "naval-propulsion-plant": (0.01, 0.00, -3.73, 0.01), "power-plant": (4.12, 0.03, 2.84, 0.01),
            "protein-tertiary-structure": (4.73, 0.01, 2.97, 0.00), "wine-quality-red": (0.64, 0.01, 0.97, 0.01),
            "yacht": (1.02, 0.05, 1.63, 0.02)},
    "MC dropout": {"bostonHousing": (2.97, 0.85, 2.46, 0.25), "concrete": (5.23, 0.53, 3.04, 0.09),
                   "energy": (1.66, 0.19, 1.99, 0.09), "kin8nm": (0.10, 0.00, -0.95, 0.03),
                   "naval-propulsion-plant": (0.01, 0.00, -3.80, 0.05), "power-plant": (4.02, 0.18, 2.80, 0.05),
                   "protein-tertiary-structure": (4.36, 0.04, 2.89, 0.01),
                   "wine-quality-red": (0.62, 0.04, 0.93, 0.06), "yacht": (1.11, 0.38, 1.55, 0.12)},
    "Deep ensembles": {"bostonHousing": (3.28, 1.00, 2.41, 0.25), "concrete": (6.03, 0.58, 3.06, 0.18),
                       "energy": (2.09, 0.29, 1.38, 0.22), "kin8nm": (0.09, 0.00, -1.20, 0.02),
                       "naval-propulsion-plant": (0.00, 0.00, -5.63, 0.05),
                       "power-plant": (4.11, 0.17, 2.79, 0.04),
                       "protein-tertiary-structure": (4.71, 0.06, 2.83, 0.02),
                       "wine-quality-red": (0.64, 0.04, 0.94, 0.12), "yacht": (1.58, 0.48, 1.18, 0.21)},
    "VI (Graves 2011)": {"bostonHousing": (4.32, 0.29, 2.90, 0.07), "concrete": (7.19, 0.12, 3.39, 0.02),
                         "energy": (2.65, 0.08, 2.39, 0.03), "kin8nm": (0.10, 0.00, -0.90, 0.01),
                         "naval-propulsion-plant": (0.01, 0.00, -3.73, 0.12),
                         "power-plant": (4.33, 0.04, 2.89, 0.01),
                         "protein-tertiary-structure": (4.84, 0.03, 2.99, 0.01),
                         "wine-quality-red": (0.65, 0.01, 0.98, 0.01), "yacht": (6.89, 0.67, 3.43, 0.16)},
}

# family -> (binary module, extra flags). Each binary's own defaults are the configuration under test.
FAMILIES = {
    "linear": ("training.train_linear_regression", ["--inference=exact"]),
    "bnn": ("training.train_bnn", ["--estimator=flipout"]),
    # The same network on plainly standardized inputs (no tail compression, `training.data.Standardizer`).
    "bnn_plain_inputs": ("training.train_bnn", ["--estimator=flipout", "--input_tail=0"]),
    "bnn_local": ("training.train_bnn", ["--estimator=local_reparameterization"]),
    "bnn_reparam": ("training.train_bnn", ["--estimator=reparameterization"]),
    "meta_representation": ("training.train_hypernetwork", ["--variant=meta_representation"]),
    "bayesian_hypernetwork": ("training.train_hypernetwork", ["--variant=bayesian_hypernetwork"]),
}


class RunFailed(RuntimeError):
    """A training binary exited with an error; the message holds its command and the tail of its stderr."""


def run_binary(module: str, flags, workdir) -> dict:
    """Runs a training binary in a subprocess (unless `<workdir>/metrics.json` exists); returns its metrics, or
    raises `RunFailed`.

    Every benchmark that trains goes through here, so finished runs are reused and an interrupted benchmark
    continues where it stopped.
    """
    workdir = pathlib.Path(workdir)
    metrics_path = workdir / "metrics.json"
    if not metrics_path.exists():
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1", PYTHONPATH=str(REPO))
        command = [sys.executable, "-m", module, *flags, f"--workdir={workdir}"]
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise RunFailed(f"{' '.join(command)} failed (exit code {result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(metrics_path.read_text())


def run_split(family: str, dataset: str, split: int, args) -> dict:
    """Trains one split of a UCI dataset with the family's defaults (or reuses its metrics.json)."""
    module, extra = FAMILIES[family]
    flags = [f"--dataset=uci/{dataset}", f"--data_dir={args.data_dir}", f"--split={split}", *extra,
             *args.extra_flags]
    return run_binary(module, flags, pathlib.Path(args.workdir) / family / dataset / f"split_{split}")


def run_jobs(run, jobs, workers: int) -> tuple:
    """`run(*job)` for every job (a tuple), `workers` at a time, progress on stderr.

    Returns:
      ({job: metrics} of the runs that finished, {job: message} of those that raised `RunFailed`): a failed run
      is reported on stderr and the others go on.
    """
    start = time.time()
    finished, failed = {}, {}
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(run, *job): job for job in jobs}
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            job = futures[future]
            label = " ".join(str(part) for part in job)
            try:
                finished[job] = future.result()
            except RunFailed as e:
                failed[job] = str(e)
                print(f"[{done}/{len(jobs)}] {label} FAILED ({time.time() - start:.0f}s): {e}", file=sys.stderr)
                continue
            print(f"[{done}/{len(jobs)}] {label} ({time.time() - start:.0f}s)", file=sys.stderr)
    return finished, failed


def summarize(finished: dict, failed: dict, families, datasets) -> dict:
    """{family: {dataset: summary}} from `run_jobs`' results keyed (family, dataset, split): the mean and standard
    error over the splits that finished (`training.metrics.aggregate`; `num_splits` counts them) and
    `failed_splits`."""
    from training import metrics as metrics_lib

    results = {}
    for f in families:
        for d in datasets:
            runs = [m for (ff, dd, _), m in sorted(finished.items()) if (ff, dd) == (f, d)]
            summary = metrics_lib.aggregate(runs) if runs else {"num_splits": 0}
            summary["failed_splits"] = sum(1 for ff, dd, _ in failed if (ff, dd) == (f, d))
            results.setdefault(f, {})[d] = summary
    return results


def cell(summary: dict, metric: str, digits: int = 2) -> str:
    """`mean ± stderr` of `metric` over the splits that finished, noting how many failed; "—" when none finished
    (a summary without `failed_splits` had none fail)."""
    failed = summary.get("failed_splits", 0)
    if not summary.get("num_splits") or metric not in summary:
        return "—" + (f" ({failed} of {failed} splits failed)" if failed else "")
    text = _cell(summary[metric], summary[f"{metric}_stderr"], digits)
    return text + (f" ({failed} of {failed + summary['num_splits']} splits failed)" if failed else "")


def _cell(mean, stderr, digits=2):
    return f"{mean:.{digits}f} ± {stderr:.{digits}f}"


def table(results: dict, families, datasets, metric: str, column: int) -> str:
    """A markdown table of `metric` (rmse or nll): ours (per family) against the published columns."""
    header = ["dataset"] + [f"ours: {f}" for f in families] + list(PUBLISHED)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for d in datasets:
        digits = 3 if d in ("kin8nm", "naval-propulsion-plant") and metric == "rmse" else 2
        row = [d]
        for f in families:
            row.append(cell(results[f][d], f"test/{metric}", digits))
        for source in PUBLISHED.values():
            mean, stderr = source[d][column], source[d][column + 1]
            row.append(_cell(mean, stderr, digits))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "datasets"))
    parser.add_argument("--workdir", default="/tmp/vizoo_uci_benchmark")
    parser.add_argument("--families", default="linear,bnn")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--splits", type=int, default=0, help="first N splits only (0: all)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--reference", default="", help="a family to compare the others with, split by split "
                        "(test NLL differences)")
    parser.add_argument("extra_flags", nargs="*", help="more flags for every binary, after --")
    args = parser.parse_args()

    from training import data as data_lib

    families, datasets = args.families.split(","), args.datasets.split(",")
    jobs = []
    for d in datasets:
        n = data_lib.num_uci_splits(d, args.data_dir)
        jobs += [(f, d, k) for f in families for k in range(min(n, args.splits or n))]
    finished, failed = run_jobs(lambda f, d, k: run_split(f, d, k, args), jobs, args.jobs)
    results = summarize(finished, failed, families, datasets)
    (pathlib.Path(args.workdir) / "summary.json").write_text(json.dumps(results, indent=2, sort_keys=True))
    seconds = {f: [m["train/seconds"] for (ff, _, _), m in finished.items() if ff == f and "train/seconds" in m]
               for f in families}
    print(f"Test RMSE (original units), mean ± standard error over splits:\n")
    print(table(results, families, datasets, "rmse", 0))
    print(f"\nTest NLL (nats per point, lower is better), mean ± standard error over splits:\n")
    print(table(results, families, datasets, "nll", 2))
    print("\nmean training seconds per split: " + ", ".join(
        f"{f} {sum(s) / len(s):.1f}" if s else f"{f} —" for f, s in seconds.items()))
    print("splits per dataset: " + ", ".join(
        f"{d} {len([j for j in jobs if j[1] == d]) // len(families)}" for d in datasets))
    if args.reference:
        print(f"\nTest NLL against {args.reference}, split by split (positive: worse than {args.reference}):\n")
        print(comparison(finished, args.reference, [f for f in families if f != args.reference], datasets))
    print_failures(failed)


def comparison(finished: dict, reference: str, others, datasets) -> str:
    """A markdown table: per dataset and family, the mean over splits of test NLL minus the reference family's
    on the same split, and the largest such difference (the worst split)."""
    header = ["dataset", "splits"] + [f"{f}: mean, worst split" for f in others]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for d in datasets:
        splits = sorted(k for (f, dd, k) in finished if f == reference and dd == d)
        row = [d, str(len(splits))]
        for f in others:
            gaps = [finished[(f, d, k)]["test/nll"] - finished[(reference, d, k)]["test/nll"]
                    for k in splits if (f, d, k) in finished]
            row.append(f"{sum(gaps) / len(gaps):+.3f}, {max(gaps):+.3f}" if gaps else "—")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def print_failures(failed: dict) -> None:
    """Lists the runs that failed under the tables (their errors went to stderr as they happened)."""
    if failed:
        print(f"\n{len(failed)} run(s) failed and are left out of the means above: "
              + ", ".join(" ".join(str(part) for part in job) for job in sorted(failed, key=str))
              + " (errors on stderr; running the benchmark again retries them)")


if __name__ == "__main__":
    main()
