"""A user's CSV table: columns by name, reproducible random splits, and errors that name the file, row and column."""

import numpy as np
import pytest

from training import csv_data
from training import data as data_lib


def _write(tmp_path, text, name="table.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _table(rows=20, seed=0):
    rng = np.random.default_rng(seed)
    lines = ["height,\"weight, kg\",name,price"]
    for i in range(rows):
        h, w = rng.normal(170, 10), rng.normal(70, 5)
        lines.append(f"{h:.3f},{w:.3f},row{i},{2 * h - w:.3f}")
    return "\n".join(lines) + "\n"


def test_regression_reads_named_columns_in_the_given_order_standardized_on_the_training_rows(tmp_path):
    path = _write(tmp_path, _table())
    spec = csv_data.CsvSpec(path=path, target="price", features=("weight, kg", "height"), test_fraction=0.25)
    ds = csv_data.load(spec, split=0)
    assert ds.feature_names == ("weight, kg", "height") and ds.target_name == "price"
    assert ds.x_train.shape == (15, 2) and ds.x_test.shape == (5, 2) and ds.y_train.shape == (15, 1)
    np.testing.assert_allclose(ds.x_train.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(ds.x_train.std(0), 1.0, atol=1e-5)
    # Undoing the standardization gives the file's numbers: price = 2 height - weight in every row.
    x = ds.x_scaler.invert(np.concatenate([ds.x_train, ds.x_test]))
    y = ds.y_scaler.invert(np.concatenate([ds.y_train, ds.y_test]))[:, 0]
    np.testing.assert_allclose(y, 2 * x[:, 1] - x[:, 0], atol=2e-3)


def test_random_splits_are_reproducible_disjoint_and_differ_by_index():
    train, test = csv_data.random_split(101, 3, 0.1)
    again = csv_data.random_split(101, 3, 0.1)
    np.testing.assert_array_equal(train, again[0])
    assert len(test) == 10 and not set(train) & set(test) and len(train) + len(test) == 101
    assert set(csv_data.random_split(101, 4, 0.1)[1]) != set(test)


def test_string_and_integer_labels_map_to_sorted_class_indices(tmp_path):
    lines = ["a,b,label"] + [f"{i},{i % 3},{['cat', 'dog', 'emu'][i % 3]}" for i in range(30)]
    ds = csv_data.load(csv_data.CsvSpec(path=_write(tmp_path, "\n".join(lines)), target="label",
                                        task="classification"))
    assert ds.class_names == ("cat", "dog", "emu") and ds.num_classes == 3 and ds.y_train.dtype == np.int32
    b = ds.x_scaler.invert(ds.x_train)[:, 1]
    np.testing.assert_array_equal(ds.y_train, np.round(b).astype(int))
    assert csv_data.class_names(["10", "9", "-1"]) == ("-1", "9", "10")


def test_a_test_file_gives_the_test_rows_with_columns_in_any_order(tmp_path):
    train = _write(tmp_path, _table(rows=12))
    test = _write(tmp_path, "price,name,height,\"weight, kg\"\n10,x,170,60\n20,y,180,80\n", "test.csv")
    ds = csv_data.load(csv_data.CsvSpec(path=train, target="price", features=("height", "weight, kg"),
                                        test_csv=test))
    assert ds.x_train.shape == (12, 2) and ds.x_test.shape == (2, 2)
    np.testing.assert_allclose(ds.x_scaler.invert(ds.x_test), [[170, 60], [180, 80]], rtol=1e-6)
    np.testing.assert_allclose(ds.y_scaler.invert(ds.y_test)[:, 0], [10, 20], rtol=1e-6)


@pytest.mark.parametrize("text, spec, message", [
    ("a,b,y\n1,2,3\n4,oops,6\n5,6,7\n", {}, "row 2 (line 3), column 'b' is 'oops', not a number"),
    ("a,b,y\n1,2,3\n4,,6\n5,6,7\n", {}, "row 2 (line 3), column 'b' is missing"),
    ("a,b,y\n1,2,3\n4,5,inf\n5,6,7\n", {}, "row 2 (line 3), column 'y' is 'inf', not a finite number"),
    ("a,b,y\n1,2,3\n4,5,3\n5,6,3\n", {"test_fraction": 0.3}, "target 'y' is constant (3)"),
    ("a,b,y\n1,2,3\n4,5\n", {}, "line 3: 2 cells where the header has 3"),
    ("a,a,y\n1,2,3\n", {}, "names column 'a' twice"),
    ("a,b,y\n1,2,3\n", {"target": "z"}, "--target='z' is not a column"),
    ("a,b,y\n1,2,3\n", {"features": ("a", "c")}, "--features names 'c', not columns"),
    ("a,b,y\n1,2,3\n4,5,6\n", {}, "has 2 data rows: a split needs at least 2 training and 1 test row"),
    ("a,b,y\n", {}, "has a header row but no data rows"),
    ("", {}, "is empty"),
    ("a,b,y\n1,2,c\n4,5,c\n6,7,c\n", {"task": "classification", "test_fraction": 0.25},
     "has one class ('c') on the training rows"),
])
def test_bad_tables_fail_naming_the_file_row_and_column(tmp_path, text, spec, message):
    path = _write(tmp_path, text)
    with pytest.raises(data_lib.DatasetError) as error:
        csv_data.load(csv_data.CsvSpec(**{"path": path, "target": "y", **spec}))
    assert message in str(error.value)
    assert "--" in message or path in str(error.value)


def test_a_missing_file_target_or_split_is_refused(tmp_path):
    with pytest.raises(data_lib.DatasetError, match="does not exist"):
        csv_data.load(csv_data.CsvSpec(path=str(tmp_path / "nope.csv"), target="y"))
    with pytest.raises(data_lib.DatasetError, match="needs --target"):
        csv_data.CsvSpec(path="t.csv", target="")
    path = _write(tmp_path, _table())
    with pytest.raises(data_lib.DatasetError, match=r"splits 0\.\.9"):
        csv_data.load(csv_data.CsvSpec(path=path, target="price", features=("height",)), split=10)


def test_a_test_class_unseen_in_training_is_refused(tmp_path):
    train = _write(tmp_path, "a,y\n1,p\n2,q\n3,p\n")
    test = _write(tmp_path, "a,y\n1,r\n", "test.csv")
    with pytest.raises(data_lib.DatasetError, match="class\\(es\\) 'r' that no training row has"):
        csv_data.load(csv_data.CsvSpec(path=train, target="y", task="classification", test_csv=test))


def _config(tmp_path, **values):
    from training import config as config_lib
    return config_lib.TrainConfig(workdir=str(tmp_path / "work"), **values)


@pytest.mark.parametrize("values, message", [
    (dict(dataset="csv:t.csv"), "--target is required with --dataset=csv:t.csv"),
    (dict(dataset="csv:"), "needs the file's path after 'csv:'"),
    (dict(dataset="uci/concrete", target="y"), "--target: for a CSV table only (--dataset=csv:PATH), not --dataset=uci/concrete"),
    (dict(dataset="mnist", task="classification"), "--task: for a CSV table only"),
    (dict(dataset="csv:t.csv", target="y", task="ordinal"), "--task must be one of regression, classification"),
    (dict(dataset="csv:t.csv", target="y", test_fraction=1.0), "--test_fraction must be in (0, 1)"),
])
def test_csv_flags_are_checked_before_any_data_is_read(tmp_path, values, message):
    from training import config as config_lib
    with pytest.raises(config_lib.ConfigError) as error:
        _config(tmp_path, **values).validate()
    assert message in str(error.value)


def test_a_csv_run_takes_split_indices_and_all(tmp_path):
    config = _config(tmp_path, dataset="csv:t.csv", target="y", split="3").validate()
    assert config.split_index == 3 and config.csv_spec().target == "y"
    assert _config(tmp_path, dataset="csv:t.csv", target="y", split="all").validate().split_index is None
    assert data_lib.num_splits("csv:t.csv", "", config.csv_spec()) == csv_data.NUM_RANDOM_SPLITS
    spec = csv_data.CsvSpec(path="t.csv", target="y", test_csv="u.csv")
    assert data_lib.num_splits("csv:t.csv", "", spec) == 1


def test_a_saved_config_without_the_csv_settings_resumes_at_their_defaults(tmp_path):
    from training import config as config_lib
    current = _config(tmp_path).validate().to_json()
    saved = {k: v for k, v in current.items() if k not in ("target", "features", "task", "test_csv",
                                                            "test_fraction")}
    config_lib.check_resumable(saved, current)
    with pytest.raises(config_lib.ConfigError, match="--target: was '', now 'y'"):
        config_lib.check_resumable(saved, dict(current, target="y"))


def _train_on_table(tmp_path, path, task, **values):
    import json

    import tensorflow as tf

    from models import bayesian_dense
    from training import config as config_lib
    from training import train_lib

    config = config_lib.TrainConfig(dataset=f"csv:{path}", task=task, workdir=str(tmp_path / "work"),
                                    export_base=str(tmp_path / "export"), epochs=3, batch_size=32, num_samples=8,
                                    seed=0, **values)
    metrics = train_lib.train_and_evaluate(
        config, bayesian_dense.Config(hidden_units=(8,)), bayesian_dense.build_model)
    loaded = tf.saved_model.load(metrics["export_path"])
    info = json.loads(loaded.signatures["model_info"]()["info"].numpy())
    return metrics, loaded, info


def test_a_regression_table_trains_evaluates_and_exports_its_column_names(tmp_path):
    import tensorflow as tf

    path = _write(tmp_path, _table(rows=120))
    metrics, loaded, info = _train_on_table(tmp_path, path, "regression", target="price",
                                            features=["weight, kg", "height"])
    assert np.isfinite(metrics["test/nll"]) and metrics["test/rmse"] > 0
    assert info["features"] == ["weight, kg", "height"] and info["target"] == "price" and info["classes"] is None
    # Inputs in original units, in model_info's order; the mean comes back in the target's units.
    out = loaded.signatures["serving_default"](x=tf.constant([[70.0, 170.0], [75.0, 180.0]]))
    assert out["mean"].shape == (2, 1) and np.all(np.abs(out["mean"].numpy() - 270.0) < 100.0)


def test_a_classification_table_answers_classify_with_the_label_names(tmp_path):
    import tensorflow as tf

    lines = ["size,colour,kind"] + [f"{s:.2f},{c:.2f},{'big' if s > 0 else 'small'}"
                                    for s, c in np.random.default_rng(1).normal(size=(150, 2))]
    metrics, loaded, info = _train_on_table(tmp_path, _write(tmp_path, "\n".join(lines)), "classification",
                                            target="kind", test_fraction=0.2)
    assert info["features"] == ["size", "colour"] and info["classes"] == ["big", "small"]
    assert metrics["test/accuracy"] > 0.8
    example = tf.train.Example(features=tf.train.Features(feature={
        "x": tf.train.Feature(float_list=tf.train.FloatList(value=[2.0, 0.0]))}))
    out = loaded.signatures["classify"](inputs=tf.constant([example.SerializeToString()]))
    assert out["classes"].numpy().tolist() == [[b"big", b"small"]]
    assert out["scores"].numpy()[0, 0] > 0.5
