"""Checkpoints of the training loop: which one a killed run resumes from, and the closed-form fit's.

A run killed at any moment leaves `<workdir>/checkpoints/` in one of a few states: the manager's `checkpoint`
file lists the last recorded save, a newer save may be complete but unrecorded, and the newest may be half
written. `restore_newest_readable` resumes from the newest that reads, and `record_unrecorded` puts the ones a
kill left unlisted back under the manager's retention.
"""

from __future__ import annotations

import math
import os
import pathlib
import time

from absl import logging
import tensorflow as tf

CLOSED_FORM = "closed_form"
MAX_TO_KEEP = 3


def checkpoint_number(prefix: str) -> int:
    """N of a checkpoint prefix `.../ckpt-N`."""
    return int(str(prefix).rsplit("-", 1)[1])


def newest_first(directory: pathlib.Path, recorded) -> list:
    """The checkpoints in `directory` to resume from, newest first.

    The manager records a checkpoint in its `checkpoint` file only after writing it, so a run killed in between
    leaves a newer checkpoint than the recorded one: every `ckpt-N` with an index counts. The index is written
    last but not atomically, so one killed mid-write may not read; the caller then tries the next.
    """
    written = {str(p)[:-len(".index")] for p in pathlib.Path(directory).glob("ckpt-*.index")}
    written = {p for p in written if p.rsplit("-", 1)[1].isdigit()}
    if recorded:
        written.add(recorded)
    return sorted(written, key=checkpoint_number, reverse=True)


def resume(checkpoint: tf.train.Checkpoint, directory: pathlib.Path, step,
           total_steps: int) -> tf.train.CheckpointManager:
    """Restores the newest readable checkpoint into `checkpoint` (nothing when there is none), records what a kill
    left unrecorded, and returns the manager that saves the run's next checkpoints."""
    restored = restore_newest_readable(checkpoint, directory, step, total_steps)
    record_unrecorded(directory, restored)
    # Made after both: the manager reads its `checkpoint` file once, when it is made.
    return tf.train.CheckpointManager(checkpoint, str(directory), max_to_keep=MAX_TO_KEEP)


def restore_newest_readable(checkpoint, directory: pathlib.Path, step, total_steps: int | None = None) -> str | None:
    """Restores the newest checkpoint in `directory` that reads, or nothing when none ever finished writing;
    returns the checkpoint restored, or None.

    A checkpoint at `total_steps` or later is a finished run: no step follows, so the optimizer's slots (restored
    when its first step makes them) are expected to stay unrestored, and TensorFlow is told not to warn about them.

    An unreadable checkpoint the manager never recorded (in its `checkpoint` file) is a save killed mid-write: it
    is skipped, and if it is the only one, training starts afresh (its files are overwritten when that step is
    saved again). One the manager recorded had been complete; if no checkpoint reads but a recorded one exists,
    training refuses to start over it: someone should look at the files.
    """
    state = tf.train.get_checkpoint_state(str(directory))
    recorded = {pathlib.Path(p).name for p in state.all_model_checkpoint_paths} if state else set()
    candidates = newest_first(directory, state.model_checkpoint_path if state else None)
    for candidate in candidates:
        try:
            status = checkpoint.restore(candidate)
        except tf.errors.OpError as exc:  # an unreadable file: a truncated index, a missing data shard
            logging.warning("checkpoint %s cannot be read (%s)%s", candidate, str(exc).splitlines()[0],
                            "" if pathlib.Path(candidate).name in recorded else "; it was never recorded as saved")
            continue
        if total_steps is not None and int(step) >= total_steps:
            status.expect_partial()
        logging.info("resumed from %s at step %d", candidate, int(step))
        return candidate
    damaged = [c for c in candidates if pathlib.Path(c).name in recorded]
    if damaged:
        raise RuntimeError(f"no checkpoint in {directory} can be read, and {', '.join(damaged)} had been saved "
                           "completely; move them away to train from scratch")
    if candidates:
        logging.warning("no checkpoint in %s finished writing (%s): training from the start", directory,
                        ", ".join(candidates))
    return None


def record_unrecorded(directory: pathlib.Path, restored: str | None) -> list:
    """Adds to the manager's `checkpoint` file the checkpoints up to `restored` that a kill left unrecorded (the
    one resumed from, and any older ones written while the file was lost); returns their names.

    `tf.train.CheckpointManager` deletes only checkpoints its file lists, beyond `max_to_keep`; an unrecorded one
    would stay on disk for good. Each is listed with its index file's time, after `last_preserved_timestamp`,
    which is what makes the manager count it as deletable. Unrecorded ones newer than `restored` did not read
    (a save killed mid-write; listing them would make them look complete): their files are removed, since the
    run redoes their steps.
    """
    if restored is None:
        return []
    state = tf.train.get_checkpoint_state(str(directory))
    paths = list(state.all_model_checkpoint_paths) if state else []
    stamps = list(state.all_model_checkpoint_timestamps) if state else []
    times = dict(zip(paths, stamps)) if len(stamps) == len(paths) else {}
    known = {pathlib.Path(p).name for p in paths}
    limit = checkpoint_number(restored)
    unrecorded = [c for c in newest_first(directory, None) if pathlib.Path(c).name not in known]
    for broken in [c for c in unrecorded if checkpoint_number(c) > limit]:
        for f in pathlib.Path(directory).glob(pathlib.Path(broken).name + ".*"):
            f.unlink()
        logging.warning("removed %s: it did not read and was never recorded (a save killed mid-write)", broken)
    added = [c for c in unrecorded if checkpoint_number(c) <= limit]
    if not added:
        return []
    for c in added:
        times[c] = os.path.getmtime(c + ".index")
    listed = sorted(set(paths) | set(added), key=checkpoint_number)
    listed_times = [times.get(p, time.time()) for p in listed]
    preserved = min(state.last_preserved_timestamp if state else math.inf, min(listed_times) - 1.0)
    latest = max(listed, key=checkpoint_number)
    tf.compat.v1.train.update_checkpoint_state(
        str(directory), latest, all_model_checkpoint_paths=listed,
        all_model_checkpoint_timestamps=listed_times, last_preserved_timestamp=preserved)
    names = [pathlib.Path(c).name for c in added]
    logging.info("recorded %s in %s, so that the checkpoint manager's retention covers them", ", ".join(names),
                 directory)
    return names


def save_closed_form(model, workdir: pathlib.Path) -> None:
    """Saves a closed-form fit (its model's variables) into the workdir's checkpoints."""
    tf.train.Checkpoint(model=model).write(str(workdir / "checkpoints" / CLOSED_FORM))


def restore_closed_form(model, workdir: pathlib.Path) -> bool:
    """Restores the workdir's closed-form fit into `model`; False when there is none that reads (a write killed
    midway is fitted again)."""
    path = workdir / "checkpoints" / CLOSED_FORM
    if not path.with_name(path.name + ".index").exists():
        return False
    try:
        tf.train.Checkpoint(model=model).read(str(path)).assert_existing_objects_matched()
    except (tf.errors.OpError, AssertionError) as exc:
        logging.warning("closed-form fit %s cannot be read (%s); fitting again", path, str(exc).splitlines()[0])
        return False
    return True


def latest(workdir: pathlib.Path) -> str | None:
    """The newest checkpoint the manager recorded in the workdir, or None."""
    return tf.train.latest_checkpoint(str(workdir / "checkpoints"))


def trained_state(workdir: pathlib.Path, closed_form: bool) -> str:
    """Where the trained model is, for the log: `at step N (checkpoint ...)` or `(closed-form fit ...)`."""
    if closed_form:
        return f"(closed-form fit {workdir / 'checkpoints' / CLOSED_FORM})"
    newest = latest(workdir)
    return f"at step {checkpoint_number(newest)} (checkpoint {newest})" if newest else "(no checkpoint)"
