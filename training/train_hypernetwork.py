"""Trains a Bayesian meta-network (unit codes + hypernetwork, or a flow over weight scales); see models/hypernetwork.py.

    python -m training.train_hypernetwork --dataset=uci/yacht --data_dir=../shared/datasets --split=all \
        --variant=meta_representation --workdir=/tmp/meta
    python -m training.train_hypernetwork --flagfile=configs/hypernetwork_mnist.flags --data_dir=../shared/datasets \
        --workdir=/tmp/meta_mnist
"""

from absl import flags

from models import bayesian_dense, bayesian_layers, hypernetwork
from training import flags as flags_lib
from training import train_lib

# --learning_rate's default depends on --variant (hypernetwork.TRAINING_DEFAULTS); the rest are the same for both.
_DEFAULTS = hypernetwork.TRAINING_DEFAULTS["meta_representation"]
flags_lib.define_shared_flags(dataset="uci/concrete", train_steps=_DEFAULTS["train_steps"],
                              batch_size=_DEFAULTS["batch_size"], clip_norm=_DEFAULTS["clip_norm"],
                              learning_rate=None)
flags.FLAGS["learning_rate"].help += " Default by --variant: " + ", ".join(
    f"{variant} {defaults['learning_rate']:g}" for variant, defaults in hypernetwork.TRAINING_DEFAULTS.items()) + "."
flags.DEFINE_enum("variant", "meta_representation", list(hypernetwork.VARIANTS),
                  "meta_representation (Karaletsos et al. 2018) or bayesian_hypernetwork (Krueger et al. 2017).")
flags.DEFINE_list("hidden_units", [], "Hidden widths of the target network (default: as the Bayesian dense "
                  "networks, 50 for UCI, 100 for protein).")
flags.DEFINE_enum("head", "heteroscedastic", list(hypernetwork.HEADS), "Regression noise model.")
flags.DEFINE_integer("code_dim", 8, "meta_representation: size D of each unit's code.", lower_bound=1)
flags.DEFINE_integer("hyper_units", 32, "Hidden width of the hypernetwork g or of each flow coupling.",
                     lower_bound=1)
flags.DEFINE_integer("flow_layers", 4, "bayesian_hypernetwork: RealNVP couplings.", lower_bound=1)
flags.DEFINE_float("prior_scale", 0.1, "bayesian_hypernetwork: s of the N(1, s^2) prior on unit scales.")
flags.DEFINE_float("init_code_scale", None, "Initial posterior standard deviation of codes or scales "
                   "(default: 0.05 for meta_representation, 0.01 for bayesian_hypernetwork).")
flags.DEFINE_float("input_code_prior_scale", 1.0, "meta_representation: s_in of the N(0, s_in^2) prior on the "
                   "input units' codes (the other codes: N(0, 1)).")
flags.DEFINE_integer("mc_samples", 1, "Posterior samples per training step.", lower_bound=1)
flags.DEFINE_enum("estimator", "local_reparameterization", list(bayesian_layers.ESTIMATORS), "bayesian_hypernetwork: gradient "
                  "estimator of the mean-field weights given the scales.")
FLAGS = flags.FLAGS


def main():
    train_config = flags_lib.train_config_from_flags(
        learning_rate=hypernetwork.TRAINING_DEFAULTS[FLAGS.variant]["learning_rate"])
    model_config = flags_lib.model_config(
        hypernetwork.Config, variant=FLAGS.variant, head=FLAGS.head, code_dim=FLAGS.code_dim,
        hyper_units=FLAGS.hyper_units, flow_layers=FLAGS.flow_layers, prior_scale=FLAGS.prior_scale,
        init_code_scale=FLAGS.init_code_scale,
        input_code_prior_scale=FLAGS.input_code_prior_scale, mc_samples=FLAGS.mc_samples, estimator=FLAGS.estimator,
        hidden_units=FLAGS.hidden_units or bayesian_dense.default_hidden_units(train_config.dataset))
    train_lib.train_and_evaluate(train_config, model_config, hypernetwork.build_model)


def run():
    flags_lib.run_binary(main)


if __name__ == "__main__":
    run()
