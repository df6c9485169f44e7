"""Every test gets its own feature cache, never the user's; and the precision that the
precision-dependent tests compare in.

Precision: a parity test (2 ranks against 1, served against predicted, exported against
PyTorch) runs its networks in one fixed precision, `--precision` (default fp32, or
$TRANSFERKIT_TEST_PRECISION), never in what this CPU happens to prefer, and takes its tolerance
from that precision (`helpers.eps`). Such tests carry the `precision` mark; `make test` runs them
once more with `--precision bf16`, which works on any CPU (emulated where it has no native bf16,
only slower): `pytest -m precision --precision bf16` does that alone.
"""

import os

import pytest

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


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path_factory.mktemp("cache")))
