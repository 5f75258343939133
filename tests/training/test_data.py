"""Data loaders on the real offline datasets, and their errors."""

import gzip
import shutil

import numpy as np
import pytest

from training import data


def _tail(z, c=data.INPUT_TAIL):
    """The log-compressed tail, written out: identity inside +-c, c + log(1 + (|z| - c)) beyond."""
    beyond = np.sign(z) * (c + np.log(1.0 + np.maximum(np.abs(z) - c, 0.0)))
    return np.where(np.abs(z) <= c, z, beyond)


def test_uci_standardizes_with_training_rows_only(data_dir):
    d = data.load("uci/concrete", data_dir, split=3)
    raw = np.loadtxt(data_dir / "uci/concrete/data/data.txt")
    train = np.loadtxt(data_dir / "uci/concrete/data/index_train_3.txt", dtype=int)
    test = np.loadtxt(data_dir / "uci/concrete/data/index_test_3.txt", dtype=int)
    assert d.x_train.shape == (len(train), 8) and d.x_test.shape == (len(test), 8)
    z_train = (raw[train, :8] - raw[train, :8].mean(0)) / raw[train, :8].std(0)
    np.testing.assert_allclose(d.x_train, _tail(z_train), rtol=1e-4, atol=1e-5)
    # Test rows use the training statistics, not their own.
    z_test = (raw[test, :8] - raw[train, :8].mean(0)) / raw[train, :8].std(0)
    np.testing.assert_allclose(d.x_test, _tail(z_test), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(d.x_scaler.invert(d.x_test), raw[test, :8], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(d.y_scaler.invert(d.y_test)[:, 0], raw[test, 8], rtol=1e-5)
    assert d.target_scale == pytest.approx(raw[train, 8].std(), rel=1e-5)
    assert d.y_scaler.tail is None  # targets are standardized plainly


def test_input_tail_is_identity_inside_and_logarithmic_beyond():
    scaler = data.Standardizer(np.zeros(1, np.float32), np.ones(1, np.float32), tail=3.0)
    z = np.array([[-54.0], [-3.0], [-1.0], [0.0], [2.999], [3.5], [54.0]])
    t = scaler.apply(z)
    np.testing.assert_allclose(t[1:6, 0], [-3.0, -1.0, 0.0, 2.999, 3.0 + np.log(1.5)], rtol=1e-6)
    np.testing.assert_allclose(t[[0, 6], 0], [-(3 + np.log(52.0)), 3 + np.log(52.0)], rtol=1e-6)
    np.testing.assert_allclose(scaler.invert(t), z, rtol=1e-5)
    # Slope 1 on both sides of the knee: no kink the network could exploit.
    h = 1e-4
    slopes = [(scaler.apply(np.array([[3.0 + s * h]]))[0, 0] - scaler.apply(np.array([[3.0 + s * h - h]]))[0, 0]) / h
              for s in (0, 1)]
    np.testing.assert_allclose(slopes, 1.0, rtol=1e-2)


def test_protein_heavy_tail_reaches_the_network_compressed(data_dir):
    # Protein's feature 6 has test rows more than 18 training sd out; the network sees them within 3 + log(52).
    d = data.load("uci/protein-tertiary-structure", data_dir, split=0)
    z = (d.x_scaler.invert(d.x_test)[:, 6] - d.x_scaler.mean[6]) / d.x_scaler.std[6]
    assert np.abs(z).max() > 18.0
    assert np.abs(d.x_test).max() < 3.0 + np.log(60.0)


def test_uci_splits_differ_and_cover_every_row_once(data_dir):
    a, b = data.load("uci/yacht", data_dir, split=0), data.load("uci/yacht", data_dir, split=1)
    assert not np.array_equal(a.y_scaler.invert(a.y_test), b.y_scaler.invert(b.y_test))
    assert a.num_train + len(a.x_test) == 308


def test_naval_constant_column_gives_no_nan(data_dir):
    d = data.load("uci/naval-propulsion-plant", data_dir, split=0)
    assert np.isfinite(d.x_train).all() and np.isfinite(d.x_test).all()
    # Column 8 is constant and column 11 varies only by float round-off: both map to zero, not to noise.
    np.testing.assert_allclose(d.x_train[:, 8], 0.0, atol=1e-6)
    assert np.abs(d.x_train[:, 11]).max() < 1e-3
    assert d.y_train.shape[1] == 1  # one target, column 16 of the benchmark


def test_every_uci_dataset_loads(data_dir):
    for name in data.UCI_DATASETS:
        d = data.load(f"uci/{name}", data_dir, split=0)
        assert d.task == "regression" and np.isfinite(d.x_train).all(), name
    assert data.num_uci_splits("protein-tertiary-structure", data_dir) == 5


def test_mnist_and_fashion_mnist_from_idx(data_dir):
    for name in ("mnist", "fashion_mnist"):
        d = data.load(name, data_dir)
        assert d.x_train.shape == (60000, 28, 28, 1) and d.x_test.shape == (10000, 28, 28, 1)
        assert d.x_train.dtype == np.float32 and 0.0 <= d.x_train.min() and d.x_train.max() == 1.0
        assert sorted(np.unique(d.y_test)) == list(range(10)) and d.num_classes == 10
    assert data.load("mnist", data_dir).y_train[:5].tolist() == [5, 0, 4, 1, 9]


def test_binarized_mnist_fixed_binarization(data_dir):
    d = data.load("binarized_mnist", data_dir)
    assert d.x_train.shape == (50000, 28, 28, 1) and d.x_valid.shape == (10000, 28, 28, 1)
    assert d.x_test.shape == (10000, 28, 28, 1) and d.y_train is None and d.task == "density"
    assert set(np.unique(d.x_test)) == {0.0, 1.0}


def test_missing_dataset_says_what_and_where(tmp_path):
    (tmp_path / "uci").mkdir()
    with pytest.raises(data.DatasetError) as e:
        data.load("uci/concrete", tmp_path)
    message = str(e.value)
    assert "data.txt" in message and str(tmp_path) in message and "contains" in message


def test_unknown_uci_name_lists_the_benchmark(data_dir):
    with pytest.raises(data.DatasetError, match="kin8nm"):
        data.load("uci/boston", data_dir)


def test_split_out_of_range_is_an_error(data_dir):
    with pytest.raises(data.DatasetError, match="0..4"):
        data.load("uci/protein-tertiary-structure", data_dir, split=5)


def test_malformed_idx_is_an_error(tmp_path, data_dir):
    shutil.copytree(data_dir / "mnist", tmp_path / "mnist")
    with gzip.open(tmp_path / "mnist/t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01\x00\x00\x27\x10" + b"\x01" * 100)  # promises 10000 labels, holds 100
    with pytest.raises(data.DatasetError, match="payload"):
        data.load("mnist", tmp_path)


def test_malformed_uci_rows_are_an_error(tmp_path, data_dir):
    shutil.copytree(data_dir / "uci/yacht", tmp_path / "uci/yacht")
    with open(tmp_path / "uci/yacht/data/data.txt", "a") as f:
        f.write("1 2 three\n")
    with pytest.raises(data.DatasetError, match="malformed"):
        data.load("uci/yacht", tmp_path)


def test_training_batches_are_a_function_of_seed_and_epoch(data_dir):
    d = data.load("uci/yacht", data_dir, split=0)
    full = [b[1].numpy() for b in d.training_batches(32, seed=7, start_step=0, num_epochs=3)]
    steps_per_epoch = d.num_train // 32
    assert len(full) == 3 * steps_per_epoch
    # Epochs are different permutations.
    assert not np.array_equal(np.concatenate(full[:steps_per_epoch]),
                              np.concatenate(full[steps_per_epoch:2 * steps_per_epoch]))
    # A run resumed at any step sees exactly the remaining batches of an uninterrupted run.
    for start in (1, steps_per_epoch, steps_per_epoch + 3):
        resumed = [b[1].numpy() for b in d.training_batches(32, seed=7, start_step=start, num_epochs=3)]
        assert len(resumed) == len(full) - start
        for a, b in zip(resumed, full[start:]):
            np.testing.assert_array_equal(a, b)
    other = [b[1].numpy() for b in d.training_batches(32, seed=8, start_step=0, num_epochs=1)]
    assert not np.array_equal(other[0], full[0])


def test_validation_split_is_carved_from_training_rows(data_dir):
    d = data.load("uci/energy", data_dir, split=0)
    v = d.split_off_validation(0.2, seed=0)
    assert v.num_train + len(v.x_valid) == d.num_train
    np.testing.assert_array_equal(v.x_test, d.x_test)
    rows = {tuple(r) for r in np.concatenate([v.x_train, v.x_valid])}
    assert rows == {tuple(r) for r in d.x_train}


def _tiny_tfds_builder():
    """A TFDS image dataset generated locally (12 train, 5 test 4x4 images, 3 classes), registered once."""
    import tensorflow_datasets as tfds

    name = "vizoo_tiny_images"
    if name in tfds.list_builders():
        return name

    class VizooTinyImages(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(4, 4, 1)), "label": tfds.features.ClassLabel(num_classes=3)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(12), "test": self._generate_examples(5)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"image": np.full((4, 4, 1), 20 * i, np.uint8), "label": i % 3}

    del VizooTinyImages  # registered under its snake-case name
    return name


def test_a_tfds_dataset_prepared_under_data_dir_loads_without_network_or_preparing(tmp_path, monkeypatch):
    import socket

    import tensorflow_datasets as tfds

    name = _tiny_tfds_builder()
    tfds.builder(name, data_dir=str(tmp_path / "tfds")).download_and_prepare()

    def refuse(*args, **kwargs):
        raise AssertionError("a prepared TFDS dataset must not be prepared again or reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", refuse)
    ds = data.load(name, tmp_path)
    assert ds.task == data.CLASSIFICATION and ds.num_classes == 3
    assert ds.x_train.shape == (12, 4, 4, 1) and ds.x_test.shape == (5, 4, 4, 1)
    np.testing.assert_allclose(sorted(ds.x_test[:, 0, 0, 0]), np.arange(5) * 20 / 255.0, rtol=1e-6)


def test_an_unprepared_tfds_dataset_without_network_says_how_to_prepare_it(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    name = _tiny_tfds_builder()

    def offline(*args, **kwargs):
        raise ConnectionError("network is unreachable")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(data.DatasetError) as error:
        data.load(name, tmp_path)
    assert f"tfds.builder('{name}', data_dir='tfds').download_and_prepare()" in str(error.value)
    assert str(tmp_path / "tfds") in str(error.value)
    with pytest.raises(data.DatasetError, match="not a TFDS name"):
        data.load("no_such_dataset_anywhere", tmp_path)
