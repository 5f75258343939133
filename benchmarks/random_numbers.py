"""The random numbers of one flipout training step: ours against the kernels TFP's layers use.

    python benchmarks/random_numbers.py [--batch_size=128] [--widths=784,400,400,10]

A flipout step of a dense network draws, per layer, a weight-sized standard normal perturbation, a bias-sized one,
and random signs for every input and every output of every example. Measured in one run, alternating the two sides
call by call, as the median wall time of drawing one step's worth:

  * normals: `bayesian_layers.normal` (Box-Muller over whole tensors) against `tf.random.stateless_normal`
    (TF's kernel, what `tfd.Normal.sample` and so `tfp.layers.DenseFlipout` call);
  * signs: `bayesian_layers.rademacher` (eight to a random byte) against `tfp.random.rademacher` (one uniform
    integer per sign, what `DenseFlipout` calls).

It prints both times per draw and their ratios.
"""

import argparse
import os
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_probability as tfp  # noqa: E402

from models import bayesian_layers  # noqa: E402


def _zeros(shape, seed):
    return tf.zeros(shape)


def _ones(shape, seed):
    return tf.ones(shape)


def _tfp_rademacher(shape, seed):
    return tfp.random.rademacher(shape, seed=seed)


def step_draws(normal, signs, widths, batch_size):
    """A tf.function drawing one flipout step's normals and signs for a dense network of `widths`."""
    seed = tf.constant([3, 4])

    @tf.function
    def draw(step):
        seeds = tf.unstack(tfp.random.split_seed(tf.stack([seed[0], step]), n=4 * (len(widths) - 1)))
        out = []
        for layer, (fan_in, units) in enumerate(zip(widths[:-1], widths[1:])):
            kernel, bias, inputs, outputs = seeds[4 * layer: 4 * layer + 4]
            out += [normal([fan_in, units], kernel), normal([units], bias),
                    signs([batch_size, fan_in], inputs), signs([batch_size, units], outputs)]
        return out

    return draw


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", default="784,400,400,10")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    tf.get_logger().setLevel("ERROR")  # each side is its own tf.function, traced once
    widths = [int(w) for w in args.widths.split(",")]
    num_normals = sum(i * o + o for i, o in zip(widths[:-1], widths[1:]))
    num_signs = args.batch_size * sum(i + o for i, o in zip(widths[:-1], widths[1:]))
    sides = {
        "normals, ours": (step_draws(bayesian_layers.normal, _ones, widths, args.batch_size), num_normals),
        "normals, TF kernel": (step_draws(tf.random.stateless_normal, _ones, widths, args.batch_size), num_normals),
        "signs, ours": (step_draws(_zeros, bayesian_layers.rademacher, widths, args.batch_size), num_signs),
        "signs, tfp.random.rademacher": (step_draws(_zeros, _tfp_rademacher, widths, args.batch_size), num_signs),
    }
    # The other half of each side's draws is a constant fill of the same shapes, timed as its own baseline so
    # that only the random part is compared.
    fill = step_draws(_zeros, _ones, widths, args.batch_size)
    times = {name: [] for name in list(sides) + ["fill"]}
    for name, (fn, _) in sides.items():
        fn(tf.constant(0))
    fill(tf.constant(0))
    for r in range(args.rounds):
        order = list(sides.items()) + [("fill", (fill, 0))]
        for name, (fn, _) in (order if r % 2 == 0 else order[::-1]):
            start = time.perf_counter()
            fn(tf.constant(r))
            times[name].append(time.perf_counter() - start)
    fill_s = float(np.median(times["fill"]))
    print(f"machine: {os.cpu_count()} cores; TensorFlow {tf.__version__}; one flipout step of a "
          f"{'-'.join(map(str, widths))} network at batch {args.batch_size}: {num_normals:,} normals, "
          f"{num_signs:,} signs; medians of {args.rounds} alternating calls, less a constant fill of the same "
          f"shapes ({1e3 * fill_s:.2f} ms)\n")
    print("| draw | ms per step | ns per number |")
    print("|---|---|---|")
    net = {}
    for name, (_, count) in sides.items():
        net[name] = max(float(np.median(times[name])) - fill_s, 1e-9)
        print(f"| {name} | {1e3 * net[name]:.2f} | {1e9 * net[name] / count:.1f} |")
    print(f"\nnormals: ours {net['normals, TF kernel'] / net['normals, ours']:.2f}x the TF kernel's speed; "
          f"signs: ours {net['signs, tfp.random.rademacher'] / net['signs, ours']:.2f}x tfp.random.rademacher's")


if __name__ == "__main__":
    main()
