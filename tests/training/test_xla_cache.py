"""The persistent XLA cache of `--jit_compile` (training/xla_cache.py): where it is, the user's choice, pruning."""

import os
import pathlib
import subprocess
import sys

import tensorflow as tf

from training import xla_cache

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_importing_the_training_package_touches_no_files(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_XLA_FLAGS"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    out = subprocess.run([sys.executable, "-c", "import os, training, training.xla_cache; "
                          "print(repr(os.environ.get('TF_XLA_FLAGS')))"],
                         cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "None" and not (tmp_path / "cache").exists()


def test_the_users_xla_cache_choice_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    ours = xla_cache.cache_directory()
    assert ours.parent == tmp_path / "vizoo" and f"-tf{tf.__version__}-cpu" in ours.name
    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_clustering_debug")
    xla_cache.use_persistent_cache()
    assert os.environ["TF_XLA_FLAGS"] == f"--tf_xla_clustering_debug --tf_xla_persistent_cache_directory={ours}"
    mine = "--tf_xla_persistent_cache_directory= --tf_xla_clustering_debug"  # empty: no cache
    monkeypatch.setenv("TF_XLA_FLAGS", mine)
    xla_cache.use_persistent_cache()
    assert os.environ["TF_XLA_FLAGS"] == mine
    # A cache TensorFlow could not write would fail every compilation: then none.
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_clustering_debug")
    xla_cache.use_persistent_cache()
    assert os.environ["TF_XLA_FLAGS"] == "--tf_xla_clustering_debug"


def test_xla_caches_are_pruned_to_their_budget_least_recently_used_first(monkeypatch, tmp_path):
    now = 1_000_000.0
    hour = xla_cache.GRACE_SECONDS
    old_tf, ours = tmp_path / "vizoo" / "xla-tf2.0.0-cpuold", tmp_path / "vizoo" / "xla-tf2.21.0-cpunew"
    ages = {old_tf / "a": 50 * hour, ours / "b": 40 * hour, ours / "c": 30 * hour, ours / "d": 2 * hour,
            ours / "e": 0.5 * hour, ours / "f": 0.1 * hour}
    for path, age in ages.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 1000)
        os.utime(path, (now - age, now - age))
    (tmp_path / "vizoo" / "notes.txt").write_bytes(b"x" * 10_000)  # not a cache entry: never touched
    # Links are never followed: an xla-* link to a directory elsewhere, and an entry that links to a file.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("g", "h"):
        (elsewhere / name).write_bytes(b"x" * 1000)
        os.utime(elsewhere / name, (0, 0))
    (tmp_path / "vizoo" / "xla-link").symlink_to(elsewhere, target_is_directory=True)
    (old_tf / "link").symlink_to(elsewhere / "h")
    deleted = xla_cache.prune(tmp_path / "vizoo", budget=3500, now=now)
    assert deleted == [old_tf / "a", ours / "b", ours / "c"]  # oldest first, down to 3 entries (3000 bytes)
    assert sorted(p.name for p in ours.iterdir()) == ["d", "e", "f"] and (tmp_path / "vizoo" / "notes.txt").exists()
    # Entries used within the grace period stay even over budget: a running job may be about to read them.
    assert xla_cache.prune(tmp_path / "vizoo", budget=0, now=now) == [ours / "d"]
    assert sorted(p.name for p in ours.iterdir()) == ["e", "f"]
    assert sorted(p.name for p in elsewhere.iterdir()) == ["g", "h"] and (old_tf / "link").is_symlink()
    # Taking the cache prunes under the budget VIZOO_XLA_CACHE_MB gives, by the clock: e and f just used.
    for name in "ef":
        os.utime(ours / name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("VIZOO_XLA_CACHE_MB", "0")
    monkeypatch.delenv("TF_XLA_FLAGS", raising=False)
    stale = xla_cache.cache_directory() / "stale"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"x")
    os.utime(stale, (0, 0))
    xla_cache.use_persistent_cache()
    assert not stale.exists() and sorted(p.name for p in ours.iterdir()) == ["e", "f"]
