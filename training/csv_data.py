"""A user's own table: `--dataset=csv:PATH`, trained and served by column names.

The file is comma-separated with a header row naming the columns (RFC 4180 quoting; a UTF-8 byte-order mark is
ignored). `CsvSpec.target` names the column to predict and `CsvSpec.features` the inputs, in order (every other
column by default). Feature values must be numbers; a regression target too, while a classification target may
hold integers or strings, mapped to class indices in sorted order (numerically for integers) whose names the export
carries, so the Classify API and the client answer with the user's labels.

The test rows are either a second file (`test_csv`, the same header names, in any order) or a random
`test_fraction` of the rows, chosen by a permutation seeded by the split index k, so `--split=0, 1, ...` are
reproducible random train/test splits and `--split=all` averages NUM_RANDOM_SPLITS of them as for the UCI sets.
Features (and a regression target) are standardized with the training rows' statistics (`data.Standardizer`), as
the UCI sets are; metrics are reported in the original units.

Anything wrong with the table raises `data.DatasetError` before training, naming the file, the row (1-based, the
header is line 1, so data row r is on line r + 1) and the column.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import pathlib
from typing import Optional, Sequence

import numpy as np

from training import data as data_lib

PREFIX = "csv:"
TASKS = (data_lib.REGRESSION, data_lib.CLASSIFICATION)
# Random train/test splits `--split=all` runs for a table without a test file.
NUM_RANDOM_SPLITS = 10
# Rows a split needs: a standardization needs two training rows, a test metric one test row.
MIN_TRAIN_ROWS = 2
MIN_TEST_ROWS = 1


@dataclasses.dataclass(frozen=True)
class CsvSpec:
    """How to read a table.

    Attributes:
      path: the CSV file (`--dataset=csv:PATH`).
      target: the column to predict (`--target`).
      features: the input columns in order (`--features`); empty: every column but the target, in file order.
      task: `regression` or `classification` (`--task`).
      test_csv: a file of test rows (`--test_csv`); empty: a random `test_fraction` of `path`'s rows.
      test_fraction: the share of rows held out for testing when there is no test file (`--test_fraction`).
    """

    path: str
    target: str
    features: Sequence[str] = ()
    task: str = data_lib.REGRESSION
    test_csv: str = ""
    test_fraction: float = 0.1

    def __post_init__(self):
        if not self.target:
            raise data_lib.DatasetError(f"--dataset=csv:{self.path} needs --target=COLUMN, the column to predict")
        if self.task not in TASKS:
            raise data_lib.DatasetError(f"--task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if not self.test_csv and not 0.0 < self.test_fraction < 1.0:
            raise data_lib.DatasetError(f"--test_fraction must be in (0, 1), got {self.test_fraction}")
        object.__setattr__(self, "features", tuple(self.features))

    @property
    def num_splits(self) -> int:
        """Splits `--split=all` runs: one with a test file, else NUM_RANDOM_SPLITS random ones."""
        return 1 if self.test_csv else NUM_RANDOM_SPLITS


def is_csv(name: str) -> bool:
    return name.startswith(PREFIX)


def path_of(name: str) -> str:
    """The file of `--dataset=csv:PATH`."""
    return name[len(PREFIX):]


@dataclasses.dataclass
class Table:
    """A CSV file read as text: its header and rows of cells, with the file for error messages."""

    path: pathlib.Path
    header: list
    rows: list

    def column(self, name: str) -> int:
        return self.header.index(name)

    def where(self, row: int, name: str) -> str:
        """`PATH row r (line r + 1), column 'name'` for data row index `row` (0-based)."""
        return f"{self.path} row {row + 1} (line {row + 2}), column {name!r}"


def read_table(path: str | pathlib.Path) -> Table:
    """Reads a CSV file with a header row; every row must have the header's number of cells.

    Raises:
      DatasetError: the file is missing, empty, has no data rows, a blank or repeated column name, or a row with
        the wrong number of cells.
    """
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise data_lib.DatasetError(f"CSV file {path} does not exist; {data_lib._listing(path)}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            lines = [row for row in csv.reader(f)]
    except (UnicodeDecodeError, csv.Error) as e:
        raise data_lib.DatasetError(f"{path} is not a readable CSV file: {e}") from e
    # Blank lines (a trailing newline, spacing) carry no row.
    lines = [(number, row) for number, row in enumerate(lines, start=1) if any(cell.strip() for cell in row)]
    if not lines:
        raise data_lib.DatasetError(f"{path} is empty: expected a header row naming the columns, then data rows")
    header = [cell.strip() for cell in lines[0][1]]
    for i, name in enumerate(header):
        if not name:
            raise data_lib.DatasetError(f"{path}: column {i + 1} of the header row has no name")
        if name in header[:i]:
            raise data_lib.DatasetError(f"{path}: the header names column {name!r} twice")
    rows = []
    for number, row in lines[1:]:
        if len(row) != len(header):
            raise data_lib.DatasetError(f"{path} line {number}: {len(row)} cells where the header has "
                                        f"{len(header)} ({', '.join(header)})")
        rows.append([cell.strip() for cell in row])
    if not rows:
        raise data_lib.DatasetError(f"{path} has a header row but no data rows")
    return Table(path=path, header=header, rows=rows)


def feature_names(spec: CsvSpec, table: Table) -> tuple:
    """The input columns, checked against the header."""
    if spec.target not in table.header:
        raise data_lib.DatasetError(f"--target={spec.target!r} is not a column of {table.path}; its columns are: "
                                    f"{', '.join(table.header)}")
    names = spec.features or tuple(c for c in table.header if c != spec.target)
    unknown = [n for n in names if n not in table.header]
    if unknown:
        raise data_lib.DatasetError(f"--features names {', '.join(map(repr, unknown))}, not columns of "
                                    f"{table.path}; its columns are: {', '.join(table.header)}")
    if spec.target in names:
        raise data_lib.DatasetError(f"--features includes the target {spec.target!r}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise data_lib.DatasetError(f"--features names {', '.join(map(repr, repeated))} more than once")
    if not names:
        raise data_lib.DatasetError(f"{table.path} has no feature columns besides the target {spec.target!r}")
    return tuple(names)


def _numbers(table: Table, name: str) -> np.ndarray:
    """Column `name` as float64 [rows]; a missing or non-numeric (or infinite) cell is an error naming it."""
    j = table.column(name)
    cells = [row[j] for row in table.rows]
    try:  # the whole column at once; a failure is looked for cell by cell, to name it
        values = np.asarray(cells, np.float64)
        if np.all(np.isfinite(values)):
            return values
    except ValueError:
        pass
    values = np.empty(len(table.rows), np.float64)
    for i, row in enumerate(table.rows):
        cell = row[j]
        try:
            values[i] = float(cell)
        except ValueError:
            what = "is missing" if not cell else f"is {cell!r}, not a number"
            raise data_lib.DatasetError(f"{table.where(i, name)} {what}") from None
        if not math.isfinite(values[i]):
            raise data_lib.DatasetError(f"{table.where(i, name)} is {cell!r}, not a finite number")
    return values


def _labels(table: Table, name: str) -> list:
    j = table.column(name)
    labels = []
    for i, row in enumerate(table.rows):
        if not row[j]:
            raise data_lib.DatasetError(f"{table.where(i, name)} is missing: every row needs a class label")
        labels.append(row[j])
    return labels


def class_names(labels: Sequence[str]) -> tuple:
    """The distinct labels in class-index order: numerically when all are integers, else as text."""
    distinct = set(labels)
    try:
        return tuple(sorted(distinct, key=lambda s: (int(s), s)))
    except ValueError:
        return tuple(sorted(distinct))


def random_split(num_rows: int, split: int, test_fraction: float) -> tuple:
    """(train rows, test rows), int64 index arrays: a permutation seeded by `split`, its first
    round(test_fraction * num_rows) rows (at least one) for testing, both sorted."""
    num_test = max(MIN_TEST_ROWS, int(round(test_fraction * num_rows)))
    order = np.random.default_rng([split, 20251207]).permutation(num_rows)
    return np.sort(order[num_test:]), np.sort(order[:num_test])


def load(spec: CsvSpec, split: int = 0,
         input_tail: Optional[float] = data_lib.INPUT_TAIL) -> data_lib.Dataset:
    """Train/test split `split` of the table, standardized with its training rows' statistics.

    Returns a `data.Dataset` named `csv:<path>` with `feature_names`, `target_name` and, for classification,
    `class_names` set; x [N, features] float32, y [N, 1] float32 (regression, standardized) or int32 [N].

    Raises:
      DatasetError: as `read_table` and `feature_names`, a missing or non-numeric feature value, a missing
        target, a constant target (one distinct value, or one class), too few rows for the split, a test label
        not seen in training, or a split index out of range.
    """
    table = read_table(spec.path)
    names = feature_names(spec, table)
    if not 0 <= split < spec.num_splits:
        raise data_lib.DatasetError(f"csv:{spec.path} has splits 0..{spec.num_splits - 1} "
                                    f"({'a test file' if spec.test_csv else 'random splits'}); got --split={split}")
    if spec.test_csv:
        test_table = read_table(spec.test_csv)
        missing = [n for n in names + (spec.target,) if n not in test_table.header]
        if missing:
            raise data_lib.DatasetError(f"--test_csv={test_table.path} lacks column(s) {', '.join(map(repr, missing))}"
                                        f" of {table.path}; its columns are: {', '.join(test_table.header)}")
        parts = {"train": (table, None), "test": (test_table, None)}
    else:
        train_rows, test_rows = random_split(len(table.rows), split, spec.test_fraction)
        parts = {"train": (table, train_rows), "test": (table, test_rows)}
    num_train = len(table.rows) if spec.test_csv else len(train_rows)
    if num_train < MIN_TRAIN_ROWS:
        raise data_lib.DatasetError(f"{table.path} has {len(table.rows)} data rows: a split needs at least "
                                    f"{MIN_TRAIN_ROWS} training and {MIN_TEST_ROWS} test row(s)")

    def features_of(part):
        t, rows = parts[part]
        x = np.stack([_numbers(t, n) for n in names], axis=1)
        return x if rows is None else x[rows]

    x_train, x_test = features_of("train"), features_of("test")
    x_scaler = data_lib.Standardizer.fit(x_train, tail=input_tail or None)
    common = dict(name=f"{PREFIX}{spec.path}", task=spec.task, split=split, x_scaler=x_scaler,
                  x_train=x_scaler.apply(x_train), x_test=x_scaler.apply(x_test), feature_names=names,
                  target_name=spec.target)
    if spec.task == data_lib.REGRESSION:
        def target_of(part):
            t, rows = parts[part]
            y = _numbers(t, spec.target)[:, None]
            return y if rows is None else y[rows]

        y_train, y_test = target_of("train"), target_of("test")
        if np.ptp(y_train) == 0.0:
            raise data_lib.DatasetError(f"{table.path}: the target {spec.target!r} is constant ({y_train[0, 0]:g}) "
                                        "on the training rows; there is nothing to regress")
        y_scaler = data_lib.Standardizer.fit(y_train)
        return data_lib.Dataset(y_train=y_scaler.apply(y_train), y_test=y_scaler.apply(y_test), y_scaler=y_scaler,
                                **common)

    def labels_of(part):
        t, rows = parts[part]
        labels = _labels(t, spec.target)
        return labels if rows is None else [labels[i] for i in rows]

    train_labels, test_labels = labels_of("train"), labels_of("test")
    names_of_classes = class_names(train_labels)
    if len(names_of_classes) < 2:
        raise data_lib.DatasetError(f"{table.path}: the target {spec.target!r} has one class "
                                    f"({names_of_classes[0]!r}) on the training rows; a classifier needs two or more")
    index = {name: i for i, name in enumerate(names_of_classes)}
    unseen = sorted(set(test_labels) - set(index))
    if unseen:
        raise data_lib.DatasetError(f"the test rows' target {spec.target!r} holds class(es) "
                                    f"{', '.join(map(repr, unseen[:10]))} that no training row has")
    return data_lib.Dataset(y_train=np.array([index[v] for v in train_labels], np.int32),
                            y_test=np.array([index[v] for v in test_labels], np.int32),
                            num_classes=len(names_of_classes), class_names=names_of_classes, **common)
