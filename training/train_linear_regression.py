"""Trains Bayesian linear regression (exact, CAVI or gradient VI) on a UCI dataset; see models/linear_regression.py.

    python -m training.train_linear_regression --dataset=uci/concrete --data_dir=../shared/datasets \
        --inference=cavi --workdir=/tmp/blr --export_base=/tmp/blr/export

The predictive samples nothing (the weights integrate out in closed form, the noise precision by quadrature), so
the shared `--num_samples` changes neither the evaluation nor the export's answers here.
"""

from absl import flags

from models import linear_regression
from training import flags as flags_lib
from training import train_lib

flags_lib.define_shared_flags(dataset="uci/concrete", epochs=200, batch_size=128, learning_rate=0.05)
flags.DEFINE_enum("inference", "exact", list(linear_regression.INFERENCE_METHODS),
                  "exact (type-II ML), cavi (mean-field coordinate ascent) or gradient (reparameterized VI).")
flags.DEFINE_enum("surrogate", "full", list(linear_regression.SURROGATES),
                  "Gradient VI's q(w): full-covariance Gaussian (mu + L eps) or diagonal.")
flags.DEFINE_list("alpha_prior", ["0.01", "0.01"], "Gamma (concentration, rate) prior of the weight precision.")
flags.DEFINE_list("beta_prior", ["0.01", "0.01"], "Gamma (concentration, rate) prior of the noise precision.")
flags.DEFINE_integer("mc_samples", 16, "Gradient VI: posterior samples per step.", lower_bound=1)
FLAGS = flags.FLAGS


def main():
    model_config = flags_lib.model_config(
        linear_regression.Config, inference=FLAGS.inference, surrogate=FLAGS.surrogate,
        mc_samples=FLAGS.mc_samples, alpha_prior=FLAGS.alpha_prior, beta_prior=FLAGS.beta_prior)
    train_lib.train_and_evaluate(flags_lib.train_config_from_flags(), model_config, linear_regression.build_model)


def run():
    flags_lib.run_binary(main)


if __name__ == "__main__":
    run()
