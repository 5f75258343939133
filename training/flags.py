"""The flags every training binary shares, and the thin `main` they all use.

A binary calls `define_shared_flags(**family_defaults)`, defines its own model flags, and hands `run_binary` a
function from parsed flags to a model config. Nothing below `main` reads `FLAGS`.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Callable

from absl import app, flags, logging

from training import config as config_lib
from training import xla_cache

FLAGS = flags.FLAGS


def define_shared_flags(**defaults) -> None:
    """Defines the shared flags; `defaults` overrides a default per family (e.g. `dataset="mnist"`)."""
    d = dataclasses.asdict(config_lib.TrainConfig())
    d.update(defaults)
    flags.DEFINE_string("dataset", d["dataset"],
                        "uci/<name> (bostonHousing, concrete, energy, kin8nm, naval-propulsion-plant, power-plant, "
                        "protein-tertiary-structure, wine-quality-red, yacht), mnist, fashion_mnist, "
                        "binarized_mnist, toy/gap (1-D regression with a gap), csv:PATH (your own table with a "
                        "header row; see --target), or a TFDS name.")
    flags.DEFINE_string("data_dir", d["data_dir"], "Directory holding uci/, mnist/, ... (the offline datasets).")
    flags.DEFINE_string("split", d["split"], "UCI standard train/test split index (a CSV table: the seed of its "
                        "random test rows), or 'all' to run every split and report mean and standard error.")
    flags.DEFINE_string("target", d["target"], "csv:PATH: the column to predict (required).")
    flags.DEFINE_list("features", d["features"], "csv:PATH: the input columns in order (default: every column "
                      "but the target).")
    flags.DEFINE_enum("task", d["task"], list(config_lib.TASKS), "csv:PATH: regression, or classification (labels "
                      "may be integers or strings).")
    flags.DEFINE_string("test_csv", d["test_csv"], "csv:PATH: a file of test rows with the same column names "
                        "(default: a random --test_fraction of the rows, chosen by --split).")
    flags.DEFINE_float("test_fraction", d["test_fraction"], "csv:PATH without --test_csv: the share of rows held "
                       "out for testing.", lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_float("input_tail", d["input_tail"], "Tables (UCI, toy/gap, csv:PATH): standardized features "
                       "beyond this many training standard deviations are compressed logarithmically, in training "
                       "and in the export, so a far row cannot drive the prediction linearly (0: plain "
                       "standardization).", lower_bound=0.0)
    flags.DEFINE_integer("epochs", d["epochs"], "Passes over the training data.", lower_bound=1)
    flags.DEFINE_integer("train_steps", d["train_steps"], "If positive, train for this many gradient steps "
                         "instead of --epochs (one budget that fits data sets of any size); --epochs given alone overrides a "
                         "family's default steps.", lower_bound=0)
    flags.DEFINE_integer("batch_size", d["batch_size"], "Global mini-batch size (split across replicas).",
                         lower_bound=1)
    flags.DEFINE_float("learning_rate", d["learning_rate"], "Adam's (initial) learning rate.", lower_bound=0.0)
    flags.DEFINE_enum("lr_schedule", d["lr_schedule"], list(config_lib.LR_SCHEDULES),
                      "constant, or cosine decay to zero over the run (the final iterate settles).")
    flags.DEFINE_float("clip_norm", d["clip_norm"], "Clip gradients to this global norm (0: no clipping).",
                       lower_bound=0.0)
    flags.DEFINE_integer("steps_per_execution", d["steps_per_execution"], "Training steps per call of the "
                         "compiled step function (fewer Python round trips; calls stop at epoch ends, except that "
                         "epochs shorter than this run whole, several to a call).",
                         lower_bound=1)
    flags.DEFINE_bool("jit_compile", d["jit_compile"],
                      "Run each call's --steps_per_execution steps as one XLA computation (one device only): "
                      "several times the steps per second for small networks (UCI sizes), slower for large ones; "
                      "compiling takes seconds.")
    flags.DEFINE_integer("seed", d["seed"], "Seeds data order, initialization and every Monte Carlo draw; in "
                         "[0, 2**31).")
    flags.DEFINE_string("workdir", d["workdir"] or None, "Checkpoints, TensorBoard logs, metrics.json, plots.")
    flags.DEFINE_string("export_base", d["export_base"], "If set, export a new SavedModel version under it "
                        "(<export_base>/<version>/saved_model.pb).")
    flags.DEFINE_integer("num_samples", d["num_samples"], "Posterior samples S for evaluation and for the "
                         "exported serving_default signature.", lower_bound=1)
    flags.DEFINE_enum("strategy", d["strategy"], list(config_lib.STRATEGIES),
                      "tf.distribute strategy: default (one device), mirrored (all local devices) or "
                      "multi_worker (the cluster in TF_CONFIG; run the same command on every worker).")
    flags.DEFINE_float("kl_warmup_epochs", d["kl_warmup_epochs"], "Epochs over which the KL weight rises "
                       "linearly from 0 to 1 (0: no warm-up).", lower_bound=0.0)
    flags.DEFINE_float("validation_fraction", d["validation_fraction"], "Fraction of the training split held "
                       "out as valid/ metrics for tuning (never the test split).", lower_bound=0.0, upper_bound=0.99)
    flags.DEFINE_integer("checkpoint_every_steps", d["checkpoint_every_steps"], "Also checkpoint every this many "
                         "steps (0: at the end of each epoch only).", lower_bound=0)
    flags.DEFINE_integer("log_every_steps", d["log_every_steps"], "TensorBoard summaries every this many steps "
                         "(0: once per epoch).", lower_bound=0)
    flags.DEFINE_integer("eval_batch_size", d["eval_batch_size"], "Examples per evaluation batch.", lower_bound=1)
    flags.DEFINE_integer("train_eval_examples", d["train_eval_examples"], "train/ metrics use at most this many "
                         "training examples, a fixed prefix (0: no train/ metrics).", lower_bound=0)
    flags.DEFINE_string("ood_dataset", d["ood_dataset"], "Classifiers: the unseen data set of the "
                        "out-of-distribution AUROC (auto: Fashion-MNIST for MNIST and back; none: skip).")
    flags.mark_flag_as_required("workdir")


def train_config_from_flags(**fallbacks) -> config_lib.TrainConfig:
    """The shared flags as a validated `TrainConfig`; `fallbacks` gives the values of flags left at None (a family
    whose default depends on another of its flags defines the shared flag with a None default).

    A family whose default budget is `--train_steps` (steps fit data sets of any size) still trains for
    `--epochs` when that is given and `--train_steps` is not; given both (say `--epochs` in a flagfile and
    `--train_steps` on the command line), a positive `--train_steps` decides, as its help says.
    """
    fields = {f.name: getattr(FLAGS, f.name) for f in dataclasses.fields(config_lib.TrainConfig)}
    fields.update({name: value for name, value in fallbacks.items() if fields[name] is None})
    if FLAGS["epochs"].present and not FLAGS["train_steps"].present:
        fields["train_steps"] = 0
    return config_lib.TrainConfig(**fields).validate()


def model_config(cls, **values):
    """Builds a family's config dataclass; a bad value becomes a `ConfigError` naming its flag."""
    for name, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise config_lib.ConfigError(f"--{name} must be a finite number, got {value}")
    try:
        return cls(**values)
    except ValueError as e:
        message = str(e)
        # The longest name the message starts with: "prior_scale must be ..." is about --prior_scale, not --prior.
        flag = max((name for name in values if message.startswith(name + " ")), key=len, default=None)
        raise config_lib.ConfigError(f"--{flag}: {message}" if flag else message) from e
    except TypeError as e:
        raise config_lib.ConfigError(str(e)) from e


def run_binary(main: Callable[[], object]) -> None:
    """Runs `main` under absl; bad flags and missing data end the process with a one-line error, exit code 2."""
    from training.data import DatasetError
    from training.train_lib import TrainingDivergedError

    def _main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        try:
            main()
        except (config_lib.ConfigError, DatasetError) as e:
            logging.error("%s", e)
            sys.stderr.write(f"error: {e}\n")
            sys.exit(2)
        except TrainingDivergedError as e:  # not a bad flag, but a one-line answer too
            logging.error("%s", e)
            sys.stderr.write(f"error: training diverged: {e}\n")
            sys.exit(1)

    def parse(argv):
        argv = app.parse_flags_with_usage(argv)
        if FLAGS.jit_compile:
            # Before absl's init callbacks: TensorFlow's list its devices, which starts the runtime and has it read
            # TF_XLA_FLAGS.
            xla_cache.use_persistent_cache()
        return argv

    app.run(_main, flags_parser=parse)
