from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def hermetic_plugins(monkeypatch):
    """Core tests load no installed plugin unless a test says otherwise."""
    monkeypatch.setenv("TRILEMMA_LOAD_PLUGINS", "")


@pytest.fixture(scope="session")
def mnist():
    from trilemma.data import load_mnist

    return load_mnist(log=None)


@pytest.fixture
def fake_registries(monkeypatch):
    """Registries with the fake models registered as an extra plugin, also seen by the CLI."""
    import fake_models

    import trilemma.plugins as plugins

    real_collect = plugins.collect

    def collect(pm=None):
        return real_collect(pm or plugins.get_plugin_manager({"fake-models": fake_models}))

    monkeypatch.setattr(plugins, "collect", collect)
    return collect()


@pytest.fixture(scope="session")
def site(tmp_path_factory):
    """A site directory with two installed plugin distributions: the fake models and a victim model
    that writes its worker's pid at each step (for the tests that kill workers)."""
    from helpers import FAKES_SOURCE, VICTIM_SOURCE, write_installed_plugin

    site = tmp_path_factory.mktemp("plugins") / "site"
    write_installed_plugin(site, "trilemma-fakes", "fakes", "trilemma_fakes", FAKES_SOURCE)
    write_installed_plugin(site, "trilemma-victim", "victim", "trilemma_victim", VICTIM_SOURCE)
    return site
