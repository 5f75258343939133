"""`make demo`: train on the data shipped in the repo, export, serve, and query the posterior predictive over gRPC.

Steps (no network, a couple of minutes on 2 cores):
  1. Bayesian linear regression on UCI concrete (split 0, from `data/`), fitted three ways: exact (type-II ML),
     mean-field CAVI and full-covariance gradient VI through the shared training loop; their test metrics side by
     side.
  2. The gradient-VI model is exported as a new version under `<workdir>/models/<name>/`.
  3. `python -m serving.server` (our drop-in for `tensorflow_model_server`) serves every model listed in
     `<workdir>/models.config` on a free port; the demo waits until they are available.
  4. `serving.client.PredictiveClient` sends held-out rows over gRPC; the table shows each row's posterior
     predictive mean, standard deviation (total, and its epistemic part) and 95% interval next to the truth.
  5. The server is stopped.
"""

from __future__ import annotations

import dataclasses
import pathlib
import socket
import subprocess
import sys
import time

from absl import app, flags, logging
import numpy as np

from models import linear_regression
from training import config as config_lib
from training import data as data_lib
from training import train_lib

flags.DEFINE_string("workdir", "runs/demo", "Where checkpoints, metrics and exported models go.")
flags.DEFINE_string("data_dir", "data", "The dataset slice committed in the repository.")
flags.DEFINE_integer("rows", 10, "Held-out rows to query.")
FLAGS = flags.FLAGS

MODEL_NAME = "concrete_blr"
SERVER_START_TIMEOUT_SECONDS = 120.0
NUM_SAMPLES = 200


def train_linear_regression(workdir: pathlib.Path, data_dir: str) -> dict:
    """Fits the three inference methods; returns inference -> metrics (the gradient one is exported)."""
    base = config_lib.TrainConfig(dataset="uci/concrete", data_dir=data_dir, split="0", epochs=1000,
                                  batch_size=256, learning_rate=0.05, num_samples=NUM_SAMPLES, seed=0)
    results = {}
    for inference in linear_regression.INFERENCE_METHODS:
        config = dataclasses.replace(
            base, workdir=str(workdir / "train" / f"blr_{inference}"),
            export_base=str(workdir / "models" / MODEL_NAME) if inference == "gradient" else "")
        results[inference] = train_lib.train_and_evaluate(
            config, linear_regression.Config(inference=inference, surrogate="full"), linear_regression.build_model)
    return results


def write_model_config(path: pathlib.Path, models: dict) -> None:
    """A `ModelServerConfig` text proto listing name -> base path (what stock TF Serving reads too)."""
    entries = "".join(
        f'  config {{\n    name: "{name}"\n    base_path: "{base.resolve()}"\n    model_platform: "tensorflow"\n  }}\n'
        for name, base in models.items())
    path.write_text(f"model_config_list {{\n{entries}}}\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


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
    lines = [f"{'inference':<10}" + "".join(f"{label:>16}" for _, label in names)]
    for inference, metrics in results.items():
        cells = "".join(f"{metrics[k]:>16.3f}" if k in metrics else f"{'-':>16}" for k, _ in names)
        lines.append(f"{inference:<10}{cells}")
    return "\n".join(lines)


def predictive_table(outputs: dict, truth: np.ndarray) -> str:
    lines = [f"{'row':>4} {'strength':>9} {'mean':>8} {'± std':>7} {'epistemic':>10} {'95% interval':>18}  inside"]
    for i, y in enumerate(truth):
        mean, std = outputs["mean"][i, 0], outputs["stddev"][i, 0]
        lo, hi = outputs["lower"][i, 0], outputs["upper"][i, 0]
        inside = "yes" if lo <= y <= hi else "no"
        lines.append(f"{i:>4} {y:>9.2f} {mean:>8.2f} {std:>7.2f} {outputs['epistemic_stddev'][i, 0]:>10.2f} "
                     f"[{lo:>7.2f}, {hi:>7.2f}]  {inside}")
    return "\n".join(lines)


def run_demo(workdir: pathlib.Path, data_dir: str, rows: int) -> None:
    from serving import client as client_lib

    workdir.mkdir(parents=True, exist_ok=True)
    results = train_linear_regression(workdir, data_dir)
    print("\nBayesian linear regression on UCI concrete, split 0 (test metrics in original units):")
    print(metrics_table(results))

    model_config = workdir / "models.config"
    write_model_config(model_config, {MODEL_NAME: workdir / "models" / MODEL_NAME})
    port, log_path = free_port(), workdir / "server.log"
    server = start_server(model_config, port, log_path)
    try:
        address = f"localhost:{port}"
        wait_until_available(server, address, [MODEL_NAME], log_path)
        dataset = data_lib.load("uci/concrete", data_dir, split=0)
        x = dataset.x_scaler.invert(dataset.x_test[:rows])
        truth = dataset.y_scaler.invert(dataset.y_test[:rows])[:, 0]
        with client_lib.PredictiveClient(address, MODEL_NAME, timeout=30.0) as c:
            outputs = c.predict(x)
        version = pathlib.Path(results["gradient"]["export_path"]).name
        print(f"\nPosterior predictive over gRPC from {address} (model {MODEL_NAME} version {version}, signature "
              f"serving_default, S={NUM_SAMPLES} samples), held-out test rows:")
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
