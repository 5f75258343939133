"""vizoo: variational inference model zoo."""
import hashlib as _hashlib
import os as _os
import pathlib as _pathlib
import platform as _platform

# tfp.layers is built on Keras 2; this must be set before TensorFlow is first imported.
_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import serving as _serving  # noqa: E402  (sets environment variables only; imports no TensorFlow)

_serving.apply_runtime_defaults()

XLA_CACHE_FLAG = "--tf_xla_persistent_cache_directory"
# Bytes the persistent XLA caches under ~/.cache/vizoo may hold (VIZOO_XLA_CACHE_MB overrides), and how long an
# entry is left alone after its last use whatever the total (a running job may be about to read it).
XLA_CACHE_BUDGET_MB = 1024
XLA_CACHE_GRACE_SECONDS = 3600


def xla_cache_directory() -> _pathlib.Path:
    """Where `--jit_compile` keeps its compiled training steps between processes: under $XDG_CACHE_HOME (or
    ~/.cache), per TensorFlow version and CPU (a compiled step is machine code for one instruction set, e.g.
    AVX-512, and would not run on another CPU sharing the home directory)."""
    try:
        from importlib import metadata
        version = metadata.version("tensorflow")
    except Exception:  # noqa: BLE001 - any failure: a directory of its own
        version = "unknown"
    try:
        cpu = next(line for line in _pathlib.Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("flags"))
    except (OSError, StopIteration):
        cpu = _platform.processor() or _platform.machine()
    digest = _hashlib.sha256(cpu.encode()).hexdigest()[:12]
    base = _pathlib.Path(_os.environ.get("XDG_CACHE_HOME") or _pathlib.Path.home() / ".cache")
    return base / "vizoo" / f"xla-tf{version}-cpu{digest}"


def _use_xla_cache() -> None:
    """Adds the persistent cache to TF_XLA_FLAGS unless the user chose one: a compiled step is found there by its
    computation's fingerprint, so a resumed run, the next split of `--split=all` and the next run of the same
    network and batch size skip XLA's compilation (about 7 s for the UCI network here; the first epoch then
    takes as long as uncompiled). TensorFlow reads TF_XLA_FLAGS at its first compilation."""
    flags = _os.environ.get("TF_XLA_FLAGS", "")
    if XLA_CACHE_FLAG in flags:
        return
    directory = xla_cache_directory()
    try:  # a cache directory TensorFlow cannot write fails every compilation (NotFoundError): then no cache
        directory.mkdir(parents=True, exist_ok=True)
        writable = _os.access(directory, _os.W_OK | _os.X_OK)
    except OSError:
        writable = False
    if writable:
        _os.environ["TF_XLA_FLAGS"] = f"{flags} {XLA_CACHE_FLAG}={directory}".strip()
        try:
            budget = int(float(_os.environ.get("VIZOO_XLA_CACHE_MB", XLA_CACHE_BUDGET_MB)) * 2 ** 20)
        except (ValueError, OverflowError):  # not a number, or inf: the default
            budget = XLA_CACHE_BUDGET_MB * 2 ** 20
        try:
            prune_xla_caches(directory.parent, budget)
        except OSError:  # best effort: never a reason for `import training` to fail
            pass


def prune_xla_caches(root: _pathlib.Path, budget: int, grace: float = XLA_CACHE_GRACE_SECONDS,
                     now: float | None = None) -> list:
    """Deletes the least recently used entries of the XLA caches under `root` (every `xla-*` directory: other
    TensorFlow versions and CPUs too) until they hold at most `budget` bytes; returns the deleted paths.

    An entry's last use is the later of its access and modification times (TensorFlow never rewrites an entry it
    finds; under `relatime` a read still moves the access time at most a day late), and entries used within
    `grace` seconds are kept whatever the total, so a job running now does not lose what it is about to read.
    Races with other processes (an entry gone, being written) are skipped: pruning is best effort. Symbolic links
    (an `xla-*` directory or an entry that is one) are left alone, with whatever they point to."""
    import time

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


_use_xla_cache()
