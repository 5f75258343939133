"""`PredictiveClient` and the `python -m serving.client` command line against a real server."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from serving import client as client_lib
from tests.serving.conftest import FEATURES, MC_MODEL, REPO_ROOT


@pytest.fixture
def client(mc_server):
    with client_lib.PredictiveClient(mc_server.address, MC_MODEL, timeout=30) as c:
        yield c


def test_predict_returns_numpy_arrays_per_output(client):
    outputs = client.predict(np.ones([3, FEATURES], np.float32))
    assert set(outputs) == set(client_lib.PREDICTIVE_OUTPUTS)
    for value in outputs.values():
        assert isinstance(value, np.ndarray)
        assert value.shape == (3, 2) and value.dtype == np.float32
    assert np.all(outputs["lower"] < outputs["mean"]) and np.all(outputs["mean"] < outputs["upper"])


def test_predict_mc_is_reproducible_by_seed(client):
    x = np.ones([2, FEATURES], np.float32)
    a = client.predict_mc(x, num_samples=50, seed=(3, 4))
    b = client.predict_mc(x, num_samples=50, seed=(3, 4))
    c = client.predict_mc(x, num_samples=50, seed=(5, 6))
    np.testing.assert_array_equal(a["mean"], b["mean"])
    assert not np.array_equal(a["mean"], c["mean"])


def test_errors_are_clear_exceptions(mc_server, client):
    with client_lib.PredictiveClient(mc_server.address, "nope") as missing:
        with pytest.raises(client_lib.ModelNotFoundError) as info:
            missing.predict(np.ones([1, FEATURES], np.float32))
    assert info.value.code == "NOT_FOUND"
    assert info.value.details == "Servable not found for request: Latest(nope)"
    with pytest.raises(client_lib.InvalidRequestError, match="max_num_samples"):
        client.predict_mc(np.ones([1, FEATURES], np.float32), num_samples=10 ** 6)
    with pytest.raises(client_lib.ServerOverloadedError):
        client.predict(np.ones([100, 4096], np.float32))
    with pytest.raises(ValueError):
        client_lib.PredictiveClient(mc_server.address, MC_MODEL, version=1, version_label="a")


def test_signatures_and_status(client):
    signatures = client.signatures()
    assert signatures["predict_mc"]["inputs"] == {
        "x": ("DT_FLOAT", [-1, FEATURES]), "num_samples": ("DT_INT32", []),
        "seed": ("DT_INT32", [2])}
    assert client.status() == {1: "AVAILABLE"}


def _cli(mc_server, tmp_path, *args):
    csv = tmp_path / "rows.csv"
    csv.write_text("a,b,c\n1,2,3\n0,0,0\n")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-m", "serving.client", f"--server={mc_server.address}",
         f"--csv={csv}", *args], capture_output=True, text=True, env=env, cwd=REPO_ROOT,
        timeout=120)


def test_cli_prints_mean_stddev_and_interval_per_row(mc_server, tmp_path):
    result = _cli(mc_server, tmp_path, f"--model_name={MC_MODEL}")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("row 0: 6.5") and " ± " in lines[0] and "[" in lines[0]
    assert lines[1].startswith("row 1: 0.5")


def test_cli_json_with_monte_carlo_signature(mc_server, tmp_path):
    result = _cli(mc_server, tmp_path, f"--model_name={MC_MODEL}", "--num_samples=40",
                  "--seed=1,2", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["row"] for r in rows] == [0, 1]
    assert set(rows[0]) == {"row", *client_lib.PREDICTIVE_OUTPUTS}
    assert len(rows[0]["mean"]) == 2


def test_cli_reports_server_errors_and_exits_nonzero(mc_server, tmp_path):
    result = _cli(mc_server, tmp_path, "--model_name=nope")
    assert result.returncode == 1
    assert "error: NOT_FOUND: Servable not found for request: Latest(nope)" in result.stderr


def test_read_csv_rows_skips_a_header_and_rejects_text():
    np.testing.assert_array_equal(client_lib.read_csv_rows("x,y\n1,2\n3,4\n"), [[1, 2], [3, 4]])
    with pytest.raises(ValueError):
        client_lib.read_csv_rows("1,2\n3,oops\n")
    with pytest.raises(ValueError):
        client_lib.read_csv_rows("x,y\n")


@pytest.fixture(scope="module")
def table_server(tmp_path_factory):
    """A classifier exported from a CSV table (columns size, colour; labels big, small), untrained, served."""
    from models import bayesian_dense
    from serving import export
    from serving.process import ServerProcess
    from training import csv_data

    root = tmp_path_factory.mktemp("table")
    rng = np.random.default_rng(0)
    lines = ["id,size,colour,kind"] + [f"{i},{s:.3f},{c:.3f},{'big' if s > 0 else 'small'}"
                                       for i, (s, c) in enumerate(rng.normal(size=(40, 2)))]
    (root / "table.csv").write_text("\n".join(lines))
    dataset = csv_data.load(csv_data.CsvSpec(path=str(root / "table.csv"), target="kind", features=("size", "colour"),
                                             task="classification"))
    model = bayesian_dense.build_model(bayesian_dense.Config(hidden_units=(4,)), dataset)
    export.export(model, dataset, root / "models" / "table", num_samples=4, seed=0)
    server = ServerProcess(["--model_name=table", f"--model_base_path={root / 'models' / 'table'}"],
                           root / "server.log", rest=False)
    yield server
    server.stop()


def _table_cli(server, tmp_path, text, *args):
    path = tmp_path / "rows.csv"
    path.write_text(text)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "serving.client", f"--server={server.address}", "--model_name=table",
                           f"--csv={path}", *args], capture_output=True, text=True, env=env, cwd=REPO_ROOT,
                          timeout=120)


def test_cli_takes_a_table_models_columns_by_header_name_and_prints_class_names(table_server, tmp_path):
    with client_lib.PredictiveClient(table_server.address, "table", timeout=30) as c:
        info = c.model_info()
        expected = c.predict(np.array([[0.5, -1.0], [-2.0, 0.25]], np.float32))["probabilities"]
    assert info["features"] == ["size", "colour"] and info["classes"] == ["big", "small"]
    # Columns in another order, with an id and the target besides: taken by name.
    result = _table_cli(table_server, tmp_path, "kind,colour,id,size\nbig,-1.0,7,0.5\nsmall,0.25,8,-2.0\n", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [sorted(r["probabilities"]) for r in rows] == [["big", "small"]] * 2
    np.testing.assert_allclose([[r["probabilities"]["big"], r["probabilities"]["small"]] for r in rows], expected,
                               rtol=1e-6)
    assert [r["class"] for r in rows] == [["big", "small"][int(np.argmax(p))] for p in expected]
    assert client_lib.format_rows(rows[:1]).startswith(f"row 0: {rows[0]['class']} (big ")


def test_cli_names_a_column_the_table_model_needs_and_the_csv_lacks(table_server, tmp_path):
    result = _table_cli(table_server, tmp_path, "size,weight\n0.5,3\n")
    assert result.returncode == 2
    assert "the CSV lacks column(s) 'colour' that the model takes" in result.stderr


def test_read_csv_rows_by_feature_names():
    np.testing.assert_array_equal(client_lib.read_csv_rows("b,y,a\n1,x,2\n3,z,4\n", ["a", "b"]), [[2, 1], [4, 3]])
    with pytest.raises(ValueError, match="CSV data row 1, column 'a': 'heavy' is not a number"):
        client_lib.read_csv_rows("a,b\nheavy,1\n", ["a", "b"])
    with pytest.raises(ValueError, match="the CSV has no data rows"):
        client_lib.read_csv_rows("a,b\n", ["a", "b"])
