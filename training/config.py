"""The training configuration every family shares, and its validation.

A `TrainConfig` is what the shared flags (`training/flags.py`) parse into; tests build one directly. Each family adds
its own model config (a dataclass in its `models/` module). `validate` fails fast, before any data is read or any
step is taken, with a message naming the offending flag.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from typing import Optional

STRATEGIES = ("default", "mirrored", "multi_worker")
TASKS = ("regression", "classification")
CSV_PREFIX = "csv:"
# Flags that describe a CSV table (`--dataset=csv:PATH`) and mean nothing for the other data sets.
CSV_FLAGS = ("target", "features", "test_csv")
LR_SCHEDULES = ("constant", "cosine")

# Fields that may change between a run and its resumption without changing what was trained so far.
RESUMABLE_CHANGES = frozenset({"epochs", "train_steps", "export_base", "num_samples", "data_dir", "workdir",
                               "log_every_steps", "checkpoint_every_steps", "eval_batch_size", "steps_per_execution",
                               "ood_dataset", "train_eval_examples"})


# What a run whose saved config.json lacks a setting did: its features were standardized plainly.
SAVED_WITHOUT = {"input_tail": 0.0}


class ConfigError(ValueError):
    """A bad flag value or combination; the message starts with the flag's name."""


@dataclasses.dataclass
class TrainConfig:
    """Shared training settings (see `training/flags.py` for each flag's help)."""

    dataset: str = "uci/concrete"
    data_dir: str = "data"
    split: str = "0"
    epochs: int = 40
    train_steps: int = 0
    batch_size: int = 32
    learning_rate: float = 1e-2
    lr_schedule: str = "cosine"
    clip_norm: float = 0.0
    jit_compile: bool = False
    steps_per_execution: int = 32
    seed: int = 0
    workdir: str = ""
    export_base: str = ""
    num_samples: int = 100
    strategy: str = "default"
    kl_warmup_epochs: float = 0.0
    validation_fraction: float = 0.0
    checkpoint_every_steps: int = 0
    log_every_steps: int = 0
    eval_batch_size: int = 1024
    train_eval_examples: int = 10000
    ood_dataset: str = "auto"
    target: str = ""
    features: list = dataclasses.field(default_factory=list)
    task: str = "regression"
    test_csv: str = ""
    test_fraction: float = 0.1
    input_tail: float = 3.0

    def ood_name(self) -> str:
        """The out-of-distribution set for classifiers: `auto` pairs MNIST with Fashion-MNIST both ways."""
        if self.ood_dataset == "auto":
            return {"mnist": "fashion_mnist", "fashion_mnist": "mnist"}.get(self.dataset, "")
        return "" if self.ood_dataset == "none" else self.ood_dataset

    @property
    def is_csv(self) -> bool:
        return self.dataset.startswith(CSV_PREFIX)

    def csv_spec(self):
        """The `training.csv_data.CsvSpec` of a `--dataset=csv:PATH` run, else None."""
        if not self.is_csv:
            return None
        from training import csv_data
        return csv_data.CsvSpec(path=self.dataset[len(CSV_PREFIX):], target=self.target, features=self.features,
                                task=self.task, test_csv=self.test_csv, test_fraction=self.test_fraction)

    @property
    def split_index(self) -> Optional[int]:
        """The standard split as an int, or None for `all`."""
        return None if self.split == "all" else int(self.split)

    def validate(self) -> "TrainConfig":
        """Checks every value and combination; raises `ConfigError` naming the flag."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"--{field.name} must be a finite number, got {value}")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "num_samples": self.num_samples,
                    "eval_batch_size": self.eval_batch_size, "steps_per_execution": self.steps_per_execution}
        for name, value in positive.items():
            if int(value) < 1:
                raise ConfigError(f"--{name} must be at least 1, got {value}")
        if not self.learning_rate > 0:
            raise ConfigError(f"--learning_rate must be positive, got {self.learning_rate}")
        for name in ("train_steps", "clip_norm", "kl_warmup_epochs", "input_tail", "checkpoint_every_steps",
                     "log_every_steps", "train_eval_examples"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must not be negative, got {getattr(self, name)}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ConfigError(f"--validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.split != "all":
            try:
                if int(self.split) < 0:
                    raise ValueError
            except ValueError:
                raise ConfigError(f"--split must be a split index (0, 1, ...) or 'all', got {self.split!r}") from None
            self.split = str(int(self.split))
            if self.split != "0" and not self.dataset.startswith("uci/") and not self.is_csv:
                raise ConfigError(f"--split={self.split}: only UCI datasets and CSV tables have several splits; "
                                  f"{self.dataset} has one train/test split (--split=0)")
        elif not self.dataset.startswith("uci/") and not self.is_csv:
            raise ConfigError(f"--split=all runs every split of a UCI dataset or a CSV table; {self.dataset} has one "
                              "split")
        self._validate_csv_flags()
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.jit_compile and self.strategy != "default":
            raise ConfigError("--jit_compile compiles the step on one device; use it with --strategy=default")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"--lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if not 0 <= int(self.seed) < 2 ** 31:
            # The stateless seeds are int32, and NumPy's generators (initialization, shuffles) take no negative seed.
            raise ConfigError(f"--seed must be in [0, 2**31), got {self.seed}")
        if not self.workdir:
            raise ConfigError("--workdir is required: checkpoints, TensorBoard logs and metrics.json go there")
        for name in ("workdir", "export_base"):
            path = getattr(self, name)
            if path:
                if "://" in path:
                    raise ConfigError(f"--{name}={path}: only local directories are supported; write locally and "
                                      "copy the result (e.g. gsutil -m cp -r, aws s3 cp --recursive)")
                path = str(pathlib.Path(path).expanduser())
                setattr(self, name, path)
                _check_writable(name, pathlib.Path(path))
        return self

    def _validate_csv_flags(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"--task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if not self.is_csv:
            given = [name for name in CSV_FLAGS if getattr(self, name)]
            if given or self.task != "regression":
                names = ", ".join(f"--{n}" for n in given + (["task"] if self.task != "regression" else []))
                raise ConfigError(f"{names}: for a CSV table only (--dataset=csv:PATH), not --dataset={self.dataset}")
            return
        if not self.dataset[len(CSV_PREFIX):]:
            raise ConfigError("--dataset=csv:PATH needs the file's path after 'csv:'")
        if not self.target:
            raise ConfigError(f"--target is required with --dataset={self.dataset}: the column to predict")
        if not self.test_csv and not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"--test_fraction must be in (0, 1), got {self.test_fraction}")
        self.features = [str(name).strip() for name in self.features]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _check_writable(flag: str, path: pathlib.Path) -> None:
    """Fails unless `path` is, or can be created as, a writable directory."""
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise ConfigError(f"--{flag}={path}: {existing} exists and is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--{flag}={path}: {existing} is not writable")


def check_resumable(saved: dict, current: dict, extra_allowed=()) -> None:
    """Raises `ConfigError` if a workdir's saved config differs from this run's in what shaped its training."""
    allowed = RESUMABLE_CHANGES | frozenset(extra_allowed)
    # A setting the saved config lacks (one added to vizoo after that run) had its default then, or the value that
    # reproduces what such a run did (SAVED_WITHOUT).
    defaults = {**dataclasses.asdict(TrainConfig()), **SAVED_WITHOUT}
    differing = sorted(k for k in set(saved) | set(current)
                       if k not in allowed and saved.get(k, defaults.get(k)) != current.get(k))
    if differing:
        detail = ", ".join(f"--{k}: was {saved.get(k, defaults.get(k))!r}, now {current.get(k)!r}" for k in differing)
        raise ConfigError(
            f"the workdir holds a run with other settings ({detail}); resume with the same flags or use a new "
            "--workdir")


def load_json(path: pathlib.Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.exists() else None
