"""Datasets: the UCI regression benchmark, MNIST-like image sets, and TFDS names.

Every loader returns a `Dataset` of numpy arrays plus the statistics needed to map model outputs back to the
original units, and `Dataset.pipeline` turns a split into a `tf.data` pipeline (seeded shuffle, batch, prefetch).

UCI regression benchmark (Hernandez-Lobato and Adams 2015, as redistributed by Gal and Ghahramani 2016), read from
`<data_dir>/uci/<name>/data/`:
  * `data.txt`: whitespace-separated rows; `index_features.txt`, `index_target.txt`: column indices;
  * `index_train_<k>.txt`, `index_test_<k>.txt`: row indices of standard split k (20 splits; protein has 5).
Features and target are standardized with the statistics of the training rows of the split only:
    x' = (x - mean_train(x)) / std_train(x),      y' = (y - mean_train(y)) / std_train(y).
A column that is constant on the training rows (naval has one, and one whose spread is float round-off) keeps
std = 1 so it maps to zero instead of NaN or amplified noise. Models are fitted in standardized units; metrics are
reported in the original units, as the published tables are:
    RMSE = std_y * RMSE',     log p(y) = log p'(y') - log std_y.
Features of a table (UCI, `toy/gap`, `csv:PATH`) then have their tails compressed beyond INPUT_TAIL standard
deviations, logarithmically (`Standardizer`), so that a row 50 sd out in a heavy-tailed column reaches the network
7 sd out, not 50: a network is linear in its inputs far from the data, and its predictive mean there would follow
the one column to absurd values. Inside +-INPUT_TAIL sd (99.7% of a normal column) the map is the identity.

Images (`mnist`, `fashion_mnist`: the four IDX gz files; `binarized_mnist`: Larochelle's fixed binarization,
`binarized_mnist_{train,valid,test}.amat`) come as float32 [N, 28, 28, 1] in [0, 1] with int32 labels (none for
binarized MNIST). `toy/gap` is a built-in 1-D regression set with a gap in its inputs. `csv:PATH` is a user's
table (`training/csv_data.py`). Any other name is handed to `tensorflow_datasets`.

A dataset that is missing or malformed raises `DatasetError` before any training starts, naming what was looked
for, where, and what exists there.
"""

from __future__ import annotations

import dataclasses
import gzip
import pathlib
import struct
from typing import Optional

import numpy as np

UCI_DATASETS = (
    "bostonHousing", "concrete", "energy", "kin8nm", "naval-propulsion-plant", "power-plant",
    "protein-tertiary-structure", "wine-quality-red", "yacht",
)
IMAGE_DATASETS = ("mnist", "fashion_mnist", "binarized_mnist")
TOY_DATASETS = ("toy/gap",)
LOCAL_DATASETS = tuple(f"uci/{n}" for n in UCI_DATASETS) + IMAGE_DATASETS + TOY_DATASETS

REGRESSION = "regression"
CLASSIFICATION = "classification"
DENSITY = "density"  # unlabelled data, e.g. for a VAE

# A training-split standard deviation below this fraction of the column's scale counts as constant.
_CONSTANT_RTOL = 1e-8
# Standardized features beyond this many standard deviations are compressed logarithmically (`Standardizer`).
INPUT_TAIL = 3.0


class DatasetError(ValueError):
    """A dataset that cannot be found or read; the message says what was looked for and where."""


@dataclasses.dataclass(frozen=True)
class Standardizer:
    """x' = tail((x - mean) / std), fitted on training data; arrays broadcast over the last axis.

    With `tail` = c (features of a table) the standardized value z is compressed beyond c standard deviations:
        tail(z) = sign(z) * (min(|z|, c) + log1p(max(|z| - c, 0))),
    the identity for |z| <= c, continuous with slope 1 at c and logarithmic beyond it (54 sd -> 6.95 sd for c = 3);
    its inverse is sign(t) * (min(|t|, c) + expm1(max(|t| - c, 0))). `tail` None (targets) is plain standardization.

    Attributes:
      mean, std: float32 [features]; std = 1 where the column was constant on the training rows.
      tail: c, or None.
      constant: bool [features], the columns constant on the training rows (None for a hand-made scaler).
    """

    mean: np.ndarray
    std: np.ndarray
    tail: Optional[float] = None
    constant: Optional[np.ndarray] = None

    @classmethod
    def fit(cls, x: np.ndarray, tail: Optional[float] = None) -> "Standardizer":
        """Fits per-column statistics; a (numerically) constant column keeps std = 1."""
        x = np.asarray(x, np.float64)
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        constant = std <= _CONSTANT_RTOL * np.maximum(np.abs(mean), 1.0)
        std = np.where(constant, 1.0, std)
        return cls(mean=mean.astype(np.float32), std=std.astype(np.float32), tail=tail, constant=constant)

    def apply(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, np.float64) - self.mean) / self.std
        if self.tail is not None:
            a = np.abs(z)
            z = np.sign(z) * (np.minimum(a, self.tail) + np.log1p(np.maximum(a - self.tail, 0.0)))
        return z.astype(np.float32)

    def invert(self, x: np.ndarray) -> np.ndarray:
        z = np.asarray(x, np.float64)
        if self.tail is not None:
            a = np.abs(z)
            z = np.sign(z) * (np.minimum(a, self.tail) + np.expm1(np.maximum(a - self.tail, 0.0)))
        return (z * self.std + self.mean).astype(np.float32)


@dataclasses.dataclass
class Dataset:
    """A dataset in memory, split into train and test (and sometimes validation) parts.

    Attributes:
      name: the `--dataset` value.
      task: `regression`, `classification` or `density`.
      x_train, x_test: float32 [N, ...features]; standardized for regression.
      y_train, y_test: float32 [N, outputs] (regression, standardized), int32 [N] (classification) or None.
      x_scaler, y_scaler: the training-split standardization (regression only), to undo it at export.
      num_classes: number of classes for classification, else None.
      x_valid, y_valid: a held-out part of the training data, when the source defines one or one was split off.
      split: the standard split index (UCI), else None.
      feature_names: the input columns' names in order, when the source names them (a CSV table), else None.
      target_name: the target column's name (a CSV table), else None.
      class_names: the classes' names in index order (a CSV table's labels), else None.
    """

    name: str
    task: str
    x_train: np.ndarray
    y_train: Optional[np.ndarray]
    x_test: np.ndarray
    y_test: Optional[np.ndarray]
    x_scaler: Optional[Standardizer] = None
    y_scaler: Optional[Standardizer] = None
    num_classes: Optional[int] = None
    x_valid: Optional[np.ndarray] = None
    y_valid: Optional[np.ndarray] = None
    split: Optional[int] = None
    feature_names: Optional[tuple] = None
    target_name: Optional[str] = None
    class_names: Optional[tuple] = None

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def input_shape(self) -> tuple:
        return tuple(self.x_train.shape[1:])

    @property
    def output_dim(self) -> int:
        """Outputs of a regression target, classes of a classifier, 0 for unlabelled data."""
        if self.task == CLASSIFICATION:
            return int(self.num_classes)
        if self.y_train is None:
            return 0
        return int(self.y_train.shape[-1])

    @property
    def target_scale(self) -> float:
        """std of the (first) regression target in original units; 1 when targets are not standardized."""
        return float(self.y_scaler.std[0]) if self.y_scaler is not None else 1.0

    def arrays(self, split: str):
        """Returns (x, y) of `train`, `test` or `valid`."""
        if split not in ("train", "test", "valid"):
            raise ValueError(f"unknown split {split!r}; expected train, test or valid")
        x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
        if x is None:
            raise DatasetError(f"dataset {self.name!r} has no {split} part")
        return x, y

    def pipeline(self, split: str, batch_size: int, *, shuffle_seed: Optional[int] = None,
                 drop_remainder: bool = False, repeat: bool = False):
        """A `tf.data` pipeline over one split.

        Args:
          split: `train`, `test` or `valid`.
          batch_size: examples per batch.
          shuffle_seed: when given, shuffles the whole split once with this seed (an epoch's order is a pure
            function of the seed, which is what makes a resumed run see the same batches).
          drop_remainder: drop a last, smaller batch.
          repeat: repeat forever.

        Returns:
          A `tf.data.Dataset` of `(x, y)` tuples, or of `x` alone when the split has no labels.
        """
        import tensorflow as tf

        x, y = self.arrays(split)
        ds = tf.data.Dataset.from_tensor_slices(x if y is None else (x, y))
        if shuffle_seed is not None:
            ds = ds.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=False)
        if repeat:
            ds = ds.repeat()
        return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)

    def training_batches(self, batch_size: int, seed: int, start_step: int, num_epochs: int):
        """Shuffled training batches of epochs 0..num_epochs-1, starting at global step `start_step`.

        Epoch e is a permutation drawn from (seed, e) alone, cut into N // batch_size full batches (the last,
        smaller batch is dropped so every step has the same size). A run resumed at any step therefore sees
        exactly the batches an uninterrupted run would have.

        Returns:
          A `tf.data.Dataset` of `(x, y)` (or `x`) batches.
        """
        import tensorflow as tf

        x, y = self.arrays("train")
        arrays = tuple(tf.constant(a) for a in ((x,) if y is None else (x, y)))
        steps_per_epoch = len(x) // batch_size
        start_epoch, offset = divmod(start_step, steps_per_epoch)

        def epoch(e):
            # A stateless permutation: tf.data's own shuffle seeds interact with the global seed. Cut into its
            # batches as rows of one [steps, batch_size] tensor, so the pipeline hands out one row per step where
            # slicing single indices and batching them again cost two tf.data events per example, a large part of
            # a small network's step, taken from the step's own CPU time.
            order = tf.random.experimental.stateless_shuffle(
                tf.range(len(x)), seed=tf.stack([tf.constant(seed, tf.int64), e]))
            return tf.data.Dataset.from_tensor_slices(
                tf.reshape(order[:steps_per_epoch * batch_size], [steps_per_epoch, batch_size]))

        def gather(indices):
            batch = tuple(tf.gather(a, indices) for a in arrays)
            return batch[0] if y is None else batch

        return (tf.data.Dataset.range(start_epoch, num_epochs).flat_map(epoch).skip(offset)
                .map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                .prefetch(tf.data.AUTOTUNE))

    def split_off_validation(self, fraction: float, seed: int) -> "Dataset":
        """Returns a copy whose last `fraction` of shuffled training rows became `valid`; test is unchanged.

        The standardization is kept (it was fitted on the whole training split), so the validation rows are
        in the same units; use it only to tune what the protocol tunes, never on the test rows.
        """
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
        order = np.random.default_rng(seed).permutation(self.num_train)
        n_valid = max(1, int(round(fraction * self.num_train)))
        train_idx, valid_idx = order[:-n_valid], order[-n_valid:]
        take = lambda a, i: None if a is None else a[i]  # noqa: E731
        return dataclasses.replace(
            self, x_train=self.x_train[train_idx], y_train=take(self.y_train, train_idx),
            x_valid=self.x_train[valid_idx], y_valid=take(self.y_train, valid_idx))


def load_toy_gap(seed: int = 0, num_train: int = 1000,
                  input_tail: Optional[float] = INPUT_TAIL) -> Dataset:
    """A 1-D regression set with a gap, to see epistemic uncertainty grow away from the data.

    Training inputs come from two clusters, U(-4, -1.5) and U(1.5, 4); the target is y = sin(1.5 x) + 0.3 x plus
    N(0, 0.15^2) noise. Test inputs are a grid over [-6, 6], so they cover the gap (-1.5, 1.5) and both outer
    regions the model never saw. Standardized like the UCI sets.
    """
    rng = np.random.default_rng(seed)
    half = num_train // 2
    x_train = np.concatenate([rng.uniform(-4.0, -1.5, half), rng.uniform(1.5, 4.0, num_train - half)])[:, None]
    x_test = np.linspace(-6.0, 6.0, 241)[:, None]
    f = lambda x: np.sin(1.5 * x) + 0.3 * x  # noqa: E731
    y_train = f(x_train) + 0.15 * rng.standard_normal(x_train.shape)
    y_test = f(x_test) + 0.15 * rng.standard_normal(x_test.shape)
    x_scaler, y_scaler = Standardizer.fit(x_train, tail=input_tail or None), Standardizer.fit(y_train)
    return Dataset(name="toy/gap", task=REGRESSION, split=seed,
                   x_train=x_scaler.apply(x_train), y_train=y_scaler.apply(y_train),
                   x_test=x_scaler.apply(x_test), y_test=y_scaler.apply(y_test),
                   x_scaler=x_scaler, y_scaler=y_scaler)


def load(name: str, data_dir: str | pathlib.Path, split: Optional[int] = 0, csv=None,
         input_tail: Optional[float] = INPUT_TAIL) -> Dataset:
    """Loads `name` (`uci/<dataset>`, `mnist`, `fashion_mnist`, `binarized_mnist`, `toy/gap`, `csv:PATH`, or a
    TFDS name).

    Args:
      name: the `--dataset` value.
      data_dir: directory holding `uci/`, `mnist/`, ... (the offline datasets).
      split: the UCI standard split index (a CSV table: its random split's index); ignored by datasets with one
        fixed train/test split.
      csv: a `training.csv_data.CsvSpec`, for `csv:PATH` (`TrainConfig.csv_spec()`).
      input_tail: a table's standardized features are compressed beyond this many sd (`Standardizer`); 0 or None:
        plain standardization. Images ignore it.

    Raises:
      DatasetError: the dataset is missing or malformed, or `split` is out of range.
    """
    data_dir = pathlib.Path(data_dir).expanduser()
    if name.startswith("csv:"):
        from training import csv_data  # it builds on this module
        return csv_data.load(_require_csv_spec(name, csv), 0 if split is None else split, input_tail)
    if name.startswith("uci/"):
        return load_uci(name[len("uci/"):], data_dir, 0 if split is None else split, input_tail)
    if name in ("mnist", "fashion_mnist"):
        return load_idx_images(name, data_dir)
    if name == "binarized_mnist":
        return load_binarized_mnist(data_dir)
    if name == "toy/gap":
        return load_toy_gap(0 if split is None else split, input_tail=input_tail)
    return load_tfds(name, data_dir)


def check_available(name: str, data_dir: str | pathlib.Path, split: Optional[int] = 0, csv=None) -> None:
    """Raises `DatasetError` if `load` would fail for a missing file (a CSV table: for anything), without reading
    the data (a CSV table is read and checked whole)."""
    data_dir = pathlib.Path(data_dir).expanduser()
    if name.startswith("csv:"):
        load(name, data_dir, split, csv)
    elif name.startswith("uci/"):
        _uci_files(name[len("uci/"):], data_dir, 0 if split is None else split)
    elif name in ("mnist", "fashion_mnist"):
        for f in _IDX_FILES.values():
            _require_file(data_dir / name / f, name, data_dir)
    elif name == "binarized_mnist":
        for part in ("train", "valid", "test"):
            _require_file(data_dir / name / f"binarized_mnist_{part}.amat", name, data_dir)


def num_splits(name: str, data_dir: str | pathlib.Path, csv=None) -> int:
    """The splits `--split=all` runs: a UCI set's standard splits, a CSV table's random ones (one with a test
    file)."""
    if name.startswith("csv:"):
        return _require_csv_spec(name, csv).num_splits
    if name.startswith("uci/"):
        return num_uci_splits(name[len("uci/"):], data_dir)
    return 1


def _require_csv_spec(name: str, csv):
    if csv is None:
        raise DatasetError(f"--dataset={name} needs --target=COLUMN (and optionally --features, --task, --test_csv)")
    return csv


def num_uci_splits(name: str, data_dir: str | pathlib.Path) -> int:
    """The number of standard splits of UCI dataset `name` (20; protein has 5)."""
    root = pathlib.Path(data_dir).expanduser() / "uci" / name / "data"
    path = _require_file(root / "n_splits.txt", f"uci/{name}", data_dir)
    return int(_read_ints(path)[0])


def _listing(path: pathlib.Path) -> str:
    """What exists at the nearest existing ancestor of `path`, for error messages."""
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.is_dir():
        entries = sorted(p.name + ("/" if p.is_dir() else "") for p in parent.iterdir())
        shown = ", ".join(entries[:30]) + (", ..." if len(entries) > 30 else "")
        return f"{parent} contains: {shown or '(nothing)'}"
    return f"{parent} does not exist"


def _require_file(path: pathlib.Path, name: str, data_dir) -> pathlib.Path:
    if not path.is_file():
        raise DatasetError(
            f"dataset {name!r}: expected file {path} (under --data_dir={data_dir}) is missing; {_listing(path)}")
    return path


def _read_ints(path: pathlib.Path) -> np.ndarray:
    try:
        values = np.loadtxt(path, dtype=np.int64, ndmin=1)
    except ValueError as e:
        raise DatasetError(f"{path} is malformed: expected one integer per line ({e})") from e
    if not values.size:
        raise DatasetError(f"{path} is empty: expected one integer per line")
    return values


def _uci_files(name: str, data_dir: pathlib.Path, split: int) -> dict:
    if name not in UCI_DATASETS:
        raise DatasetError(f"unknown UCI dataset {name!r}; the benchmark has: {', '.join(UCI_DATASETS)}")
    root = data_dir / "uci" / name / "data"
    files = {k: _require_file(root / f, f"uci/{name}", data_dir) for k, f in (
        ("data", "data.txt"), ("features", "index_features.txt"), ("target", "index_target.txt"),
        ("n_splits", "n_splits.txt"))}
    n_splits = int(_read_ints(files["n_splits"])[0])
    if not 0 <= split < n_splits:
        raise DatasetError(f"uci/{name} has standard splits 0..{n_splits - 1}; got --split={split}")
    files["train"] = _require_file(root / f"index_train_{split}.txt", f"uci/{name}", data_dir)
    files["test"] = _require_file(root / f"index_test_{split}.txt", f"uci/{name}", data_dir)
    return files


def load_uci(name: str, data_dir: pathlib.Path, split: int = 0,
             input_tail: Optional[float] = INPUT_TAIL) -> Dataset:
    """Standard split `split` of a UCI regression dataset, standardized with training statistics."""
    files = _uci_files(name, data_dir, split)
    try:
        data = np.loadtxt(files["data"], dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise DatasetError(f"{files['data']} is malformed: {e}") from e
    features, target = _read_ints(files["features"]), _read_ints(files["target"])
    train, test = _read_ints(files["train"]), _read_ints(files["test"])
    n, cols = data.shape
    for what, idx, bound in (("feature", features, cols), ("target", target, cols), ("train", train, n),
                             ("test", test, n)):
        if idx.size == 0 or idx.min() < 0 or idx.max() >= bound:
            raise DatasetError(f"uci/{name}: {what} indices fall outside data.txt ({n} rows x {cols} columns)")
    if not np.all(np.isfinite(data)):
        raise DatasetError(f"{files['data']} holds non-finite values")
    x, y = data[:, features], data[:, target[:1]]  # one target: the benchmark's column
    x_scaler, y_scaler = Standardizer.fit(x[train], tail=input_tail or None), Standardizer.fit(y[train])
    return Dataset(
        name=f"uci/{name}", task=REGRESSION, split=split,
        x_train=x_scaler.apply(x[train]), y_train=y_scaler.apply(y[train]),
        x_test=x_scaler.apply(x[test]), y_test=y_scaler.apply(y[test]),
        x_scaler=x_scaler, y_scaler=y_scaler)


_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte.gz", "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz", "y_test": "t10k-labels-idx1-ubyte.gz",
}


# Decoded IDX files by (path, size, mtime): a process that loads MNIST again (the OOD set at evaluation, several
# runs in one process) skips the gzip decoding, which is most of a load. The arrays are read-only.
_IDX_CACHE: dict = {}


def read_idx(path: pathlib.Path) -> np.ndarray:
    """Reads a gzipped IDX file (the MNIST format: magic, dims as big-endian int32, then uint8 data)."""
    try:
        stat = path.stat()
    except OSError as e:
        raise DatasetError(f"{path} is not a readable gzip file: {e}") from e
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _IDX_CACHE:
        _IDX_CACHE[key] = _decode_idx(path)
    return _IDX_CACHE[key]


def _decode_idx(path: pathlib.Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DatasetError(f"{path} is not a readable gzip file: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != int(np.prod(dims)):
        raise DatasetError(f"{path}: header promises shape {dims} but the payload has {len(raw) - header} bytes")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def load_idx_images(name: str, data_dir: pathlib.Path) -> Dataset:
    """MNIST or Fashion-MNIST from the four IDX gz files: images [N, 28, 28, 1] in [0, 1], labels int32."""
    arrays = {k: read_idx(_require_file(data_dir / name / f, name, data_dir)) for k, f in _IDX_FILES.items()}
    for part in ("train", "test"):
        if arrays[f"x_{part}"].shape[0] != arrays[f"y_{part}"].shape[0]:
            raise DatasetError(f"{name}: {part} images and labels differ in count")
    images = {k: (arrays[k][..., None] / 255.0).astype(np.float32) for k in ("x_train", "x_test")}
    return Dataset(name=name, task=CLASSIFICATION, num_classes=10,
                   x_train=images["x_train"], y_train=arrays["y_train"].astype(np.int32),
                   x_test=images["x_test"], y_test=arrays["y_test"].astype(np.int32))


def _read_amat(path: pathlib.Path) -> np.ndarray:
    raw = np.frombuffer(path.read_bytes(), np.uint8)
    # Each row is 784 digits separated by spaces and ended by a newline: 2 bytes per pixel.
    if raw.size % (2 * 784) != 0:
        raise DatasetError(f"{path} is malformed: expected rows of 784 space-separated 0/1 digits")
    digits = raw.reshape(-1, 2 * 784)[:, ::2] - ord("0")
    if digits.max(initial=0) > 1:
        raise DatasetError(f"{path} is malformed: found characters other than 0 and 1")
    return digits.reshape(-1, 28, 28, 1).astype(np.float32)


def load_binarized_mnist(data_dir: pathlib.Path) -> Dataset:
    """Larochelle's fixed binarization: 50,000 train, 10,000 valid, 10,000 test images, no labels."""
    parts = {p: _read_amat(_require_file(data_dir / "binarized_mnist" / f"binarized_mnist_{p}.amat",
                                         "binarized_mnist", data_dir))
             for p in ("train", "valid", "test")}
    return Dataset(name="binarized_mnist", task=DENSITY, x_train=parts["train"], y_train=None,
                   x_valid=parts["valid"], y_valid=None, x_test=parts["test"], y_test=None)


def load_tfds(name: str, data_dir: pathlib.Path) -> Dataset:
    """Any other name through `tensorflow_datasets`, from `<data_dir>/tfds/`.

    Data prepared there before (`tfds.builder(name, data_dir=<data_dir>/tfds).download_and_prepare()`, on any
    machine, then copied) is read without a network call; otherwise TFDS downloads and prepares it, which needs
    network access. Image datasets with labels become classification data scaled to [0, 1]; without labels,
    density data.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - tensorflow-datasets is a dependency
        raise DatasetError(f"dataset {name!r} is not local and tensorflow_datasets is not installed") from e
    root = data_dir / "tfds"
    try:
        builder = tfds.builder(name, data_dir=str(root))
    except Exception as e:  # noqa: BLE001 - DatasetNotFoundError and friends: not a TFDS name
        raise DatasetError(
            f"unknown dataset {name!r}: not one of the local datasets ({', '.join(LOCAL_DATASETS)}) under "
            f"--data_dir={data_dir}, not csv:PATH, and not a TFDS name ({e})") from e
    prepared = (pathlib.Path(builder.data_dir) / "dataset_info.json").is_file()
    try:
        if not prepared:
            builder.download_and_prepare()
        train, test = (tfds.as_numpy(builder.as_dataset(split=s, batch_size=-1)) for s in ("train", "test"))
    except Exception as e:  # noqa: BLE001 - TFDS raises many types; all mean the same thing here.
        how = ("" if prepared else
               f"; without network, prepare it on a machine that has one with `python -c \"import tensorflow_datasets "
               f"as tfds; tfds.builder('{name}', data_dir='tfds').download_and_prepare()\"` and copy the tfds/ "
               f"directory to {root}")
        raise DatasetError(f"TFDS dataset {name!r} could not be {'read' if prepared else 'prepared'} "
                           f"under {root}: {e}{how}") from e
    key = "image" if "image" in train else next(iter(train))
    scale = 255.0 if train[key].dtype == np.uint8 else 1.0
    x_train, x_test = (np.asarray(d[key], np.float32) / scale for d in (train, test))
    if "label" in train:
        classes = builder.info.features["label"].num_classes
        return Dataset(name=name, task=CLASSIFICATION, num_classes=classes,
                       x_train=x_train, y_train=np.asarray(train["label"], np.int32),
                       x_test=x_test, y_test=np.asarray(test["label"], np.int32))
    return Dataset(name=name, task=DENSITY, x_train=x_train, y_train=None, x_test=x_test, y_test=None)
