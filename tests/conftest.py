"""Shared test fixtures: the offline dataset directory and the TF Serving fixtures beside the clone."""
import gc
import os
import pathlib

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

import serving  # noqa: E402

serving.apply_runtime_defaults()  # as the server and the training binaries run (before the first op)
# A test worker traces hundreds of models, and at the default thresholds each full collection walks every object
# their graphs left: rarer collections, as the memory they would free is small.
gc.set_threshold(10_000, 20, 20)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


def _data_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("VIZOO_DATA_DIR", SHARED / "datasets")).resolve()


def pytest_collection_modifyitems(items):
    """Longest first: modules with tests marked `slow` run before the others and, in each, those tests first, so
    that `pytest -n 2` ends on short tests and its two workers finish together. A module's tests stay together
    (its module-scoped fixtures are built once per worker)."""
    def module(item):
        return getattr(item, "module", None) or item.path

    position = {}
    for item in items:
        position.setdefault(module(item), len(position))
    slow_modules = {module(item) for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: (module(item) not in slow_modules, position[module(item)],
                                 item.get_closest_marker("slow") is None))


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
    """The offline datasets (`../shared/datasets` in CI). Tests never download."""
    path = _data_dir()
    if not (path / "uci").is_dir():
        pytest.fail(f"offline datasets not found at {path}; set VIZOO_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def tf_serving_testdata() -> pathlib.Path:
    """TensorFlow Serving's own test SavedModels and config files."""
    path = SHARED / "fixtures" / "tf_serving_testdata"
    if not path.is_dir():
        pytest.fail(f"TF Serving fixtures not found at {path}")
    return path


@pytest.fixture(scope="session")
def repo_data_dir() -> pathlib.Path:
    """The small dataset slice committed in the repository for `make demo`."""
    return REPO_ROOT / "data"
