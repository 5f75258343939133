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
def tables(tmp_path_factory):
    """Two models exported from CSV tables, untrained: `table`, a classifier (columns size, colour; labels big,
    small), and `priced`, a regression (size, colour and batch, 1 on every row; target price)."""
    from models import bayesian_dense
    from serving import export
    from training import csv_data

    root = tmp_path_factory.mktemp("table")
    rng = np.random.default_rng(0)
    values = rng.normal(size=(40, 2))
    lines = ["id,size,colour,kind"] + [f"{i},{s:.3f},{c:.3f},{'big' if s > 0 else 'small'}"
                                       for i, (s, c) in enumerate(values)]
    (root / "table.csv").write_text("\n".join(lines))
    lines = ["size,colour,batch,price"] + [f"{s:.3f},{c:.3f},1,{3 * s + c:.3f}" for s, c in values]
    (root / "priced.csv").write_text("\n".join(lines))
    datasets = {
        "table": csv_data.load(csv_data.CsvSpec(path=str(root / "table.csv"), target="kind",
                                                features=("size", "colour"), task="classification")),
        "priced": csv_data.load(csv_data.CsvSpec(path=str(root / "priced.csv"), target="price")),
    }
    for name, dataset in datasets.items():
        model = bayesian_dense.build_model(bayesian_dense.Config(hidden_units=(4,)), dataset)
        export.export(model, dataset, root / "models" / name, num_samples=4, seed=0)
    return root, datasets


@pytest.fixture(scope="module")
def table_server(tables):
    from serving.process import ServerProcess, write_model_config

    root, datasets = tables
    config = write_model_config(root / "models.config", {name: root / "models" / name for name in datasets})
    server = ServerProcess([f"--model_config_file={config}"], root / "server.log", rest=False)
    yield server
    server.stop()


def _table_cli(server, tmp_path, text, *args, model="table"):
    path = tmp_path / "rows.csv"
    path.write_text(text)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "serving.client", f"--server={server.address}",
                           f"--model_name={model}", f"--csv={path}", *args], capture_output=True, text=True, env=env,
                          cwd=REPO_ROOT, timeout=120)


def _input_distance(x, scaler):
    return np.abs((np.asarray(x, np.float64) - scaler.mean) / scaler.std).max(axis=-1)


def test_cli_takes_a_table_models_columns_by_header_name_and_prints_class_names(tables, table_server, tmp_path):
    x = np.array([[0.5, -1.0], [-2.0, 0.25]], np.float32)
    with client_lib.PredictiveClient(table_server.address, "table", timeout=30) as c:
        info = c.model_info()
        answer = c.predict(x)
    expected = answer["probabilities"]
    assert info["features"] == ["size", "colour"] and info["classes"] == ["big", "small"]
    # A table classifier answers the input distance too, [batch] as its other per-row outputs.
    np.testing.assert_allclose(answer["input_distance"], _input_distance(x, tables[1]["table"].x_scaler), rtol=1e-6)
    # Columns in another order, with an id and the target besides: taken by name.
    result = _table_cli(table_server, tmp_path, "kind,colour,id,size\nbig,-1.0,7,0.5\nsmall,0.25,8,-2.0\n", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [sorted(r["probabilities"]) for r in rows] == [["big", "small"]] * 2
    np.testing.assert_allclose([[r["probabilities"]["big"], r["probabilities"]["small"]] for r in rows], expected,
                               rtol=1e-6)
    assert [r["class"] for r in rows] == [["big", "small"][int(np.argmax(p))] for p in expected]
    assert client_lib.format_rows(rows[:1]).startswith(f"row 0: {rows[0]['class']} (big ")
    np.testing.assert_allclose([r["input_distance"] for r in rows], answer["input_distance"], rtol=1e-6)
    assert {r["input_region"] for r in rows} == {"typical"}


def test_cli_prints_each_rows_input_distance_and_flags_the_extrapolating_ones(tables, table_server, tmp_path):
    """Columns by header name as ever; a row 50 training standard deviations out in `size`, and one whose `batch`
    (1 on every training row) is 2, lie beyond every training row and are named with their farthest column."""
    scaler = tables[1]["priced"].x_scaler
    rows = np.tile(scaler.mean, [3, 1]).astype(np.float32)
    rows[1, 0] += 50 * scaler.std[0]
    rows[2, 2] = 2.0
    text = "price,batch,colour,size\n" + "".join(f"0,{b!r},{c!r},{s!r}\n" for s, c, b in rows.tolist())
    with client_lib.PredictiveClient(table_server.address, "priced", timeout=30) as c:
        info = c.model_info()
        answered = client_lib.summarize(c.predict(rows), info=info)  # as --json prints them
    reference = info["input_distance"]
    assert reference["constant_features"] == [2] and reference["training_percentiles"]["100"] < 5
    np.testing.assert_allclose(answered[1]["input_distance"], 50.0, rtol=1e-5)
    assert answered[2]["input_distance"] > 1e6  # a constant column that changed
    assert [r["input_region"] for r in answered] == ["typical", "extrapolating", "extrapolating"]
    assert [r.get("input_distance_feature_name") for r in answered[1:]] == ["size", "batch"]

    result = _table_cli(table_server, tmp_path, text, model="priced")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].endswith(f"; input distance {answered[0]['input_distance']:.3g} sd")
    limit = f"{reference['training_percentiles']['100']:.3g}"
    assert lines[1].endswith(f"; input distance 50 sd in 'size': extrapolating (training rows reach {limit})")
    assert " in 'batch': extrapolating" in lines[2]


def test_input_region_places_a_distance_among_the_training_rows_own():
    reference = {"training_percentiles": {"50": 1.2, "90": 2.3, "99": 4.2, "99.9": 8.0, "100": 54.4}}
    assert [client_lib.input_region(d, reference) for d in (0.0, 8.0, 18.0, 54.4, 60.0)] == [
        "typical", "typical", "rare", "rare", "extrapolating"]
    assert client_lib.input_region(60.0, None) is None  # an export without the reference
    info = {"features": [f"F{j + 1}" for j in range(9)], "input_distance": reference}
    outputs = {"mean": np.array([[1.0], [2.0]], np.float32), "input_distance": np.array([[1.0], [18.0]], np.float32),
               "input_distance_feature": np.array([[0], [6]], np.int64)}
    rows = client_lib.summarize(outputs, info=info)
    assert rows[1]["input_distance_feature"] == 6 and rows[1]["input_region"] == "rare"
    assert client_lib.format_rows(rows, info).splitlines() == [
        "row 0: 1; input distance 1 sd",
        "row 1: 2; input distance 18 sd in 'F7': rare (99.9% of training rows within 8)"]


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
