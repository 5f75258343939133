"""The standard VAE on MNIST against the published rows of Burda, Grosse and Salakhutdinov (ICLR 2016).

Trains the model of `configs/vae_mnist.flags` (784-200-200-50, tanh, diagonal Gaussian latent, Bernoulli pixels,
one sample per step: the "VAE, k = 1" rows) with the training binary, once on dynamically binarized MNIST and once
on Larochelle's fixed binarization, and prints the test NLL -- minus the importance-weighted bound L_K with
K = `--eval_importance_samples` (5000, as published) -- next to the published numbers:

  * dynamic binarization: 86.76 nats (Burda et al., Table 1, VAE k = 1);
  * fixed binarization:   88.71 nats (Burda et al., Appendix D, Table 3, VAE k = 1).

Burda et al. trained 3280 epochs (batch 20, Adam, learning rate 1e-3 * 10^(-i/7) for 3^i epochs, i = 0..7); this
script trains `--epochs` epochs with the flagfile's batch size and cosine schedule, and prints the epochs and the
wall time it took beside the numbers, so a short run is not mistaken for the published protocol.

    python benchmarks/vae_mnist.py --data_dir=../shared/datasets --workdir=/tmp/vae_benchmark --epochs=100
    python benchmarks/vae_mnist.py --epochs=3 --eval_examples=2000   # a quick check: K=5000 on 2000 test images

Each run is a subprocess of `training.train_vae` in `<workdir>/<binarization>_e<epochs>_k<K>_n<examples>`; a
finished run is not repeated (its metrics.json is reused), so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]

# binarization -> (flagfile, published test NLL in nats, where it is published)
RUNS = {
    "dynamic": ("configs/vae_mnist.flags", 86.76, "Burda et al. Table 1"),
    "fixed": ("configs/vae_binarized_mnist.flags", 88.71, "Burda et al. App. D, Table 3"),
}
WALL_FILE = "benchmark_wall_seconds.json"


def run(binarization: str, args) -> dict:
    """Trains and evaluates one binarization (or reuses a finished run); returns its metrics and wall time."""
    flagfile, _, _ = RUNS[binarization]
    workdir = pathlib.Path(args.workdir) / (
        f"{binarization}_e{args.epochs}_k{args.eval_importance_samples}_n{args.eval_examples or 'all'}")
    metrics_path = workdir / "metrics.json"
    if not metrics_path.exists():
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1", PYTHONPATH=str(REPO))
        command = [sys.executable, "-m", "training.train_vae", f"--flagfile={flagfile}",
                   f"--data_dir={args.data_dir}", f"--workdir={workdir}", f"--epochs={args.epochs}",
                   f"--eval_importance_samples={args.eval_importance_samples}",
                   f"--eval_examples={args.eval_examples}", *args.extra_flags]
        print(f"running {binarization}: {' '.join(command[2:])}", file=sys.stderr)
        start = time.time()
        result = subprocess.run(command, cwd=REPO, env=env)  # its log and progress go to our stderr
        if result.returncode != 0:
            raise RuntimeError(f"{binarization} failed with exit code {result.returncode} (its log is above)")
        (workdir / WALL_FILE).write_text(json.dumps({"wall_seconds": time.time() - start}))
    metrics = json.loads(metrics_path.read_text())
    wall = workdir / WALL_FILE
    metrics["wall_seconds"] = json.loads(wall.read_text())["wall_seconds"] if wall.exists() else float("nan")
    metrics["workdir"] = str(workdir)
    return metrics


def _duration(seconds: float) -> str:
    if seconds != seconds:  # NaN: a run finished outside this script
        return "?"
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"


def table(results: dict, epochs: int) -> str:
    """A markdown table: ours against the published VAE (k = 1) rows."""
    header = ["binarization", "epochs", "training", "training + evaluation", "test ELBO", "test rate",
              "test distortion", "test NLL (ours)", "test NLL (published)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for binarization, m in results.items():
        _, published, source = RUNS[binarization]
        k, n = int(m["test/nll_importance_samples"]), int(m["test/nll_examples"])
        lines.append("| " + " | ".join([
            binarization, str(epochs), _duration(m["train/seconds"]), _duration(m["wall_seconds"]),
            f"{m['test/elbo']:.2f}", f"{m['test/rate']:.2f}", f"{m['test/distortion']:.2f}",
            f"{m['test/nll']:.2f} (K={k}, {n} images)", f"{published:.2f} ({source}, 3280 epochs)"]) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "datasets"))
    parser.add_argument("--workdir", default="/tmp/vizoo_vae_benchmark")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--eval_importance_samples", type=int, default=5000)
    parser.add_argument("--eval_examples", type=int, default=0,
                        help="the NLL on N evenly spaced test images (0: all 10,000, as published)")
    parser.add_argument("--binarizations", default="dynamic,fixed")
    parser.add_argument("extra_flags", nargs="*", help="more flags for the binary, after --")
    args = parser.parse_args()

    start = time.time()
    results = {b: run(b, args) for b in args.binarizations.split(",")}
    summary = pathlib.Path(args.workdir) / "summary.json"
    summary.write_text(json.dumps(results, indent=2, sort_keys=True))
    print("VAE (784-200-200-50, tanh, diagonal Gaussian latent, k = 1) on MNIST; nats per test image, "
          "NLL = -L_K (lower is better):\n")
    print(table(results, args.epochs))
    print(f"\nbenchmark wall time: {_duration(time.time() - start)} (runs reused from earlier invocations count "
          "as no time); figures and metrics.json in " + ", ".join(r["workdir"] for r in results.values()))


if __name__ == "__main__":
    main()
