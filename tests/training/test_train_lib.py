"""The shared training loop: binaries, flags, metrics.json, resume after a kill, strategies, seeds."""

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from models import linear_regression as lr
from serving import process
from training import config as config_lib
from training import evaluation
from training import train_lib

from tests.training import binaries

REPO = pathlib.Path(__file__).resolve().parents[2]


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _train_cli(*args):
    """`python -m training.train_linear_regression *args`, forked from a process that has imported TensorFlow."""
    return binaries.run("training.train_linear_regression", args, _env(), REPO)


def _config(tmp_path, **overrides):
    values = dict(dataset="uci/concrete", workdir=str(tmp_path / "work"), epochs=4, batch_size=64,
                  learning_rate=0.05, num_samples=20, seed=3)
    values.update(overrides)
    return config_lib.TrainConfig(**values)


def test_a_call_of_the_training_step_ends_at_epoch_ends_and_at_logged_and_checkpointed_steps(tmp_path):
    config = _config(tmp_path, steps_per_execution=8, checkpoint_every_steps=5, log_every_steps=0)
    calls, t = [], 0
    while t < 30:  # epochs of 12 steps
        calls.append(train_lib._steps_in_call(config, t, steps_per_epoch=12, total_steps=30))
        t += calls[-1]
    assert calls == [5, 5, 2, 3, 5, 4, 1, 5]  # checkpoints at 5, 10, ...; epochs end at 12 and 24
    # Epochs shorter than a call (full-batch training: one step each) run whole, several to a call.
    full_batch = _config(tmp_path, steps_per_execution=8, checkpoint_every_steps=0, log_every_steps=0)
    assert [train_lib._steps_in_call(full_batch, t, 3, 20) for t in (0, 6, 18)] == [6, 6, 2]


def test_binary_with_flagfile_writes_metrics_and_exports(tmp_path, data_dir):
    flagfile = tmp_path / "flags.txt"
    flagfile.write_text(f"--data_dir={data_dir}\n--dataset=uci/yacht\n--inference=cavi\n--num_samples=50\n"
                        f"--workdir={tmp_path / 'work'}\n--export_base={tmp_path / 'export'}\n")
    result = _train_cli(f"--flagfile={flagfile}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "work/metrics.json").read_text())
    for name in ("test/nll", "test/rmse", "test/elbo", "test/coverage_95", "train/elbo", "train/kl"):
        assert np.isfinite(metrics[name]), name
    assert (tmp_path / "export/1/saved_model.pb").is_file()
    assert list((tmp_path / "work/train").glob("events.out.tfevents.*")), "no TensorBoard summaries"


@pytest.mark.parametrize("flag, message", [
    ("--epochs=0", "--epochs"),
    ("--split=first", "--split"),
    ("--dataset=uci/no-such-set", "no-such-set"),
    ("--strategy=tpu", "--strategy"),
    ("--alpha_prior=1", "--alpha_prior"),
    ("--seed=3000000000", "--seed"),  # would wrap in the int32 seeds: another seed's draws
    ("--seed=-1", "--seed"),  # NumPy's generators take no negative seed: a traceback after loading the data
    ("--learning_rate=nan", "--learning_rate"),  # would pass "> 0" checks written as "not <= 0"
    ("--kl_warmup_epochs=inf", "--kl_warmup_epochs"),  # a KL weight of 0 for the whole run
    ("--export_base=gs://bucket/models", "--export_base"),  # would be written under ./gs:/bucket
])
def test_bad_flags_fail_fast_naming_the_flag(tmp_path, data_dir, flag, message):
    result = _train_cli(f"--data_dir={data_dir}", f"--workdir={tmp_path / 'work'}", "--inference=gradient", flag)
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "work" / "checkpoints").exists()


def test_a_negative_input_tail_is_refused_and_zero_trains_on_plain_standardization(tmp_path, data_dir):
    with pytest.raises(config_lib.ConfigError, match="--input_tail"):
        _config(tmp_path, input_tail=-1.0).validate()
    from training import data
    plain = data.load("uci/protein-tertiary-structure", data_dir, split=0, input_tail=0.0)
    assert plain.x_scaler.tail is None and np.abs(plain.x_test).max() > 18.0
    # A run saved without the setting standardized plainly: resuming it under the tail is refused, not mixed.
    current = _config(tmp_path).validate().to_json()
    saved = {k: v for k, v in current.items() if k != "input_tail"}
    with pytest.raises(config_lib.ConfigError, match="--input_tail: was 0.0, now 3.0"):
        config_lib.check_resumable(saved, current)
    config_lib.check_resumable(saved, dict(current, input_tail=0.0))


@pytest.mark.parametrize("values, message", [
    (dict(prior_scale=0.0), "--prior_scale: prior_scale must be positive"),  # not "--prior:"
    (dict(hidden_units=["50", "abc"]), "--hidden_units: hidden_units must be integers"),
    (dict(init_rho=float("nan")), "--init_rho must be a finite number"),
])
def test_model_flags_are_named_in_their_errors(values, message):
    from models import bayesian_dense
    from training import flags as flags_lib
    with pytest.raises(config_lib.ConfigError) as info:
        flags_lib.model_config(bayesian_dense.Config, **values)
    assert str(info.value).startswith(message)


def test_missing_data_dir_fails_before_training(tmp_path):
    result = _train_cli(f"--data_dir={tmp_path / 'nowhere'}", f"--workdir={tmp_path / 'work'}")
    assert result.returncode == 2
    assert "data.txt" in result.stderr and "nowhere" in result.stderr


def test_metrics_are_in_original_units(tmp_path, data_dir):
    config = _config(tmp_path, data_dir=str(data_dir), dataset="uci/concrete", export_base=str(tmp_path / "exp"))
    metrics = train_lib.train_and_evaluate(config, lr.Config(inference="exact"), lr.build_model)
    # Concrete strength is in MPa with std ~16.6: a linear model's RMSE is about 10-11 MPa, not 0.6 std units.
    assert 8.0 < metrics["test/rmse"] < 14.0
    assert 3.0 < metrics["test/nll"] < 4.5
    assert 0.85 <= metrics["test/coverage_95"] <= 1.0
    loaded = tf.saved_model.load(metrics["export_path"])
    from training import data
    d = data.load("uci/concrete", data_dir, split=0)
    raw_x = d.x_scaler.invert(d.x_test)
    out = loaded.signatures["serving_default"](x=tf.constant(raw_x))
    rmse = float(np.sqrt(np.mean((out["mean"].numpy() - d.y_scaler.invert(d.y_test)) ** 2)))
    assert rmse == pytest.approx(metrics["test/rmse"], rel=0.02)


def test_same_seed_same_result_other_seed_other_result(tmp_path, data_dir):
    run = lambda seed, name: train_lib.train_and_evaluate(  # noqa: E731
        _config(tmp_path, data_dir=str(data_dir), seed=seed, workdir=str(tmp_path / name)),
        lr.Config(inference="gradient"), lr.build_model)
    a, b, c = run(5, "a"), run(5, "b"), run(6, "c")
    assert a["test/nll"] == b["test/nll"] and a["train/elbo"] == b["train/elbo"]
    assert a["test/nll"] != c["test/nll"]


def test_full_batch_epochs_grouped_into_one_call_train_exactly_as_one_call_per_step(tmp_path, data_dir):
    """Epochs of one step run 32 to a compiled call; the iterates must not depend on that grouping."""
    from training import data
    concrete = data.load("uci/concrete", data_dir, split=0)

    def fit(name, steps_per_execution):
        config = _config(tmp_path, data_dir=str(data_dir), workdir=str(tmp_path / name), epochs=70,
                         batch_size=concrete.num_train, steps_per_execution=steps_per_execution).validate()
        model = lr.build_model(lr.Config(inference="gradient"), concrete)
        epochs = []
        train_lib.fit(model, concrete, config, tf.distribute.get_strategy(), pathlib.Path(config.workdir),
                      on_epoch_end=lambda epoch, means: epochs.append(epoch))
        return [v.numpy() for v in model.trainable_variables], epochs

    grouped, grouped_epochs = fit("grouped", 32)
    single, single_epochs = fit("single", 1)
    for a, b in zip(grouped, single):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert single_epochs == list(range(70))
    assert grouped_epochs == [31, 63, 69]  # epoch-end work once per call, at the call's last epoch


@pytest.mark.slow
def test_compiled_steps_train_like_uncompiled_and_resume_exactly(tmp_path, data_dir):
    """--jit_compile runs each call's steps as one XLA computation on batches padded to --steps_per_execution:
    calls of every length (epoch ends, a resumed run) must train exactly as one uninterrupted run."""
    from models import bayesian_dense
    from training import data
    concrete = data.load("uci/concrete", data_dir, split=0)

    def fit(name, train_steps, jit_compile=True):
        config = _config(tmp_path, data_dir=str(data_dir), workdir=str(tmp_path / name), train_steps=train_steps,
                         steps_per_execution=8, jit_compile=jit_compile,
                         lr_schedule="constant").validate()  # a schedule would follow the budget
        tf.keras.utils.set_random_seed(3)  # the same initial weights
        model = bayesian_dense.build_model(bayesian_dense.Config(hidden_units=(8,)), concrete)
        epochs = []
        train_lib.fit(model, concrete, config, tf.distribute.get_strategy(), pathlib.Path(config.workdir),
                      on_epoch_end=lambda epoch, means: epochs.append(means["loss"]))
        return [v.numpy() for v in model.trainable_variables], epochs

    whole, losses = fit("whole", 150)  # 14 steps an epoch: calls of 8 and 6 steps
    fit("resumed", 61)
    resumed, _ = fit("resumed", 150)
    for a, b in zip(whole, resumed):
        np.testing.assert_array_equal(a, b)
    _, plain_losses = fit("plain", 150, jit_compile=False)
    # XLA draws other random numbers; the descent is the same (the loss falls alike in the tenth epoch).
    assert losses[-1] < 0.8 * losses[0] and plain_losses[-1] < 0.8 * plain_losses[0]
    assert abs(losses[-1] - plain_losses[-1]) < 0.15 * abs(plain_losses[-1])


@pytest.mark.slow
def test_a_rerun_finds_its_compiled_steps_in_the_persistent_xla_cache(tmp_path, data_dir):
    env = dict(_env(), XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.pop("TF_XLA_FLAGS", None)

    def train(name):
        done = subprocess.run(
            [sys.executable, "-m", "training.train_bnn", "--dataset=uci/concrete", f"--data_dir={data_dir}",
             f"--workdir={tmp_path / name}", "--train_steps=12", "--steps_per_execution=8", "--hidden_units=8",
             "--num_samples=2", "--train_eval_examples=0", "--jit_compile"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*") if p.is_file()}

    first = train("a")
    (directory,) = {p.parent for p in (tmp_path / "cache").rglob("xla_compile_cache*")}
    assert directory.parent == tmp_path / "cache" / "vizoo" and directory.name.startswith("xla-tf2.")
    assert len(first) == 1  # calls of 8 and 4 steps (28 an epoch): one computation, compiled once
    assert train("b") == first  # compiled nothing new, rewrote nothing


def test_resuming_with_other_settings_is_refused(tmp_path, data_dir):
    config = _config(tmp_path, data_dir=str(data_dir), epochs=1)
    train_lib.train_and_evaluate(config, lr.Config(inference="gradient"), lr.build_model)
    with pytest.raises(config_lib.ConfigError, match="--learning_rate"):
        train_lib.train_and_evaluate(dataclasses.replace(config, learning_rate=0.5),
                                     lr.Config(inference="gradient"), lr.build_model)
    # More epochs is a continuation, not a different run.
    train_lib.train_and_evaluate(dataclasses.replace(config, epochs=2), lr.Config(inference="gradient"),
                                 lr.build_model)


def test_resume_takes_the_newest_readable_checkpoint_even_one_the_manager_never_recorded(tmp_path, data_dir):
    """A kill between writing a checkpoint and recording it in the `checkpoint` file, or in the middle of
    writing its index, must not lose the checkpoints that are complete."""
    from training import data
    concrete = data.load("uci/concrete", data_dir, split=0)
    steps_per_epoch = concrete.num_train // 64  # 14

    def fit(name, epochs):
        config = _config(tmp_path, data_dir=str(data_dir), workdir=str(tmp_path / name), epochs=epochs,
                         checkpoint_every_steps=4).validate()
        model = lr.build_model(lr.Config(inference="gradient"), concrete)
        return train_lib.fit(model, concrete, config, tf.distribute.get_strategy(), pathlib.Path(config.workdir))

    for name, corrupt_newest, resumed_at in (("unrecorded", False, 14), ("half_written", True, 12)):
        assert fit(name, 1) == 1.0
        checkpoints = tmp_path / name / "checkpoints"
        assert sorted(p.name for p in checkpoints.glob("*.index")) == ["ckpt-12.index", "ckpt-14.index",
                                                                       "ckpt-8.index"]
        (checkpoints / "checkpoint").unlink()
        if corrupt_newest:
            (checkpoints / "ckpt-14.index").write_bytes(b"half an index")
        # Two epochs in all: what is left after the checkpoint resumed from.
        assert fit(name, 2) * steps_per_epoch == pytest.approx(2 * steps_per_epoch - resumed_at)
        # The checkpoints the lost `checkpoint` file no longer listed were recorded on resuming, so the manager's
        # keep-3 retention swept them with the rest: nothing is left behind for good.
        assert sorted(p.name for p in checkpoints.glob("*.index")) == ["ckpt-20.index", "ckpt-24.index",
                                                                       "ckpt-28.index"]


def test_a_first_checkpoint_killed_mid_write_trains_afresh_but_a_damaged_saved_one_stops(tmp_path, data_dir):
    """The only checkpoint unreadable: never recorded means its save was killed (start over); recorded means a
    finished checkpoint was damaged afterwards (refuse: training afresh would bury it)."""
    from training import data
    concrete = data.load("uci/concrete", data_dir, split=0)

    def fit(name, epochs):
        config = _config(tmp_path, data_dir=str(data_dir), workdir=str(tmp_path / name), epochs=epochs,
                         checkpoint_every_steps=4).validate()
        model = lr.build_model(lr.Config(inference="gradient"), concrete)
        return train_lib.fit(model, concrete, config, tf.distribute.get_strategy(), pathlib.Path(config.workdir))

    for name, recorded in (("killed", False), ("damaged", True)):
        assert fit(name, 1) == 1.0
        checkpoints = tmp_path / name / "checkpoints"
        for stale in [*checkpoints.glob("ckpt-8.*"), *checkpoints.glob("ckpt-12.*")]:
            stale.unlink()
        if not recorded:
            (checkpoints / "checkpoint").unlink()
        (checkpoints / "ckpt-14.index").write_bytes(b"half an index")
        if recorded:
            with pytest.raises(RuntimeError, match="ckpt-14 had been saved completely"):
                fit(name, 2)
        else:
            assert fit(name, 2) == 2.0  # both epochs, from step 0
            assert int(tf.train.load_variable(str(checkpoints / "ckpt-28"), "step/.ATTRIBUTES/VARIABLE_VALUE")) == 28


def test_split_all_reports_mean_and_standard_error(tmp_path, data_dir):
    config = _config(tmp_path, data_dir=str(data_dir), dataset="uci/yacht", split="all")
    metrics = train_lib.train_and_evaluate(config, lr.Config(inference="exact"), lr.build_model)
    assert metrics["num_splits"] == 20
    per_split = [json.loads((tmp_path / f"work/split_{k}/metrics.json").read_text())["test/rmse"]
                 for k in range(20)]
    assert metrics["test/rmse"] == pytest.approx(np.mean(per_split))
    assert metrics["test/rmse_stderr"] == pytest.approx(np.std(per_split, ddof=1) / np.sqrt(20))
    assert json.loads((tmp_path / "work/metrics.json").read_text())["num_splits"] == 20


def test_kl_warmup_rises_linearly_to_one():
    weights = [float(train_lib.kl_weight(tf.constant(t, tf.int64), 10, 2.0)) for t in (0, 9, 19, 50)]
    assert weights == pytest.approx([0.05, 0.5, 1.0, 1.0])
    assert float(train_lib.kl_weight(tf.constant(0, tf.int64), 10, 0.0)) == 1.0


@pytest.mark.slow
def test_killed_run_resumes_from_checkpoint_and_matches_uninterrupted(tmp_path, data_dir):
    # Ten epochs: the first checkpoint is recorded at step 40 and the run ends at step 1150, a window of seconds
    # for the kill (three epochs had left half a second on a loaded machine). The train split's metrics on a
    # prefix of 500 examples: the whole split's evaluation would cost each process more than its training.
    args = [f"--data_dir={data_dir}", "--dataset=uci/kin8nm", "--inference=gradient", "--epochs=10",
            "--batch_size=64", "--checkpoint_every_steps=40", "--num_samples=20", "--seed=11",
            "--train_eval_examples=500"]
    # The uninterrupted reference: the same binary and flags, trained meanwhile in its own process.
    binary = "training.train_linear_regression"
    reference_log = tmp_path / "reference.log"
    reference = binaries.Run(binary, [*args, f"--workdir={tmp_path / 'reference'}"], _env(), REPO,
                             stdout=os.devnull, stderr=reference_log)
    try:
        workdir = tmp_path / "killed"
        proc = binaries.Run(binary, [*args, f"--workdir={workdir}"], _env(), REPO, stdout=os.devnull,
                            stderr=os.devnull)
        # Killed once a checkpoint is recorded as saved (the manager's `checkpoint` file, written atomically after
        # it): the kill may land mid-write of the next one, which resuming must skip.
        deadline = time.time() + 120
        while time.time() < deadline and not (workdir / "checkpoints" / "checkpoint").exists():
            time.sleep(0.05)
        proc.kill()
        assert proc.wait() == -signal.SIGKILL
        steps = sorted(int(p.stem.split("-")[1]) for p in (workdir / "checkpoints").glob("ckpt-*.index"))
        assert steps and steps[-1] < 10 * (7373 // 64), "the run finished before it could be killed"
        assert not (workdir / "metrics.json").exists()

        resumed = _train_cli(*args, f"--workdir={workdir}")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "resumed from" in resumed.stderr
        assert reference.wait(timeout=300) == 0, reference_log.read_text()[-3000:]
        got = json.loads((workdir / "metrics.json").read_text())
        want = json.loads((tmp_path / "reference/metrics.json").read_text())
        for name in ("test/nll", "test/rmse", "train/elbo"):
            assert got[name] == pytest.approx(want[name], rel=1e-6, abs=1e-9), name
    finally:
        reference.close()  # a failure above leaves no training behind

MIRRORED_SCRIPT = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from models import linear_regression as lr
from serving import process
from training import config as config_lib, train_lib
config = config_lib.TrainConfig(**json.loads(sys.argv[1]))
metrics = train_lib.train_and_evaluate(config, lr.Config(inference="gradient"), lr.build_model)
print("REPLICAS", train_lib.make_strategy(config.strategy).num_replicas_in_sync)
print("METRICS", json.dumps(metrics))
"""


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus_trains_like_one_device(tmp_path, data_dir):
    settings = dict(data_dir=str(data_dir), epochs=30, batch_size=128)
    config = dataclasses.asdict(_config(tmp_path, strategy="mirrored", workdir=str(tmp_path / "mirrored"), **settings))
    out = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, json.dumps(config)], cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if line.startswith(("REPLICAS", "METRICS")))
    assert int(lines["REPLICAS"]) == 2
    mirrored = json.loads(lines["METRICS"])
    # The one-device reference needs no special process set-up: it runs here.
    default = train_lib.train_and_evaluate(_config(tmp_path, workdir=str(tmp_path / "default"), **settings),
                                           lr.Config(inference="gradient"), lr.build_model)
    # Different Monte Carlo draws per replica, same objective: the fits agree to within optimization noise.
    assert mirrored["test/rmse"] == pytest.approx(default["test/rmse"], rel=0.02)
    assert mirrored["train/elbo"] == pytest.approx(default["train/elbo"], abs=0.02)


@pytest.mark.slow
def test_seed_fixes_initialization_and_draws_across_processes(tmp_path, data_dir):
    # Three processes at once (most of each is importing TensorFlow): the seed alone must fix the result.
    runs = {name: subprocess.Popen(
        [sys.executable, "-m", "training.train_bnn", f"--data_dir={data_dir}", "--dataset=uci/yacht",
         "--train_steps=50", f"--seed={seed}", "--num_samples=10", f"--workdir={tmp_path / name}"],
        cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for name, seed in (("a", 4), ("b", 4), ("c", 5))}
    for name, run in runs.items():
        stderr = run.communicate(timeout=300)[1]
        assert run.returncode == 0, stderr[-2000:]
    a, b, c = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in runs)
    assert a["test/nll"] == b["test/nll"] and a["train/elbo"] == b["train/elbo"]
    assert a["test/nll"] != c["test/nll"]




@pytest.mark.slow
def test_two_workers_on_loopback_train_like_one_worker(tmp_path, data_dir):
    args = [f"--data_dir={data_dir}", "--dataset=uci/concrete", "--inference=gradient", "--epochs=30",
            "--batch_size=128", "--num_samples=20", "--seed=2"]
    # The one-worker reference: the same settings (the binary's defaults: learning rate 0.05), trained here.
    one = train_lib.train_and_evaluate(
        config_lib.TrainConfig(data_dir=str(data_dir), dataset="uci/concrete", epochs=30, batch_size=128,
                               learning_rate=0.05, num_samples=20, seed=2, workdir=str(tmp_path / "single")),
        lr.Config(inference="gradient"), lr.build_model)

    ports = process.free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    workers = []
    for index in range(2):
        env = dict(_env(), TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        workers.append(binaries.Run(
            "training.train_linear_regression", [*args, "--strategy=multi_worker", f"--workdir={tmp_path / 'cluster'}",
                                                 f"--export_base={tmp_path / 'export'}"], env, REPO))
    try:
        done = [w.result(timeout=600) for w in workers]
    finally:
        for w in workers:
            w.close()
    errors = [d.stderr for d in done]
    assert [d.returncode for d in done] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    for index, log in enumerate(errors):
        assert f"task_id = {index}, num_workers = 2" in log  # both joined one cluster of two
    two = json.loads((tmp_path / "cluster/metrics.json").read_text())  # written by the chief only
    assert not (tmp_path / "cluster/.worker_1/metrics.json").exists()
    assert (tmp_path / "cluster/.worker_1/checkpoints").is_dir()
    assert [p.name for p in (tmp_path / "export").iterdir()] == ["1"]  # one export, by the chief
    assert two["test/rmse"] == pytest.approx(one["test/rmse"], rel=0.02)
    assert two["train/elbo"] == pytest.approx(one["train/elbo"], abs=0.02)


def test_split_all_with_an_export_base_exports_every_split_and_writes_the_summary(tmp_path, data_dir):
    # Two splits of yacht (the files as shipped, n_splits.txt saying 2): each split exports, and the summary
    # averages the numbers only (a split's export path had made the aggregation fail after all the training).
    source = pathlib.Path(data_dir) / "uci" / "yacht" / "data"
    copy = tmp_path / "data" / "uci" / "yacht" / "data"
    copy.mkdir(parents=True)
    for f in source.iterdir():
        if f.name.startswith(("index_train_", "index_test_")) and f.stem.rsplit("_", 1)[1] not in ("0", "1"):
            continue
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / "n_splits.txt").write_text("2\n")
    config = _config(tmp_path, data_dir=str(tmp_path / "data"), dataset="uci/yacht", split="all",
                     export_base=str(tmp_path / "models"))
    metrics = train_lib.train_and_evaluate(config, lr.Config(inference="exact"), lr.build_model)
    assert metrics["num_splits"] == 2 and np.isfinite(metrics["test/rmse"]) and "export_path" not in metrics
    assert json.loads((tmp_path / "work/metrics.json").read_text()) == metrics
    assert sorted(p.relative_to(tmp_path / "models").as_posix() for p in (tmp_path / "models").glob("*/*")) == [
        "split_0/1", "split_1/1"]


def test_a_finished_run_run_again_keeps_its_timing_and_is_not_exported_twice(tmp_path, data_dir):
    config = _config(tmp_path, data_dir=str(data_dir), epochs=1, export_base=str(tmp_path / "models"))
    first = train_lib.train_and_evaluate(config, lr.Config(inference="gradient"), lr.build_model)
    again = train_lib.train_and_evaluate(config, lr.Config(inference="gradient"), lr.build_model)
    assert again["export_path"] == first["export_path"] == str((tmp_path / "models" / "1").resolve())
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["1"]
    assert again["train/seconds"] == first["train/seconds"]
    assert again["train/seconds_per_epoch"] == first["train/seconds_per_epoch"]
    assert again["test/rmse"] == first["test/rmse"]
    # Settings of the evaluation or of where the data lives change nothing exported.
    evaluated_otherwise = train_lib.train_and_evaluate(
        dataclasses.replace(config, eval_batch_size=7, data_dir=str(data_dir) + "/"),
        lr.Config(inference="gradient"), lr.build_model)
    assert evaluated_otherwise["export_path"] == first["export_path"]
    # Other serving settings, or more training, make another model: a new version.
    other = train_lib.train_and_evaluate(dataclasses.replace(config, num_samples=7),
                                         lr.Config(inference="gradient"), lr.build_model)
    assert pathlib.Path(other["export_path"]).name == "2"


def test_a_run_that_could_not_start_does_not_bind_its_workdir(tmp_path, data_dir):
    def unfit_family(model_config, dataset):
        raise ValueError("this family needs images")

    config = _config(tmp_path, data_dir=str(data_dir), epochs=1)
    with pytest.raises(config_lib.ConfigError, match="--dataset=uci/concrete: this family needs images"):
        train_lib.train_and_evaluate(config, lr.Config(inference="gradient"), unfit_family)
    # Other settings in the same workdir: nothing was trained there, so nothing is resumed or refused.
    metrics = train_lib.train_and_evaluate(dataclasses.replace(config, learning_rate=0.01),
                                           lr.Config(inference="gradient"), lr.build_model)
    assert np.isfinite(metrics["test/rmse"])


def test_an_unusable_ood_dataset_is_refused_before_training(tmp_path, data_dir):
    from models import bayesian_dense
    classifier = bayesian_dense.Config(hidden_units=(8,))
    for ood, message in (("uci/concrete", "shape"), ("fashion-mnist", "unknown dataset")):
        config = _config(tmp_path, data_dir=str(data_dir), dataset="mnist", ood_dataset=ood)
        with pytest.raises(config_lib.ConfigError, match=f"--ood_dataset={ood}: .*{message}"):
            train_lib.train_and_evaluate(config, classifier, bayesian_dense.build_model)
    assert not (tmp_path / "work").exists()


def test_the_ood_dataset_is_needed_by_classifiers_only(tmp_path, data_dir, monkeypatch):
    """A VAE on MNIST is no classifier: `--ood_dataset=auto` must not ask for Fashion-MNIST."""
    from models import bayesian_dense, vae
    only_mnist = tmp_path / "data"
    only_mnist.mkdir()
    (only_mnist / "mnist").symlink_to(pathlib.Path(data_dir).resolve() / "mnist")
    seen = []
    monkeypatch.setattr(train_lib, "_run_in_workdir", lambda *args: seen.append(args[-1]) or {})
    config = _config(tmp_path, data_dir=str(only_mnist), dataset="mnist")
    train_lib.train_and_evaluate(config, vae.Config(hidden_units=(8,), latent_dim=2), vae.build_model)
    assert seen == [None]
    with pytest.raises(config_lib.ConfigError, match="--ood_dataset=auto: .*fashion_mnist.*--ood_dataset=none"):
        train_lib.train_and_evaluate(config, bayesian_dense.Config(hidden_units=(8,)), bayesian_dense.build_model)


def test_a_workdir_holds_one_split_or_all_of_them_not_both(tmp_path, data_dir):
    # Either run would overwrite the other's metrics.json; both are refused before any data is read.
    one, every = tmp_path / "one", tmp_path / "every"
    (one / "checkpoints").mkdir(parents=True)
    (one / "checkpoints" / "ckpt-5.index").touch()
    (every / "split_3" / "checkpoints").mkdir(parents=True)
    (every / "split_3" / "checkpoints" / "ckpt-5.index").touch()
    for workdir, split, message in ((one, "all", "holds a run of one split"), (every, "3", "holds a --split=all")):
        config = _config(tmp_path, data_dir=str(data_dir), dataset="uci/yacht", split=split, workdir=str(workdir))
        with pytest.raises(config_lib.ConfigError, match=message):
            train_lib.train_and_evaluate(config, lr.Config(inference="gradient"), lr.build_model)


def test_a_budget_below_the_steps_already_taken_is_refused(tmp_path, data_dir):
    config = _config(tmp_path, data_dir=str(data_dir), epochs=2)
    train_lib.train_and_evaluate(config, lr.Config(inference="gradient"), lr.build_model)
    saved = (tmp_path / "work" / "config.json").read_text()
    with pytest.raises(config_lib.ConfigError, match="--train_steps/--epochs: .* has already trained"):
        train_lib.train_and_evaluate(dataclasses.replace(config, epochs=1), lr.Config(inference="gradient"),
                                     lr.build_model)
    assert (tmp_path / "work" / "config.json").read_text() == saved  # the run's settings stay as trained


def test_workdir_and_export_base_expand_the_home_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    config = config_lib.TrainConfig(workdir="~/runs/a", export_base="~/models").validate()
    assert (config.workdir, config.export_base) == (str(tmp_path / "runs/a"), str(tmp_path / "models"))


def test_epochs_given_alone_override_a_family_default_of_steps(tmp_path, data_dir):
    # train_bnn's default budget is --train_steps=10000; --epochs on the command line must still be obeyed.
    def bnn(*args):
        return binaries.run("training.train_bnn", [f"--data_dir={data_dir}", "--dataset=uci/yacht",
                                                   f"--workdir={tmp_path / 'work'}", "--num_samples=4",
                                                   "--hidden_units=4", *args], _env(), REPO)
    result = bnn("--epochs=1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "work/config.json").read_text())["train_steps"] == 0
    assert "epoch 1/1:" in result.stderr


def test_a_split_index_is_refused_for_data_sets_with_one_split(tmp_path):
    with pytest.raises(config_lib.ConfigError, match="--split=3: only UCI datasets"):
        config_lib.TrainConfig(dataset="mnist", split="3", workdir=str(tmp_path)).validate()
    assert config_lib.TrainConfig(dataset="mnist", split="0", workdir=str(tmp_path)).validate().split == "0"


def test_a_workdir_in_use_by_another_run_is_refused(tmp_path, data_dir):
    import fcntl
    config = _config(tmp_path, data_dir=str(data_dir), epochs=1)
    (tmp_path / "work").mkdir()
    with open(tmp_path / "work" / ".lock", "a+") as held:  # another run holding the workdir
        held.write("pid 4242 on elsewhere\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(config_lib.ConfigError, match=r"another run \(pid 4242 on elsewhere\) is using it"):
            train_lib.train_and_evaluate(config, lr.Config(inference="gradient"), lr.build_model)
        assert not (tmp_path / "work" / "checkpoints").exists()
    # Once that run is over, the workdir is free.
    assert np.isfinite(train_lib.train_and_evaluate(config, lr.Config(inference="gradient"),
                                                    lr.build_model)["test/rmse"])


ALLOCATOR_SCRIPT = """
import training
import tensorflow as tf
tf.zeros([256, 256]) + 1.0
try:
    print("pool" if tf.config.experimental.get_memory_info("CPU:0")["peak"] > 0 else "empty pool")
except ValueError:  # "Allocator stats not available": malloc keeps none
    print("malloc")
"""


@pytest.mark.parametrize("preset, expected", [(None, "pool"), ("false", "malloc")])
def test_training_processes_run_the_pooling_allocator_unless_the_user_chose(preset, expected):
    """Training binaries evaluate with the server's Monte Carlo computations and take its CPU allocator
    (`serving.RUNTIME_DEFAULTS`) when the package is imported, before TensorFlow runs any op; the user's
    TF_CPU_ALLOCATOR_USE_BFC wins. TensorFlow keeps allocation statistics for a pool only. With oneDNN's ops on
    (TensorFlow's default on CPUs with AVX512-VNNI, AVX512-BF16 or AMX) TensorFlow puts oneDNN's own pooling
    allocator where malloc would be, so the user's choice shows only with oneDNN off, as the subprocess runs."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPU_ALLOCATOR_USE_BFC"}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", TF_ENABLE_ONEDNN_OPTS="0")
    if preset is not None:
        env["TF_CPU_ALLOCATOR_USE_BFC"] = preset
    out = subprocess.run([sys.executable, "-c", ALLOCATOR_SCRIPT], cwd=REPO, env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == expected


@pytest.mark.parametrize("inference, stage", [("gradient", "evaluation"), ("gradient", "export"),
                                              ("exact", "evaluation")])
def test_a_failed_evaluation_or_export_keeps_the_training_and_a_rerun_finishes_without_training(
        tmp_path, data_dir, monkeypatch, caplog, inference, stage):
    from serving import export as export_lib

    training_calls = []

    def build_spied(model_config, dataset):
        model = lr.build_model(model_config, dataset)
        elbo_terms, fit_closed_form = model.elbo_terms, model.fit_closed_form
        # Traced once per training function, so any training step shows as a call with training=True.
        object.__setattr__(model, "elbo_terms", lambda batch, seed, training=True: (
            training_calls.append("step") if training else None, elbo_terms(batch, seed, training))[1])
        object.__setattr__(model, "fit_closed_form", lambda x, y: (
            training_calls.append("closed_form"), fit_closed_form(x, y))[1])
        return model

    def fail(*args, **kwargs):
        raise RuntimeError(f"{stage} broke")

    config = _config(tmp_path, data_dir=str(data_dir), epochs=1, export_base=str(tmp_path / "models"))
    work = pathlib.Path(config.workdir)
    with monkeypatch.context() as patch:
        patch.setattr(*((evaluation, "evaluate", fail) if stage == "evaluation" else (export_lib, "export", fail)))
        with pytest.raises(RuntimeError, match=f"{stage} broke"):
            train_lib.train_and_evaluate(config, lr.Config(inference=inference), build_spied)
    assert training_calls
    assert not (work / "metrics.json").exists() and not (tmp_path / "models").exists()
    checkpoints = sorted(p.name for p in (work / "checkpoints").iterdir())
    assert any(name.endswith(".index") for name in checkpoints)
    first_timing = json.loads((work / train_lib.TIMING_FILE).read_text())

    training_calls.clear()
    caplog.set_level("INFO", logger="absl")
    metrics = train_lib.train_and_evaluate(config, lr.Config(inference=inference), build_spied)
    assert training_calls == []
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == checkpoints
    assert json.loads((work / "metrics.json").read_text()) == {k: v for k, v in metrics.items()
                                                                if k != "export_path"}
    assert np.isfinite(metrics["test/rmse"]) and metrics["train/seconds"] == first_timing["train/seconds"]
    assert metrics["export_path"] == str((tmp_path / "models" / "1").resolve())
    assert (tmp_path / "models" / "1" / "saved_model.pb").is_file()
    last_step = max((int(name.split("-")[1].split(".")[0]) for name in checkpoints if name.startswith("ckpt-")),
                    default=None)
    state = "closed-form fit" if inference == "exact" else f"at step {last_step} (checkpoint"
    assert any("training already complete" in r.getMessage() and state in r.getMessage()
               and r.getMessage().endswith("evaluating and exporting") for r in caplog.records), caplog.text
