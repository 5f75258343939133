"""Trains a Bayesian neural network (mean-field Gaussian weights); see models/bayesian_dense.py.

    python -m training.train_bnn --dataset=uci/kin8nm --data_dir=../shared/datasets --split=all \
        --estimator=flipout --workdir=/tmp/bnn
    python -m training.train_bnn --dataset=mnist --data_dir=../shared/datasets --workdir=/tmp/bnn_mnist
"""

from absl import flags

from models import bayesian_dense, bayesian_layers
from training import flags as flags_lib
from training import train_lib

flags_lib.define_shared_flags(dataset="uci/concrete", train_steps=10000, batch_size=32, learning_rate=1e-2)
flags.DEFINE_enum("estimator", "flipout", list(bayesian_layers.ESTIMATORS), "Gradient estimator of the ELBO.")
flags.DEFINE_list("hidden_units", [], "Hidden layer widths (default: the UCI protocol's 50, 100 for protein; "
                  "400,400 for images).")
flags.DEFINE_enum("arch", "mlp", list(bayesian_dense.ARCHS), "mlp, or lenet5 for images.")
flags.DEFINE_enum("head", "heteroscedastic", list(bayesian_dense.HEADS), "Regression noise model.")
flags.DEFINE_enum("prior", "normal", list(bayesian_dense.PRIORS), "Fixed N(0, s^2) or a learned s.")
flags.DEFINE_float("prior_scale", 1.0, "s of the N(0, s^2) weight prior.", lower_bound=0.0)
flags.DEFINE_float("init_rho", -5.0, "Initial softplus^-1 of the posterior scales.")
flags.DEFINE_integer("mc_samples", 1, "Weight samples per training step.", lower_bound=1)
FLAGS = flags.FLAGS


def main():
    train_config = flags_lib.train_config_from_flags()
    model_config = flags_lib.model_config(
        bayesian_dense.Config, estimator=FLAGS.estimator, arch=FLAGS.arch, head=FLAGS.head, prior=FLAGS.prior,
        prior_scale=FLAGS.prior_scale, init_rho=FLAGS.init_rho, mc_samples=FLAGS.mc_samples,
        hidden_units=FLAGS.hidden_units or bayesian_dense.default_hidden_units(train_config.dataset))
    train_lib.train_and_evaluate(train_config, model_config, bayesian_dense.build_model)


def run():
    flags_lib.run_binary(main)


if __name__ == "__main__":
    run()
