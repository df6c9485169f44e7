"""Every test gets its own cache, never the user's (holding the conversions earlier tests made);
and the precision that the precision-dependent tests compare in.

Precision: a parity test (2 ranks against 1, served against predicted, exported against
PyTorch) runs its networks in one fixed precision, `--precision` (default fp32, or
$TRANSFERKIT_TEST_PRECISION), never in what this CPU happens to prefer, and takes its tolerance
from that precision (`helpers.eps`). Such tests carry the `precision` mark; `make test` runs them
once more with `--precision bf16`, which works on any CPU (emulated where it has no native bf16,
only slower): `pytest -m precision --precision bf16` does that alone.
"""

import os

import pytest

from helpers import keep_made, seed_cache

PRECISIONS = ("fp32", "bf16")


def pytest_addoption(parser):
    parser.addoption("--precision", choices=PRECISIONS, default=os.environ.get("TRANSFERKIT_TEST_PRECISION", "fp32"),
                     help="the precision the precision-dependent tests (-m precision) run and compare in "
                          "[default: $TRANSFERKIT_TEST_PRECISION or fp32]")


def pytest_report_header(config):
    return f"transferkit: precision-dependent tests in {config.getoption('--precision')}"


@pytest.fixture(scope="session")
def precision(request) -> str:
    """The precision a precision-dependent test runs its networks in (fp32 | bf16)."""
    return request.config.getoption("--precision")


@pytest.fixture(scope="session", autouse=True)
def report_libraries():
    """The libraries of a run's evaluation and report and of the doctor's analysis, imported here
    once, as in a notebook that plotted: a run (or doctor) in the test's own process then does
    that work itself instead of starting a child that imports them for it (`worker.Worker`: 1.2 s
    less per run on 2 cores). The child is tested by the Worker tests (`always=True`) and by
    every command a test runs as a process."""
    import importlib

    from transferkit.worker import DOCTOR_MODULES, REPORT_MODULES

    for name in REPORT_MODULES + DOCTOR_MODULES:
        importlib.import_module(name)


@pytest.fixture(scope="session", autouse=True)
def conversions(tmp_path_factory):
    """Networks converted for ONNX Runtime by any test, shared by all (see `isolated_cache`); and
    a cache for the module-scoped fixtures, made before any function's own: none reaches the
    user's cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRANSFERKIT_CACHE", str(tmp_path_factory.mktemp("fixtures-cache")))
        yield tmp_path_factory.mktemp("conversions")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch, conversions):
    """A fresh cache per test, holding the conversions and the prepared backbone weights earlier
    tests made: they are keyed by everything their output depends on (a random-weights backbone
    by its seed), which is what a user's cache shares between runs too. Re-making a conversion
    cost 1.5-2.3 s (about 60 of them in a run of the suite); the backbone weights file spares a
    linear run building the network (0.3-0.8 s in the test's process, importing torch and timm
    too in a command's: 3-4 s). Hard links: the cache replaces an entry atomically, never in
    place; a test that damages one on purpose, or needs a cache without them, uses its own
    (`own_cache`, test_engines' shared_cache)."""
    root = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(root))
    seed_cache(root, conversions)
    yield root
    keep_made(root, conversions)


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """An empty cache of the test's own, sharing nothing with other tests (`isolated_cache`)."""
    root = tmp_path / "own-cache"
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(root))
    return root
