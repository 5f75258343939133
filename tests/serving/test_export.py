"""The SavedModel contract between training/ and serving/: layout, signatures, determinism, no TFP at load."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from models import linear_regression as lr
from serving import export
from training import data

REPO = pathlib.Path(__file__).resolve().parents[2]
PREDICTIVE = {"mean", "stddev", "aleatoric_stddev", "epistemic_stddev", "lower", "upper"}
OUTPUTS = PREDICTIVE | {"input_distance", "input_distance_feature"}


@pytest.fixture(scope="module")
def fitted(data_dir):
    dataset = data.load("uci/yacht", data_dir, split=0)
    model = lr.build_model(lr.Config(inference="cavi"), dataset)
    model.fit_closed_form(dataset.x_train, dataset.y_train)
    return model, dataset


@pytest.fixture(scope="module")
def exported(fitted, tmp_path_factory):
    model, dataset = fitted
    base = tmp_path_factory.mktemp("export")
    path = export.export(model, dataset, base, num_samples=64, seed=1)
    return path, dataset


def _raw_inputs(dataset, rows=5):
    return dataset.x_scaler.invert(dataset.x_test[:rows])


def test_layout_is_tf_serving_versioned(exported):
    path, _ = exported
    assert path.name == "1"
    assert (path / "saved_model.pb").is_file() and (path / "variables").is_dir()
    assert (path / "assets.extra" / "tf_serving_warmup_requests").is_file()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp")]
    # Readable as any directory the user makes (a TF Serving running as another user must read it).
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o777 & ~umask


def test_versions_increase_and_never_overwrite(fitted, tmp_path):
    model, dataset = fitted
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "keep.txt").write_text("user data")
    (tmp_path / "notes").mkdir()
    first = export.export(model, dataset, tmp_path, num_samples=8)
    second = export.export(model, dataset, tmp_path, num_samples=8)
    assert (first.name, second.name) == ("8", "9")
    assert (tmp_path / "7" / "keep.txt").read_text() == "user data"
    assert export.existing_versions(tmp_path) == [7, 8, 9]


def test_failed_export_leaves_no_version_and_no_temp_dir(fitted, tmp_path):
    class Broken(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def f(self, x):
            return {"y": x}

    with pytest.raises(ValueError):
        export.save_versioned(Broken(), tmp_path, signatures={"serving_default": "not a function"})
    assert list(tmp_path.iterdir()) == []


def test_saved_model_cli_lists_the_signatures(exported):
    path, dataset = exported
    cli = pathlib.Path(sys.executable).with_name("saved_model_cli")
    out = subprocess.run([str(cli), "show", "--dir", str(path), "--all"], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert out.returncode == 0, out.stderr[-2000:]
    for name in ("signature_def['serving_default']", "signature_def['predict_mc']", "signature_def['regress']"):
        assert name in out.stdout
    for output in OUTPUTS:
        assert f"outputs['{output}']" in out.stdout
    assert f"shape: (-1, {dataset.input_shape[-1]})" in out.stdout


def test_signature_contract(exported):
    path, dataset = exported
    loaded = tf.saved_model.load(str(path))
    features = dataset.input_shape[-1]
    default = loaded.signatures["serving_default"]
    assert {k: (v.dtype, v.shape.as_list()) for k, v in default.structured_input_signature[1].items()} == {
        "x": (tf.float32, [None, features])}
    mc = loaded.signatures["predict_mc"]
    assert {k: (v.dtype, v.shape.as_list()) for k, v in mc.structured_input_signature[1].items()} == {
        "x": (tf.float32, [None, features]), "num_samples": (tf.int32, []), "seed": (tf.int32, [2])}
    out = default(x=tf.constant(_raw_inputs(dataset, 5)))
    assert set(out) == OUTPUTS == set(export.REGRESSION_OUTPUTS)
    for name, value in out.items():
        assert value.dtype == (tf.int64 if name == "input_distance_feature" else tf.float32), name
        assert value.shape == (5, 1), name
    o = {k: v.numpy() for k, v in out.items()}
    assert np.all(o["lower"] < o["mean"]) and np.all(o["mean"] < o["upper"])
    np.testing.assert_allclose(o["stddev"] ** 2, o["aleatoric_stddev"] ** 2 + o["epistemic_stddev"] ** 2,
                               rtol=1e-4)


def test_outputs_are_in_original_units_and_match_the_model(exported, fitted):
    path, dataset = exported
    model, _ = fitted
    loaded = tf.saved_model.load(str(path))
    out = loaded.signatures["predict_mc"](x=tf.constant(_raw_inputs(dataset, 10)), num_samples=tf.constant(20000),
                                          seed=tf.constant([4, 2]))
    closed = model.exact_predictive(dataset.x_test[:10])  # q(beta) is a Gamma, so only approximately Normal
    mean = dataset.y_scaler.invert(closed.loc.numpy())
    np.testing.assert_allclose(out["mean"].numpy(), mean, rtol=0.01, atol=0.05 * dataset.target_scale)
    np.testing.assert_allclose(out["stddev"].numpy(), closed.scale.numpy() * dataset.target_scale, rtol=0.03)


def test_predict_mc_same_seed_same_answer_other_seed_other_answer(fitted, tmp_path):
    """On a family that samples (a mean-field network: its weights are drawn), the seed decides the draws."""
    from models import bayesian_dense

    _, dataset = fitted
    tf_keras.utils.set_random_seed(2)
    model = bayesian_dense.build_model(bayesian_dense.Config(hidden_units=(16,), init_rho=-1.5), dataset)
    loaded = tf.saved_model.load(str(export.export(model, dataset, tmp_path / "bnn")))
    x = tf.constant(_raw_inputs(dataset))
    call = lambda s, n=32: loaded.signatures["predict_mc"](  # noqa: E731
        x=x, num_samples=tf.constant(n), seed=tf.constant(s, tf.int32))
    a, b, c = call([1, 2]), call([1, 2]), call([1, 3])
    for k in OUTPUTS:
        np.testing.assert_array_equal(a[k].numpy(), b[k].numpy())
    for k in PREDICTIVE:
        assert not np.array_equal(a[k].numpy(), c[k].numpy()), k
    for k in OUTPUTS - PREDICTIVE:  # a function of the input alone
        np.testing.assert_array_equal(a[k].numpy(), c[k].numpy())


def test_linear_regression_predictive_integrates_weights_and_noise_precision_without_sampling(exported, fitted):
    """CAVI's predictive: the weights integrated out in closed form, q(beta) by quadrature; the variance is exact,
    N(m . phi, phi^T S phi + b / (a - 1)) in its first two moments, whatever the seed and S (no draws at all)."""
    path, dataset = exported
    model, _ = fitted
    loaded = tf.saved_model.load(str(path))
    x = _raw_inputs(dataset)
    call = lambda s, n: loaded.signatures["predict_mc"](  # noqa: E731
        x=tf.constant(x), num_samples=tf.constant(n), seed=tf.constant(s, tf.int32))
    a, c = call([1, 2], 1), call([1, 3], 500)
    for k in OUTPUTS:
        np.testing.assert_array_equal(a[k].numpy(), c[k].numpy())
    q = model.posterior().model
    concentration, rate = float(q["beta"].concentration), float(q["beta"].rate)
    closed = model.exact_predictive(dataset.x_test[:5])  # N(m . phi, 1/E[beta] + phi^T S phi)
    weight_var = closed.scale.numpy()[:, 0] ** 2 - 1.0 / float(q["beta"].mean())
    units = dataset.target_scale ** 2
    np.testing.assert_allclose(a["mean"].numpy()[:, 0], dataset.y_scaler.invert(closed.loc.numpy())[:, 0], rtol=1e-6)
    np.testing.assert_allclose(a["epistemic_stddev"].numpy()[:, 0] ** 2, units * weight_var, rtol=1e-5)
    np.testing.assert_allclose(a["aleatoric_stddev"].numpy()[:, 0] ** 2, units * rate / (concentration - 1), rtol=1e-5)
    assert a["epistemic_stddev"].numpy().min() > 0


def test_serving_default_is_deterministic(exported):
    path, dataset = exported
    loaded = tf.saved_model.load(str(path))
    x = tf.constant(_raw_inputs(dataset))
    np.testing.assert_array_equal(loaded.signatures["serving_default"](x=x)["mean"].numpy(),
                                  loaded.signatures["serving_default"](x=x)["mean"].numpy())


def test_invalid_inputs_raise_inside_the_graph(exported):
    path, dataset = exported
    loaded = tf.saved_model.load(str(path))
    x = tf.constant(_raw_inputs(dataset))
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_samples"):
        loaded.signatures["predict_mc"](x=x, num_samples=tf.constant(0), seed=tf.constant([0, 0]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="finite"):
        loaded.signatures["serving_default"](x=tf.fill([1, dataset.input_shape[-1]], np.nan))


def test_regress_signature_reads_tf_examples(exported):
    path, dataset = exported
    loaded = tf.saved_model.load(str(path))
    rows = _raw_inputs(dataset, 3)
    examples = [tf.train.Example(features=tf.train.Features(feature={
        "x": tf.train.Feature(float_list=tf.train.FloatList(value=row))})).SerializeToString() for row in rows]
    got = loaded.signatures["regress"](inputs=tf.constant(examples))["outputs"].numpy()
    want = loaded.signatures["serving_default"](x=tf.constant(rows))["mean"].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_warmup_requests_replay_against_their_signatures(exported):
    from tensorflow_serving.apis import prediction_log_pb2

    path, _ = exported
    loaded = tf.saved_model.load(str(path))
    records = list(tf.data.TFRecordDataset(str(path / export.WARMUP_FILE)).as_numpy_iterator())
    assert len(records) == 2
    for record in records:
        log = prediction_log_pb2.PredictionLog.FromString(record)
        request = log.predict_log.request
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        out = loaded.signatures[request.model_spec.signature_name](**{k: tf.constant(v) for k, v in inputs.items()})
        assert np.isfinite(out["mean"].numpy()).all()


NO_TFP_SCRIPT = """
import importlib.abc, sys
class BlockTFP(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "tensorflow_probability":
            raise ImportError("tensorflow_probability is not available in this process")
sys.meta_path.insert(0, BlockTFP())
import numpy as np, tensorflow as tf
try:
    import tensorflow_probability
    sys.exit("TFP import was not blocked")
except ImportError:
    pass
m = tf.saved_model.load(sys.argv[1])
x = tf.constant(np.load(sys.argv[2]))
a = m.signatures["serving_default"](x=x)
b = m.signatures["predict_mc"](x=x, num_samples=tf.constant(16), seed=tf.constant([7, 7]))
if "predict_moments" in m.signatures:
    c = m.signatures["predict_moments"](x=x, num_samples=tf.constant(16), seed=tf.constant([7, 7]))
    assert np.isfinite(c["upper"].numpy()).all()
assert a["mean"].shape == x.shape[:1] + [1], a["mean"].shape
assert np.isfinite(b["input_distance"].numpy()).all() and a["input_distance_feature"].dtype == tf.int64
assert "tensorflow_probability" not in sys.modules
print("OK", float(a["mean"][0, 0]), float(b["upper"][0, 0]))
"""


def test_export_loads_and_runs_without_tensorflow_probability(exported, tmp_path):
    path, dataset = exported
    np.save(tmp_path / "x.npy", _raw_inputs(dataset))
    out = subprocess.run([sys.executable, "-c", NO_TFP_SCRIPT, str(path), str(tmp_path / "x.npy")],
                         capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("OK")
    in_process = tf.saved_model.load(str(path)).signatures["serving_default"](
        x=tf.constant(_raw_inputs(dataset)))["mean"].numpy()[0, 0]
    assert float(out.stdout.split()[1]) == pytest.approx(float(in_process), rel=1e-6)


def test_model_info_names_the_family_in_the_signature_and_in_assets(exported):
    path, dataset = exported
    info = json.loads(tf.saved_model.load(str(path)).signatures["model_info"]()["info"].numpy().decode())
    assert info["family"] == "linear_regression" and info["config"]["inference"] == "cavi"
    assert info["dataset"] == "uci/yacht" and info["serving_default_num_samples"] == 64
    assert json.loads((path / "assets.extra" / export.MODEL_INFO_FILE).read_text()) == info


def _numpy_input_distance(x, scaler):
    """max_j |x_j - mean_j| / std_j and its argmax, in float64."""
    z = np.abs((np.asarray(x, np.float64) - scaler.mean.astype(np.float64)) / scaler.std.astype(np.float64))
    return z.max(axis=-1), z.argmax(axis=-1)


def _info(path):
    return json.loads(tf.saved_model.load(str(path)).signatures["model_info"]()["info"].numpy().decode())


def test_input_distance_inside_the_training_range_is_the_largest_standardized_deviation(exported):
    path, dataset = exported
    signatures = tf.saved_model.load(str(path)).signatures
    x = _raw_inputs(dataset, 30)
    want, feature = _numpy_input_distance(x, dataset.x_scaler)
    answers = [signatures["serving_default"](x=tf.constant(x)),
               signatures["predict_mc"](x=tf.constant(x), num_samples=tf.constant(3), seed=tf.constant([1, 2]))]
    for out in answers:
        np.testing.assert_allclose(out["input_distance"].numpy()[:, 0], want, rtol=1e-6)
        np.testing.assert_array_equal(out["input_distance_feature"].numpy()[:, 0], feature)
    assert want.max() <= _info(path)["input_distance"]["training_percentiles"]["100"] * (1 + 1e-6)


def test_a_row_50_training_stddevs_out_in_one_feature_is_at_input_distance_50(exported):
    path, dataset = exported
    mean, std = dataset.x_scaler.mean, dataset.x_scaler.std
    rows = np.tile(mean, [3, 1]).astype(np.float32)
    rows[1, 2] += 50 * std[2]
    rows[2, 4] -= 50 * std[4]
    out = tf.saved_model.load(str(path)).signatures["serving_default"](x=tf.constant(rows))
    np.testing.assert_allclose(out["input_distance"].numpy()[:, 0], [0.0, 50.0, 50.0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["input_distance_feature"].numpy()[1:, 0], [2, 4])
    assert 50.0 > _info(path)["input_distance"]["training_percentiles"]["100"]  # beyond every training row


def test_the_graph_compresses_a_far_row_as_training_did(exported, fitted):
    # Rows 50 training sd out reach the model at 3 + log(48) sd (training.data.Standardizer's tail), in the graph.
    path, dataset = exported
    model, _ = fitted
    mean, std = dataset.x_scaler.mean, dataset.x_scaler.std
    rows = np.tile(mean, [3, 1]).astype(np.float32)
    rows[1, 2] += 50 * std[2]
    rows[2, 4] -= 4 * std[4]
    standardized = np.zeros_like(rows)
    standardized[1, 2], standardized[2, 4] = 3 + np.log(48.0), -(3 + np.log(2.0))
    np.testing.assert_allclose(dataset.x_scaler.apply(rows), standardized, atol=1e-5)
    out = tf.saved_model.load(str(path)).signatures["predict_mc"](x=tf.constant(rows), num_samples=tf.constant(20000),
                                                                  seed=tf.constant([4, 2]))
    closed = model.exact_predictive(standardized)
    np.testing.assert_allclose(out["mean"].numpy(), dataset.y_scaler.invert(closed.loc.numpy()), rtol=0.01,
                               atol=0.05 * dataset.target_scale)
    info = _info(path)["input_standardization"]
    assert info["tail_sd"] == data.INPUT_TAIL and "log1p" in info["definition"]


def test_model_info_states_the_input_distance_and_the_training_rows_percentiles(exported):
    path, dataset = exported
    reference = _info(path)["input_distance"]
    assert reference["outputs"] == ["input_distance", "input_distance_feature"]
    assert reference["definition"].startswith("max_j |x_j - mean_j| / std_j") and reference["constant_features"] == []
    train, _ = _numpy_input_distance(dataset.x_scaler.invert(dataset.x_train), dataset.x_scaler)
    percentiles = reference["training_percentiles"]
    assert set(percentiles) == {"50", "90", "99", "99.9", "100"}
    np.testing.assert_allclose([percentiles[k] for k in ("50", "90", "99", "99.9", "100")],
                               np.percentile(train, [50, 90, 99, 99.9, 100]), rtol=1e-5)


@pytest.fixture(scope="module")
def constant_column(data_dir, tmp_path_factory):
    """Yacht with a seventh input column that is 3.5 on every row, fitted and exported."""
    import dataclasses

    yacht = data.load("uci/yacht", data_dir, split=0)
    raw = {k: np.concatenate([yacht.x_scaler.invert(x), np.full([len(x), 1], 3.5, np.float32)], axis=1)
           for k, x in (("train", yacht.x_train), ("test", yacht.x_test))}
    scaler = data.Standardizer.fit(raw["train"])
    assert scaler.std[6] == 1.0  # the scaler's constant column: its input reaches the network unscaled
    dataset = dataclasses.replace(yacht, x_train=scaler.apply(raw["train"]), x_test=scaler.apply(raw["test"]),
                                  x_scaler=scaler)
    model = lr.build_model(lr.Config(inference="cavi"), dataset)
    model.fit_closed_form(dataset.x_train, dataset.y_train)
    return export.export(model, dataset, tmp_path_factory.mktemp("constant"), num_samples=8, seed=0), dataset


def test_a_column_constant_in_training_reads_far_once_a_request_changes_it(constant_column):
    """Its scale is float32's resolution at its value, eps * max(|3.5|, 1): rounding reads under 1, a change of 0.5
    reads 0.5 / (eps * 3.5) ~ 1.2e6, finite; the training rows' own distances are not inflated by it."""
    path, dataset = constant_column
    eps = float(np.finfo(np.float32).eps)
    rows = np.repeat(_raw_inputs(dataset, 1), 3, axis=0)
    assert rows[0, 6] == 3.5
    rows[1, 6] = np.nextafter(np.float32(3.5), np.float32(4.0))
    rows[2, 6] = 4.0
    out = tf.saved_model.load(str(path)).signatures["serving_default"](x=tf.constant(rows))
    distance, feature = out["input_distance"].numpy()[:, 0], out["input_distance_feature"].numpy()[:, 0]
    others, other_feature = _numpy_input_distance(rows[:1, :6], data.Standardizer(dataset.x_scaler.mean[:6],
                                                                                  dataset.x_scaler.std[:6]))
    rounding = float(np.float32(rows[1, 6]) - 3.5) / (eps * 3.5)
    assert rounding < 1.0
    np.testing.assert_allclose(distance, [others[0], max(others[0], rounding), 0.5 / (eps * 3.5)], rtol=1e-6)
    assert feature[0] == other_feature[0] and feature[2] == 6
    assert np.isfinite(out["mean"].numpy()).all()
    reference = _info(path)["input_distance"]
    assert reference["constant_features"] == [6]
    assert reference["training_percentiles"]["100"] < 5.0

    # Finite however far: float64 inside, capped at float32's largest value.
    measure = export.InputDistance(dataset.x_scaler, dataset.x_train)
    huge = rows[:1].copy()
    huge[0, 6] = 3e38
    distance, feature = measure(tf.constant(huge))
    assert distance.numpy()[0] == np.finfo(np.float32).max and feature.numpy()[0] == 6


def test_regression_predict_moments_matches_exact_sampling_for_one_hidden_layer(data_dir, tmp_path):
    """A UCI-sized network (8-50-2): the output pre-activations' means and variances by moment propagation are exact,
    so the predictive mean and epistemic spread agree with exact sampling to Monte Carlo error; the lenet5
    network, which moment propagation does not cover, exports no `predict_moments`."""
    from models import bayesian_dense

    concrete = data.load("uci/concrete", data_dir, split=0)
    tf_keras.utils.set_random_seed(1)  # the initializers too (tf.random.set_seed alone leaves them to chance)
    model = bayesian_dense.build_model(bayesian_dense.Config(hidden_units=(50,), init_rho=-1.5), concrete)
    path = export.export(model, concrete, tmp_path / "bnn")
    signatures = tf.saved_model.load(str(path)).signatures
    x = tf.constant(_raw_inputs(concrete, rows=20))
    args = dict(x=x, num_samples=tf.constant(20000), seed=tf.constant([4, 2]))
    exact, approx = signatures["predict_mc"](**args), signatures["predict_moments"](**args)
    spread = exact["epistemic_stddev"].numpy()
    np.testing.assert_allclose(approx["mean"], exact["mean"], atol=float(5 * spread.max() / np.sqrt(20000)))
    np.testing.assert_allclose(approx["epistemic_stddev"], spread, rtol=0.03)
    # The noise head's softplus of a Gaussian-approximated pre-activation: close, not exact.
    np.testing.assert_allclose(approx["aleatoric_stddev"], exact["aleatoric_stddev"], rtol=0.1)
    for name in export.INPUT_DISTANCE_OUTPUTS:  # a function of the input, whatever the predictive's method
        np.testing.assert_array_equal(approx[name], exact[name])
    # An example's answer depends on its input and the seed, not on the rest of its batch (as batching needs).
    _assert_batch_invariant(signatures, ("predict_mc", "predict_moments"), x)
    np.save(tmp_path / "x.npy", _raw_inputs(concrete))
    out = subprocess.run([sys.executable, "-c", NO_TFP_SCRIPT, str(path), str(tmp_path / "x.npy")],
                         capture_output=True, text=True, timeout=120, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert out.returncode == 0 and out.stdout.startswith("OK"), out.stderr[-3000:]  # predict_moments without TFP

    mnist_like = data.Dataset(name="stand-in", task="classification", num_classes=10,
                              x_train=np.zeros((2, 28, 28, 1), np.float32), y_train=np.zeros(2, np.int32),
                              x_test=np.zeros((2, 28, 28, 1), np.float32), y_test=np.zeros(2, np.int32))
    lenet = bayesian_dense.build_model(bayesian_dense.Config(arch="lenet5", hidden_units=(16,)), mnist_like)
    lenet_signatures = tf.saved_model.load(str(export.export(lenet, mnist_like, tmp_path / "lenet"))).signatures
    assert "predict_moments" not in lenet_signatures
    # Images carry no input distance: a maximum over pixels says nothing about an image being like the training set.
    assert not set(export.INPUT_DISTANCE_OUTPUTS) & set(lenet_signatures["predict_mc"].structured_outputs)
    _assert_batch_invariant(lenet_signatures, ("predict_mc",), tf.random.stateless_uniform([5, 28, 28, 1], [3, 3]))


def test_mean_field_export_precomputes_the_posterior_variances_and_answers_as_the_live_model(tmp_path):
    """The signatures read sigma^2 from variables written at export instead of taking softplus(rho)^2 on every
    request (no Softplus left in a classifier's graphs), with the same answers bit for bit; the model itself keeps
    its weights and goes on reading the live ones."""
    from models import bayesian_dense

    mnist_like = data.Dataset(name="stand-in", task="classification", num_classes=10,
                              x_train=np.zeros((2, 28, 28, 1), np.float32), y_train=np.zeros(2, np.int32),
                              x_test=np.zeros((2, 28, 28, 1), np.float32), y_test=np.zeros(2, np.int32))
    tf_keras.utils.set_random_seed(3)
    model = bayesian_dense.build_model(bayesian_dense.Config(hidden_units=(16, 16), init_rho=-2.0), mnist_like)
    weights = [w.name for w in model.variables]
    signatures = tf.saved_model.load(str(export.export(model, mnist_like, tmp_path / "bnn"))).signatures
    assert [w.name for w in model.variables] == weights  # the snapshot is the export's, not a weight of the model
    for name in ("predict_mc", "predict_moments"):
        ops = {node.op for f in signatures[name].graph.as_graph_def().library.function for node in f.node_def}
        assert "Softplus" not in ops, name
    x = tf.random.stateless_uniform([6, 28, 28, 1], [5, 5])
    args = dict(num_samples=tf.constant(32), seed=tf.constant([4, 2], tf.int32))
    live = export.build_servable(model, mnist_like, 32, 0)
    for name in ("predict_mc", "predict_moments"):
        served, reference = signatures[name](x=x, **args), getattr(live, name)(x, **args)
        for key in served:
            np.testing.assert_array_equal(served[key], reference[key], err_msg=f"{name} {key}")
    before = live.predict_mc(x, **args)["probabilities"].numpy()
    layer = model.hidden_layers[0]
    layer.kernel_rho.assign(layer.kernel_rho + 1.0)  # wider posterior: the live model must see it
    assert np.abs(live.predict_mc(x, **args)["probabilities"].numpy() - before).max() > 1e-3
    served_again = signatures["predict_mc"](x=x, **args)["probabilities"].numpy()
    np.testing.assert_array_equal(served_again, before)  # and the export keeps what it was given


def _assert_batch_invariant(signatures, names, x):
    args = dict(num_samples=tf.constant(64), seed=tf.constant([4, 2]))
    for name in names:
        batch = signatures[name](x=x, **args)
        alone = signatures[name](x=x[3:4], **args)
        for key in batch:
            np.testing.assert_allclose(alone[key], batch[key][3:4], rtol=1e-4, atol=1e-5, err_msg=f"{name} {key}")
