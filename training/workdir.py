"""A run's workdir: its lock, the settings it binds (`config.json`), and the records a run leaves there.

`<workdir>/` holds `checkpoints/` (`training/checkpoints.py`), TensorBoard logs (`train/`, `eval/`), figures, and:
  * `config.json`: the run's settings; a restart with other settings is refused (`prepare`);
  * `timing.json`: the training time of the call that trained, reported again by a call that only evaluates;
  * `export.json`: the last export and what it exported, so an unchanged model is not exported twice;
  * `metrics.json`: written last, so it marks a run that trained, evaluated and exported;
  * `.lock`: held by the run using the workdir.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import pathlib
import socket

from absl import logging

from training import checkpoints
from training import config as config_lib

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.json"
TIMING_FILE = "timing.json"
EXPORT_RECORD = "export.json"


@contextlib.contextmanager
def lock(workdir: pathlib.Path):
    """Holds `<workdir>/.lock` (an exclusive flock) for the run: two runs in one workdir would interleave their
    checkpoints and overwrite each other's metrics. A killed run's lock goes with its process."""
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / ".lock", "a+", encoding="utf-8") as held:
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held.seek(0)
            raise config_lib.ConfigError(
                f"--workdir={workdir}: another run ({held.read().strip() or 'unknown'}) is using it; wait for it to "
                "end or use another --workdir") from None
        held.seek(0)
        held.truncate()
        held.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        held.flush()
        yield


def has_checkpoint(workdir: pathlib.Path) -> bool:
    """Whether the workdir holds a checkpoint (complete or not) of a run."""
    return any((workdir / "checkpoints").glob("*.index"))


def check_split_layout(workdir: pathlib.Path, all_splits: bool) -> None:
    """Refuses a workdir that holds the other kind of run: `--split=all` trains in `split_<k>/` subdirectories
    and writes their summary to the top-level metrics.json, which a one-split run there would overwrite (and the
    other way round)."""
    if all_splits and has_checkpoint(workdir):
        raise config_lib.ConfigError(f"--split=all: --workdir={workdir} holds a run of one split; give --split=all "
                                     "its own --workdir")
    if not all_splits and any(has_checkpoint(d) for d in workdir.glob("split_*")):
        raise config_lib.ConfigError(f"--workdir={workdir} holds a --split=all run (its split_<k>/ directories); "
                                     "resume it with --split=all or train one split in another --workdir")


def prepare(workdir: pathlib.Path, config, model_config, total_steps: int | None = None) -> None:
    """Creates the workdir and records the run's settings; refuses to resume a run trained with different settings
    (a workdir without a checkpoint has nothing to resume: a run that failed before its first one does not bind
    it), or, given the run's `total_steps`, one that has already taken more steps."""
    workdir.mkdir(parents=True, exist_ok=True)
    current = json.loads(json.dumps({**config.to_json(), **dataclasses.asdict(model_config)}))
    saved = config_lib.load_json(workdir / CONFIG_FILE)
    if saved is not None and has_checkpoint(workdir):
        # A family config may name fields that only affect evaluation (e.g. a VAE's importance samples).
        config_lib.check_resumable(saved, current, extra_allowed=getattr(model_config, "RESUMABLE_FIELDS", ()))
    if total_steps is not None:
        _check_budget(workdir, total_steps)
    write_json(workdir / CONFIG_FILE, current)


def _check_budget(workdir: pathlib.Path, total_steps: int) -> None:
    """Refuses a budget below the steps the workdir's run has already taken: it would train nothing, evaluate
    and export the longer run's model, and record the shorter budget as its settings."""
    newest = checkpoints.newest_first(workdir / "checkpoints", None)
    if newest and checkpoints.checkpoint_number(newest[0]) > total_steps:
        raise config_lib.ConfigError(
            f"--train_steps/--epochs: {total_steps} steps, but the run in --workdir={workdir} has already trained "
            f"{checkpoints.checkpoint_number(newest[0])}; train it longer, or use another --workdir for a shorter run")


def write_json(path: pathlib.Path, value: dict) -> None:
    """Writes JSON atomically (temp file, then rename), so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def previous_timing(workdir: pathlib.Path) -> dict:
    """`train/seconds` (and `train/seconds_per_epoch`) of the call that trained, from its timing record or, for a
    workdir written without one, its metrics.json; empty when neither has them."""
    for name in (TIMING_FILE, METRICS_FILE):
        saved = config_lib.load_json(workdir / name) or {}
        timing = {k: saved[k] for k in ("train/seconds", "train/seconds_per_epoch") if k in saved}
        if timing:
            return timing
    return {}


def export_once(model, dataset, config, workdir: pathlib.Path) -> pathlib.Path:
    """Exports a new version unless this workdir already exported the same model with the same settings.

    The same model: the newest checkpoint (or the closed-form fit) and the run's config. Running a finished run
    again restores its last checkpoint and trains nothing; exporting it again would add a version identical to
    the last (TF Serving would switch to it for nothing). A changed `--num_samples`, more `--epochs`, or an export
    that was deleted since does export.
    """
    from serving import export  # Serving is only needed when exporting.

    saved = config_lib.load_json(workdir / CONFIG_FILE) or {}
    identity = {
        "checkpoint": (checkpoints.CLOSED_FORM if getattr(model, "closed_form", False)
                       else pathlib.Path(checkpoints.latest(workdir) or "").name),
        # The settings that shape the export: not where data came from or how it was evaluated or logged (the
        # budget shows in the checkpoint's step).
        "config": {k: v for k, v in saved.items() if k == "num_samples" or k not in config_lib.RESUMABLE_CHANGES},
        "export_base": str(pathlib.Path(config.export_base).expanduser().resolve()),
    }
    record = config_lib.load_json(workdir / EXPORT_RECORD)
    if record and record.get("identity") == identity and (pathlib.Path(record["path"]) / "saved_model.pb").exists():
        logging.info("the model is unchanged since its export %s; not exported again", record["path"])
        return pathlib.Path(record["path"])
    path = export.export(model, dataset, config.export_base, num_samples=config.num_samples, seed=config.seed)
    write_json(workdir / EXPORT_RECORD, {"identity": identity, "path": str(path.resolve())})
    logging.info("exported %s", path)
    return path
