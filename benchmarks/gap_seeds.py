"""In-between uncertainty of a Bayesian meta-network across seeds, with and without XLA.

Trains `models.hypernetwork` (`--variant`, meta-representation by default, 1-50-50-2) on the 1-D gap set (`toy/gap`) through the shared
loop with the training binary's defaults (`hypernetwork.TRAINING_DEFAULTS`, as `tests/models/test_hypernetwork.py`),
once per seed and per `--jit_compile` setting, and reads each export's epistemic standard deviation on a grid of x
in [-6, 6] at S = 400: its mean inside the gap (|x| < 1), on the data (2 < |x| < 3.5) and far outside (|x| > 5),
the ratio gap / data, and the run's test ELBO and test NLL (the test inputs are a grid over [-6, 6]: the gap and
the outer regions count). A ratio of 1.0 with the same small value everywhere is a dead network: only the output
bias stays uncertain, so the band is flat.

    python benchmarks/gap_seeds.py [--variant=meta_representation] [--seeds=0,...,9] [--xla_seeds=0,...,9]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import serving  # noqa: E402

if __name__ == "__main__":  # as the training binaries run; a test importing `epistemic_by_region` keeps its own
    serving.apply_runtime_defaults()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import logging  # noqa: E402

from models import hypernetwork  # noqa: E402
from training import config as config_lib  # noqa: E402
from training import train_lib  # noqa: E402


def epistemic_by_region(export_path: str) -> dict:
    """Mean epistemic standard deviation of the export's predictive per region of x (`gap`, `data`, `outside`;
    also what `tests/models/test_hypernetwork.py` asserts on)."""
    loaded = tf.saved_model.load(export_path)
    x = np.linspace(-6, 6, 241, dtype=np.float32)[:, None]
    out = loaded.signatures["predict_mc"](x=tf.constant(x), num_samples=tf.constant(400), seed=tf.constant([1, 2]))
    epistemic = out["epistemic_stddev"].numpy()[:, 0]
    regions = {"gap": np.abs(x[:, 0]) < 1.0, "data": (np.abs(x[:, 0]) > 2.0) & (np.abs(x[:, 0]) < 3.5),
               "outside": np.abs(x[:, 0]) > 5.0}
    return {name: float(epistemic[mask].mean()) for name, mask in regions.items()}


def run(variant: str, seed: int, jit_compile: bool, data_dir: str) -> tuple:
    with tempfile.TemporaryDirectory() as directory:
        base = pathlib.Path(directory)
        config = config_lib.TrainConfig(dataset="toy/gap", data_dir=data_dir, workdir=str(base / "work"),
                                        export_base=str(base / "export"), num_samples=50, seed=seed,
                                        jit_compile=jit_compile, **hypernetwork.TRAINING_DEFAULTS[variant])
        metrics = train_lib.train_and_evaluate(config, hypernetwork.Config(variant=variant, hidden_units=(50, 50)),
                                               hypernetwork.build_model)
        return epistemic_by_region(metrics["export_path"]), metrics


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="meta_representation", choices=hypernetwork.VARIANTS)
    parser.add_argument("--seeds", default=",".join(map(str, range(10))))
    parser.add_argument("--xla_seeds", default=",".join(map(str, range(10))))
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "datasets"))
    args = parser.parse_args()
    logging.set_verbosity(logging.ERROR)
    defaults = ", ".join(f"{k} {v}" for k, v in hypernetwork.TRAINING_DEFAULTS[args.variant].items())
    print(f"machine: {os.cpu_count()} cores; python benchmarks/gap_seeds.py --variant={args.variant}; 1-50-50-2 on "
          f"toy/gap ({defaults})\n")
    print("| step | seed | epistemic in the gap | on the data | outside | gap / data | test ELBO | test NLL | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    ratios, elbos = [], []
    for jit_compile, seeds in ((False, args.seeds), (True, args.xla_seeds)):
        for seed in [int(s) for s in seeds.split(",") if s]:
            start = time.time()
            band, metrics = run(args.variant, seed, jit_compile, args.data_dir)
            ratios.append(band["gap"] / band["data"])
            elbos.append(metrics["test/elbo"])
            print(f"| {'XLA' if jit_compile else 'plain'} | {seed} | {band['gap']:.4f} | {band['data']:.4f} | "
                  f"{band['outside']:.4f} | {ratios[-1]:.2f} | {metrics['test/elbo']:.2f} | "
                  f"{metrics['test/nll']:.2f} | {time.time() - start:.0f} |", flush=True)
    print(f"\n{len(ratios)} runs: gap / data {min(ratios):.2f} at least, {sum(r >= 2 for r in ratios)} of "
          f"{len(ratios)} at 2 or more; median test ELBO {float(np.median(elbos)):.2f}")


if __name__ == "__main__":
    main()
