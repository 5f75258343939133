"""Trains a variational autoencoder (Gaussian, full-covariance, Gumbel-softmax or stick-breaking latent); see
models/vae.py.

    python -m training.train_vae --flagfile=configs/vae_mnist.flags --data_dir=../shared/datasets \
        --workdir=/tmp/vae --export_base=/tmp/models/vae
    python -m training.train_vae --dataset=binarized_mnist --latent=gumbel_softmax --data_dir=../shared/datasets \
        --workdir=/tmp/vae_gumbel
    python -m training.train_vae --dataset=binarized_mnist --latent=kumaraswamy --latent_dim=50 --gem_alpha=5 \
        --train_importance_samples=5 --data_dir=../shared/datasets --workdir=/tmp/vae_stick_breaking

`--dataset=mnist` binarizes dynamically (a new Bernoulli draw every step), `--dataset=binarized_mnist` is
Larochelle's fixed binarization. `--num_samples` is K of the exported `serving_default` log-likelihood.
"""

from absl import flags

from models import vae
from training import flags as flags_lib
from training import train_lib

flags_lib.define_shared_flags(dataset="mnist", epochs=10, batch_size=100, learning_rate=1e-3, num_samples=100)
flags.DEFINE_enum("latent", "normal", list(vae.LATENTS), "q(z|x): diagonal Normal, full-covariance Normal, M "
                  "categoricals of K classes relaxed by Gumbel-softmax, or kumaraswamy: K stick-breaking weights "
                  "with Kumaraswamy fractions and a GEM prior.")
flags.DEFINE_integer("latent_dim", 50, "D, size of a Gaussian latent; kumaraswamy: K, the truncation level (at "
                     "least 2).", lower_bound=1)
flags.DEFINE_integer("categories", 10, "gumbel_softmax: K, categories per variable.", lower_bound=2)
flags.DEFINE_integer("latent_variables", 20, "gumbel_softmax: M, categorical variables.", lower_bound=1)
flags.DEFINE_list("hidden_units", ["200", "200"], "Encoder hidden widths (the decoder mirrors them); mlp only.")
flags.DEFINE_enum("activation", "tanh", list(vae.ACTIVATIONS), "Hidden-layer nonlinearity.")
flags.DEFINE_enum("arch", "mlp", list(vae.ARCHS), "mlp, or conv (two stride-2 convolutions and transposes).")
flags.DEFINE_enum("likelihood", "bernoulli", list(vae.LIKELIHOODS),
                  "p(x|z): bernoulli over binary pixels, or continuous_bernoulli over grey levels.")
flags.DEFINE_float("gem_alpha", 5.0, "kumaraswamy: alpha of the GEM prior, fractions v_k ~ Beta(1, alpha).")
flags.DEFINE_float("beta", 1.0, "Weight of the rate (KL) in training; 1 is the ELBO.", lower_bound=0.0)
flags.DEFINE_integer("train_importance_samples", 1, "K of the training objective, the importance-weighted bound "
                     "L_K of Burda et al. (2016); 1 is the ELBO.", lower_bound=1)
flags.DEFINE_integer("eval_importance_samples", 50, "K of the importance-weighted test NLL (5000 in the "
                     "published tables).", lower_bound=1)
flags.DEFINE_integer("eval_examples", 0, "Compute the test NLL on N evenly spaced test examples only (0: "
                     "all); for quick checks.", lower_bound=0)
flags.DEFINE_float("temperature_init", 1.0, "gumbel_softmax: initial temperature tau_0.")
flags.DEFINE_float("temperature_min", 0.5, "gumbel_softmax: floor of the temperature.")
flags.DEFINE_float("temperature_decay", 1e-4, "gumbel_softmax: r of tau_t = max(min, tau_0 exp(-r t)), t in steps.")
FLAGS = flags.FLAGS


def main():
    train_config = flags_lib.train_config_from_flags()
    model_config = flags_lib.model_config(
        vae.Config, latent=FLAGS.latent, latent_dim=FLAGS.latent_dim, categories=FLAGS.categories,
        latent_variables=FLAGS.latent_variables, hidden_units=FLAGS.hidden_units, activation=FLAGS.activation,
        arch=FLAGS.arch, likelihood=FLAGS.likelihood, gem_alpha=FLAGS.gem_alpha, beta=FLAGS.beta,
        train_importance_samples=FLAGS.train_importance_samples,
        eval_importance_samples=FLAGS.eval_importance_samples, eval_examples=FLAGS.eval_examples,
        temperature_init=FLAGS.temperature_init, temperature_min=FLAGS.temperature_min,
        temperature_decay=FLAGS.temperature_decay, seed=train_config.seed)
    train_lib.train_and_evaluate(train_config, model_config, vae.build_model)


def run():
    flags_lib.run_binary(main)


if __name__ == "__main__":
    run()
