"""`make demo`: train on the data shipped in the repo, export, serve, and query the posterior predictive over gRPC.

Steps (no network, about a minute on 2 cores):
  1. Bayesian linear regression on UCI concrete (split 0, from `data/`), fitted three ways: exact (type-II ML),
     mean-field CAVI and full-covariance gradient VI through the shared training loop.
  2. A Bayesian neural network (one hidden layer of 50 units, mean-field Gaussian weights, flipout) on the same
     split. Test metrics of all four side by side.
  3. The gradient-VI linear model and the network are exported as new versions under `<workdir>/models/<name>/`.
  4. `python -m serving.server` (our drop-in for `tensorflow_model_server`) serves both models from one model
     config file, `<workdir>/models.config`, on a free port; the demo waits until they are available.
  5. `serving.client.PredictiveClient` sends held-out rows to both over gRPC; the table shows each model's
     posterior predictive mean, standard deviation (total, and its epistemic part) and 95% interval next to the
     truth.
  6. The server is stopped.
"""

from __future__ import annotations

import dataclasses
import pathlib
import subprocess
import sys
import time

from absl import app, flags, logging
import numpy as np

from models import bayesian_dense
from models import linear_regression
from serving.process import free_port, write_model_config
from training import config as config_lib
from training import data as data_lib
from training import train_lib

flags.DEFINE_string("workdir", "runs/demo", "Where checkpoints, metrics and exported models go.")
flags.DEFINE_string("data_dir", "data", "The dataset slice committed in the repository.")
flags.DEFINE_integer("rows", 10, "Held-out rows to query.")
FLAGS = flags.FLAGS

MODEL_NAME = "concrete_blr"
BNN_NAME = "concrete_bnn"
BNN_STEPS = 5000
SERVER_START_TIMEOUT_SECONDS = 120.0
NUM_SAMPLES = 200


def _base_config(data_dir: str) -> config_lib.TrainConfig:
    return config_lib.TrainConfig(dataset="uci/concrete", data_dir=data_dir, split="0", epochs=1000,
                                  batch_size=256, learning_rate=0.05, num_samples=NUM_SAMPLES, seed=0)


def train_linear_regression(workdir: pathlib.Path, data_dir: str) -> dict:
    """Fits the three inference methods; returns inference -> metrics (the gradient one is exported)."""
    results = {}
    for inference in linear_regression.INFERENCE_METHODS:
        config = dataclasses.replace(
            _base_config(data_dir), workdir=str(workdir / "train" / f"blr_{inference}"),
            export_base=str(workdir / "models" / MODEL_NAME) if inference == "gradient" else "")
        results[f"linear, {inference}"] = train_lib.train_and_evaluate(
            config, linear_regression.Config(inference=inference, surrogate="full"), linear_regression.build_model)
    return results


def train_network(workdir: pathlib.Path, data_dir: str) -> dict:
    """A Bayesian network with the UCI protocol's shape, exported next to the linear model."""
    config = dataclasses.replace(_base_config(data_dir), workdir=str(workdir / "train" / "bnn"),
                                 export_base=str(workdir / "models" / BNN_NAME), train_steps=BNN_STEPS,
                                 batch_size=32, learning_rate=1e-2)
    return train_lib.train_and_evaluate(config, bayesian_dense.Config(estimator="flipout", hidden_units=(50,)),
                                        bayesian_dense.build_model)


def start_server(model_config: pathlib.Path, port: int, log_path: pathlib.Path) -> subprocess.Popen:
    """Starts `python -m serving.server` with tensorflow_model_server's flags; its log goes to `log_path`."""
    log = open(log_path, "w")  # noqa: SIM115 - lives as long as the server process
    return subprocess.Popen([sys.executable, "-m", "serving.server", f"--port={port}",
                             f"--model_config_file={model_config}"], stdout=log, stderr=subprocess.STDOUT)


def wait_until_available(server: subprocess.Popen, address: str, names, log_path: pathlib.Path) -> None:
    from serving import client as client_lib

    deadline = time.time() + SERVER_START_TIMEOUT_SECONDS
    pending = set(names)
    while pending:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.returncode}; see {log_path}")
        if time.time() > deadline:
            raise RuntimeError(f"models {sorted(pending)} not available after {SERVER_START_TIMEOUT_SECONDS}s; "
                               f"see {log_path}")
        for name in sorted(pending):
            try:
                with client_lib.PredictiveClient(address, name, timeout=2.0) as c:
                    if "AVAILABLE" in c.status().values():
                        pending.discard(name)
            except client_lib.ClientError:
                pass
        time.sleep(0.2)


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def metrics_table(results: dict) -> str:
    names = [("test/rmse", "RMSE (MPa)"), ("test/nll", "NLL (nats)"), ("test/coverage_95", "95% coverage"),
             ("train/elbo", "ELBO / example")]
    lines = [f"{'model':<18}" + "".join(f"{label:>16}" for _, label in names)]
    for model, metrics in results.items():
        cells = "".join(f"{metrics[k]:>16.3f}" if k in metrics else f"{'-':>16}" for k, _ in names)
        lines.append(f"{model:<18}{cells}")
    return "\n".join(lines)


def predictive_table(outputs: dict, truth: np.ndarray) -> str:
    """One line per row: the truth, then each model's mean ± std (epistemic std) [95% interval]."""
    names = list(outputs)
    header = f"{'row':>4} {'strength':>9}" + "".join(f"  {name + ': mean ± std (epistemic) [95%]':<44}"
                                                      for name in names)
    lines = [header]
    for i, y in enumerate(truth):
        cells = ""
        for name in names:
            o = outputs[name]
            inside = "*" if o["lower"][i, 0] <= y <= o["upper"][i, 0] else " "
            cell = (f"{o['mean'][i, 0]:6.2f} ± {o['stddev'][i, 0]:5.2f} ({o['epistemic_stddev'][i, 0]:4.2f}) "
                    f"[{o['lower'][i, 0]:6.2f}, {o['upper'][i, 0]:6.2f}]{inside}")
            cells += f"  {cell:<44}"
        lines.append(f"{i:>4} {y:>9.2f}{cells}")
    lines.append("(* the truth lies inside the 95% interval)")
    return "\n".join(lines)


def run_demo(workdir: pathlib.Path, data_dir: str, rows: int) -> None:
    from serving import client as client_lib

    workdir.mkdir(parents=True, exist_ok=True)
    results = train_linear_regression(workdir, data_dir)
    results["neural network"] = train_network(workdir, data_dir)
    print("\nUCI concrete, split 0: test metrics in original units (MPa)")
    print(metrics_table(results))

    model_config = workdir / "models.config"
    served = {MODEL_NAME: results["linear, gradient"], BNN_NAME: results["neural network"]}
    write_model_config(model_config, {name: (workdir / "models" / name).resolve() for name in served})
    port, log_path = free_port(), workdir / "server.log"
    server = start_server(model_config, port, log_path)
    try:
        address = f"localhost:{port}"
        wait_until_available(server, address, list(served), log_path)
        dataset = data_lib.load("uci/concrete", data_dir, split=0)
        x = dataset.x_scaler.invert(dataset.x_test[:rows])
        truth = dataset.y_scaler.invert(dataset.y_test[:rows])[:, 0]
        outputs = {}
        for name in served:
            with client_lib.PredictiveClient(address, name, timeout=30.0) as c:
                outputs[name] = c.predict(x)
        versions = ", ".join(f"{n} v{pathlib.Path(m['export_path']).name}" for n, m in served.items())
        print(f"\nPosterior predictive over gRPC from {address} ({versions}; serving_default, "
              f"S={NUM_SAMPLES} samples), held-out test rows:")
        print(predictive_table(outputs, truth))
    finally:
        stop_server(server)
    print(f"\nServer stopped. Models: {workdir / 'models'}; config: {model_config}; TensorBoard: "
          f"tensorboard --logdir {workdir / 'train'}")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    run_demo(pathlib.Path(FLAGS.workdir), FLAGS.data_dir, FLAGS.rows)


if __name__ == "__main__":
    app.run(main)
