"""The UCI benchmark's runner and tables: a failed run is reported, the others go on, the table marks the gap."""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))
import uci  # noqa: E402  (benchmarks/uci.py)


def _run(nll):
    return {"test/nll": nll, "test/rmse": 2 * nll, "train/seconds": 1.0}


def test_a_failed_run_is_reported_and_the_others_go_on(capsys):
    def run(family, dataset, split):
        if (dataset, split) == ("yacht", 1):
            raise uci.RunFailed("python -m training.train_bnn ... failed (exit code 1):\nTypeError: broken")
        return _run(1.0 + split)

    jobs = [("bnn", d, k) for d in ("yacht", "energy") for k in range(3)]
    finished, failed = uci.run_jobs(run, jobs, workers=2)
    assert sorted(finished) == sorted(j for j in jobs if j != ("bnn", "yacht", 1))
    assert list(failed) == [("bnn", "yacht", 1)] and "TypeError: broken" in failed[("bnn", "yacht", 1)]
    assert "bnn yacht 1 FAILED" in capsys.readouterr().err


def test_table_marks_cells_with_failed_splits_and_cells_with_none_finished():
    finished = {("bnn", "yacht", 0): _run(1.0), ("bnn", "yacht", 2): _run(3.0),
                **{("bnn", "energy", k): _run(0.5) for k in range(3)},
                **{("linear", "energy", k): _run(2.0) for k in range(3)}}
    failed = {("bnn", "yacht", 1): "exit code 1", **{("linear", "yacht", k): "exit code 1" for k in range(3)}}
    results = uci.summarize(finished, failed, ["bnn", "linear"], ["yacht", "energy"])
    assert results["bnn"]["yacht"]["num_splits"] == 2 and results["bnn"]["yacht"]["failed_splits"] == 1
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:3]
            for line in uci.table(results, ["bnn", "linear"], ["yacht", "energy"], "nll", 2).splitlines()[2:]}
    assert rows["yacht"] == ["2.00 ± 1.00 (1 of 3 splits failed)", "— (3 of 3 splits failed)"]
    assert rows["energy"] == ["0.50 ± 0.00", "2.00 ± 0.00"]


def test_run_binary_raises_run_failed_with_the_tail_of_stderr(tmp_path):
    with pytest.raises(uci.RunFailed, match="No module named training.no_such_binary"):
        uci.run_binary("training.no_such_binary", [], tmp_path / "work")
