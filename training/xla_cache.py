"""The persistent XLA cache of `--jit_compile`: where compiled training steps are kept between processes, and the
pruning that keeps them within a budget.

TensorFlow reads TF_XLA_FLAGS when it starts its runtime (its first op, or a listing of its devices), so
`use_persistent_cache` must run before that: the training binaries call it right after parsing their flags when
`--jit_compile` is set (`flags.run_binary`), and `train_lib.train_and_evaluate` first thing for other callers.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import platform
import time

FLAG = "--tf_xla_persistent_cache_directory"
# Bytes the persistent XLA caches under ~/.cache/vizoo may hold (VIZOO_XLA_CACHE_MB overrides), and how long an
# entry is left alone after its last use whatever the total (a running job may be about to read it).
BUDGET_MB = 1024
GRACE_SECONDS = 3600


def cache_directory() -> pathlib.Path:
    """Where `--jit_compile` keeps its compiled training steps between processes: under $XDG_CACHE_HOME (or
    ~/.cache), per TensorFlow version and CPU (a compiled step is machine code for one instruction set, e.g.
    AVX-512, and would not run on another CPU sharing the home directory)."""
    try:
        from importlib import metadata
        version = metadata.version("tensorflow")
    except Exception:  # noqa: BLE001 - any failure: a directory of its own
        version = "unknown"
    try:
        cpu = next(line for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("flags"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    digest = hashlib.sha256(cpu.encode()).hexdigest()[:12]
    base = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache")
    return base / "vizoo" / f"xla-tf{version}-cpu{digest}"


def use_persistent_cache() -> None:
    """Adds the persistent cache to TF_XLA_FLAGS unless the user chose one, and prunes the caches to their budget.

    A compiled step is found there by its computation's fingerprint, so a resumed run, the next split of
    `--split=all` and the next run of the same network and batch size skip XLA's compilation. Calling it again in
    the same process does nothing."""
    flags = os.environ.get("TF_XLA_FLAGS", "")
    if FLAG in flags:
        return
    directory = cache_directory()
    try:  # a cache directory TensorFlow cannot write fails every compilation (NotFoundError): then no cache
        directory.mkdir(parents=True, exist_ok=True)
        writable = os.access(directory, os.W_OK | os.X_OK)
    except OSError:
        writable = False
    if not writable:
        return
    os.environ["TF_XLA_FLAGS"] = f"{flags} {FLAG}={directory}".strip()
    try:
        budget = int(float(os.environ.get("VIZOO_XLA_CACHE_MB", BUDGET_MB)) * 2 ** 20)
    except (ValueError, OverflowError):  # not a number, or inf: the default
        budget = BUDGET_MB * 2 ** 20
    try:
        prune(directory.parent, budget)
    except OSError:  # best effort: never a reason for training to fail
        pass


def prune(root: pathlib.Path, budget: int, grace: float = GRACE_SECONDS, now: float | None = None) -> list:
    """Deletes the least recently used entries of the XLA caches under `root` (every `xla-*` directory: other
    TensorFlow versions and CPUs too) until they hold at most `budget` bytes; returns the deleted paths.

    An entry's last use is the later of its access and modification times (TensorFlow never rewrites an entry it
    finds; under `relatime` a read still moves the access time at most a day late), and entries used within
    `grace` seconds are kept whatever the total, so a job running now does not lose what it is about to read.
    Races with other processes (an entry gone, being written) are skipped: pruning is best effort. Symbolic links
    (an `xla-*` directory or an entry that is one) are left alone, with whatever they point to."""
    now = time.time() if now is None else now
    entries = []
    for path in root.glob("xla-*/*"):
        try:
            if path.is_symlink() or path.parent.is_symlink():  # ours are plain files: never delete through a link
                continue
            stat = path.stat()
        except OSError:
            continue
        if path.is_file():
            entries.append((max(stat.st_atime, stat.st_mtime), stat.st_size, path))
    total = sum(size for _, size, _ in entries)
    deleted = []
    for used, size, path in sorted(entries, key=lambda e: e[0]):
        if total <= budget or now - used < grace:
            break
        try:
            path.unlink()
        except FileNotFoundError:  # another process pruned it first: gone all the same
            pass
        except OSError:
            continue
        total -= size
        deleted.append(path)
    return deleted
