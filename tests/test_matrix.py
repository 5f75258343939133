"""Every family on every local data set it can take: train, evaluate, export, and answer without TFP.

One cell per (family, data set): the library path of a training binary (`train_lib.train_and_evaluate`, as
`training/train_<family>.py` calls it) at a tiny budget, on the real data in `$VIZOO_DATA_DIR`:

  * regression families (Bayesian linear regression by exact evidence, CAVI and gradient VI; the mean-field
    network with each estimator; both meta-networks) on the nine UCI sets and toy/gap: one feature (toy/gap), a
    constant column (naval), many rows (protein);
  * classifiers (the mean-field network, both meta-networks) on MNIST and Fashion-MNIST, each with the other as
    its out-of-distribution set;
  * the VAE, each latent, on MNIST, Fashion-MNIST and binarized MNIST.

Every cell evaluates with an eval batch that splits its test set into three batches, the last one shorter, so
evaluation runs traced in a `tf.function` and meets a ragged batch. Every export is then loaded in a process that
cannot import TensorFlow Probability (`tests/export_answers.py`, one process per pytest worker) and each of its
signatures is called on real examples: finite answers of the shapes the signature contract gives. A family that
cannot take a data set (no labels, not images, ...) refuses it before training, naming `--dataset`.
"""

import dataclasses
import json
import math
import pathlib
import queue
import subprocess
import sys
import threading

import numpy as np
import pytest

from models import bayesian_dense
from models import hypernetwork
from models import linear_regression
from models import vae
from serving import export as export_lib
from training import config as config_lib
from training import data as data_lib
from training import train_lib

REGRESSION_SETS = tuple(f"uci/{name}" for name in data_lib.UCI_DATASETS) + data_lib.TOY_DATASETS
CLASSIFICATION_SETS = ("mnist", "fashion_mnist")
IMAGE_SETS = data_lib.IMAGE_DATASETS
ALL_SETS = REGRESSION_SETS + IMAGE_SETS

# Tiny models of each family: a few units, and the family's defaults otherwise.
_NETWORK = dict(hidden_units=(8,))
FAMILIES = {
    **{f"linear_{inference}": (linear_regression.build_model,
                               linear_regression.Config(inference=inference, mc_samples=2), REGRESSION_SETS)
       for inference in linear_regression.INFERENCE_METHODS},
    **{f"bnn_{estimator}": (bayesian_dense.build_model, bayesian_dense.Config(estimator=estimator, **_NETWORK),
                            REGRESSION_SETS + CLASSIFICATION_SETS)
       for estimator in ("flipout", "reparameterization", "local_reparameterization")},
    "meta_representation": (hypernetwork.build_model, hypernetwork.Config(
        variant="meta_representation", code_dim=2, hyper_units=4, **_NETWORK), REGRESSION_SETS + CLASSIFICATION_SETS),
    "bayesian_hypernetwork": (hypernetwork.build_model, hypernetwork.Config(
        variant="bayesian_hypernetwork", hyper_units=4, flow_layers=2, **_NETWORK),
                              REGRESSION_SETS + CLASSIFICATION_SETS),
    **{f"vae_{latent}": (vae.build_model, vae.Config(
        latent=latent, latent_dim=2, categories=3, latent_variables=2, hidden_units=(8,), eval_importance_samples=2),
                         IMAGE_SETS)
       for latent in vae.LATENTS},
}
CELLS = [(family, dataset) for family, (_, _, sets) in FAMILIES.items() for dataset in sets]
REFUSED = [(family, dataset) for family, (_, _, sets) in FAMILIES.items() for dataset in ALL_SETS
           if dataset not in sets]

EXAMPLES = 5  # examples sent to each export
ANSWER_SECONDS = 120

@pytest.fixture(scope="module")
def loaded():
    """Data sets by (name, split), loaded once for this module's tests in a process (MNIST takes about a second to
    load, and a classifier loads its out-of-distribution set too); dropped after them."""
    cache = {}
    yield cache
    cache.clear()


@pytest.fixture
def cached_data(monkeypatch, loaded):
    """`data_lib.load` answered from `loaded`; each call gets its own `Dataset` around the shared arrays."""
    load = data_lib.load

    def cached(name, data_dir, split=0, csv=None, input_tail=data_lib.INPUT_TAIL):
        key = (name, split, csv, input_tail)
        if key not in loaded:
            loaded[key] = load(name, data_dir, split, csv, input_tail)
        return dataclasses.replace(loaded[key])

    monkeypatch.setattr(data_lib, "load", cached)
    return cached


class _Answerer:
    """The `tests/export_answers.py` process: one JSON request and one JSON reply a line."""

    def __init__(self, log_path: pathlib.Path):
        self._log = open(log_path, "w+", encoding="utf-8")
        self._process = subprocess.Popen(
            [sys.executable, str(pathlib.Path(__file__).with_name("export_answers.py"))], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._log, text=True)
        self._lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._ready = False

    def _read(self):
        for line in self._process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _next(self) -> dict:
        try:
            line = self._lines.get(timeout=ANSWER_SECONDS)
        except queue.Empty:
            line = None
        if line is None:
            self._log.seek(0)
            raise RuntimeError(f"the export-answering process gave no answer; its stderr:\n{self._log.read()[-3000:]}")
        return json.loads(line)

    def answer(self, export: str, x_path: pathlib.Path) -> dict:
        if not self._ready:
            assert self._next() == {"ready": True}
            self._ready = True
        self._process.stdin.write(json.dumps({"export": export, "x": str(x_path)}) + "\n")
        self._process.stdin.flush()
        return self._next()

    def close(self):
        self._process.stdin.close()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
        self._log.close()


@pytest.fixture(scope="session")
def answerer(tmp_path_factory):
    process = _Answerer(tmp_path_factory.mktemp("export_answers") / "stderr.txt")
    yield process
    process.close()


def _ragged_eval_batch(num_examples: int) -> int:
    """An eval batch that cuts `num_examples` into three batches with a shorter last one."""
    batch = num_examples // 3 + 1
    while num_examples % batch == 0:
        batch += 1
    assert num_examples > batch and num_examples % batch
    return batch


def _expected_shapes(family: str, model_config, dataset) -> dict:
    """The contract's output shapes of the signatures every export of the family's task has."""
    n = EXAMPLES
    if family.startswith("vae_"):
        latent = list(model_config.latent_shape)
        return {"serving_default": {"elbo": [n], "log_likelihood": [n], "latent_mean": [n] + latent,
                                    "latent_stddev": [n] + latent},
                "log_likelihood": {"log_likelihood": [n], "elbo": [n]},
                "reconstruct": {"mean": [n, 28, 28, 1], "stddev": [n, 28, 28, 1]},
                "sample": {"images": [3, 28, 28, 1], "z": [3] + latent}}
    if dataset.task == data_lib.REGRESSION:
        outputs = {name: [n, 1] for name in export_lib.REGRESSION_OUTPUTS}
        return {"serving_default": outputs, "predict_mc": outputs, "regress": {"outputs": [n, 1]}}
    outputs = {"probabilities": [n, 10], **{name: [n] for name in export_lib.CLASSIFICATION_OUTPUTS[1:]}}
    return {"serving_default": outputs, "predict_mc": outputs,
            "classify": {"classes": [n, 10], "scores": [n, 10]}}


@pytest.mark.parametrize("family, dataset", CELLS, ids=[f"{f}-{d}" for f, d in CELLS])
def test_family_trains_evaluates_exports_and_answers_without_tfp(family, dataset, tmp_path, data_dir, cached_data,
                                                                 answerer):
    build_model, model_config, _ = FAMILIES[family]
    data = cached_data(dataset, data_dir)
    config = config_lib.TrainConfig(
        dataset=dataset, data_dir=str(data_dir), workdir=str(tmp_path / "work"),
        export_base=str(tmp_path / "export"), train_steps=3, batch_size=16, steps_per_execution=2, num_samples=2,
        eval_batch_size=_ragged_eval_batch(len(data.x_test)), train_eval_examples=0, seed=0)
    metrics = train_lib.train_and_evaluate(config, model_config, build_model)

    assert "test/elbo" in metrics or family == "linear_exact"  # exact evidence: no variational posterior
    assert "test/nll" in metrics
    assert [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)] == []
    x = data.x_test[:EXAMPLES]
    if data.task == data_lib.REGRESSION:
        x = data.x_scaler.invert(x)  # the export takes inputs in original units
    np.save(tmp_path / "x.npy", x)
    reply = answerer.answer(metrics["export_path"], tmp_path / "x.npy")
    assert "error" not in reply, reply["error"]
    assert not reply["tfp_imported"]
    assert reply["info"]["family"] == build_model.__module__.rsplit(".", 1)[-1]
    assert reply["info"]["dataset"] == dataset
    answers = reply["signatures"]
    for signature, outputs in _expected_shapes(family, model_config, data).items():
        assert {k: v["shape"] for k, v in answers[signature].items()} == outputs, signature
    for signature, outputs in answers.items():
        for name, out in outputs.items():
            assert out["finite"], f"{signature}/{name} is not finite"
            assert out["shape"][0] == (3 if signature == "sample" else EXAMPLES), f"{signature}/{name}"


@pytest.mark.parametrize("family, dataset", REFUSED, ids=[f"{f}-{d}" for f, d in REFUSED])
def test_family_refuses_a_data_set_it_cannot_take_before_training(family, dataset, tmp_path, data_dir,
                                                                   cached_data):
    build_model, model_config, _ = FAMILIES[family]
    config = config_lib.TrainConfig(dataset=dataset, data_dir=str(data_dir), workdir=str(tmp_path / "work"),
                                    train_steps=3)
    with pytest.raises(config_lib.ConfigError, match=f"--dataset={dataset}: "):
        train_lib.train_and_evaluate(config, model_config, build_model)
    assert not train_lib.has_checkpoint(tmp_path / "work")
