"""Every test gets its own feature cache, never the user's."""

import pytest


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path_factory.mktemp("cache")))
