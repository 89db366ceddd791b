import textwrap

import pytest
from helpers import cli_env, trilemma_cli, write_installed_plugin

import trilemma
from trilemma.plugins import collect, get_plugin_manager
from trilemma.registry import RegistrationError

WORKING = textwrap.dedent('''
    import trilemma
    from trilemma.datasets import MNIST
    from dataclasses import replace

    @trilemma.hookimpl
    def register_datasets(register):
        register(replace(MNIST, name="mnist-again"))
''')


def test_builtins_are_registered_through_the_hooks():
    registries = collect()
    assert {"speed", "fidelity", "coverage"} <= set(registries.metrics.names())
    assert {"mnist", "stacked-mnist"} <= set(registries.datasets.names())
    assert registries.metrics.provider("fidelity").distribution == "trilemma"
    assert len(registries.models) == 0  # hermetic: no installed model plugin loaded


def test_registry_validates_names_types_and_duplicates():
    import fake_models

    class NotAModel:
        name = "x"

    class Plugin:
        @trilemma.hookimpl
        def register_models(self, register):
            register(fake_models.Tiny)
            register(fake_models.Tiny)  # a duplicate is refused and listed, not an error of the plugin
            with pytest.raises(RegistrationError, match="not a trilemma.GenerativeModel"):
                register(NotAModel)
            with pytest.raises(RegistrationError, match="lower-case"):
                register(fake_models.TinyNaN, name="Bad Name")

    registries = collect(get_plugin_manager({"p": Plugin()}))
    assert registries.models.names() == ["tiny"]
    assert not registries.broken
    assert [str(c) for c in registries.conflicts()] == ["model 'tiny': refused from p (name already registered); p keeps it"]


def test_plugin_whose_register_hook_raises_is_broken_and_others_work():
    import fake_models

    class Raising:
        @trilemma.hookimpl
        def register_models(self, register):
            raise ValueError("no models today")

    registries = collect(get_plugin_manager({"raising": Raising(), "fakes": fake_models}))
    assert "raising" in registries.broken and "no models today" in registries.broken["raising"].error
    assert "tiny" in registries.models


def test_entry_points_broken_misspelt_and_allowlist(tmp_path):
    site = tmp_path / "site"
    write_installed_plugin(site, "trilemma-good", "good", "trilemma_good", WORKING, version="1.2.3")
    write_installed_plugin(site, "trilemma-broken", "broken", "trilemma_broken", "raise ImportError('missing dep xyz')\n")
    write_installed_plugin(site, "trilemma-typo", "typo", "trilemma_typo",
                           "import trilemma\n@trilemma.hookimpl\ndef register_modles(register):\n    pass\n")
    result = trilemma_cli("list", env=cli_env(site))
    assert result.returncode == 0, result.stderr
    assert "mnist-again" in result.stdout and "trilemma-good 1.2.3" in result.stdout
    problems = result.stdout.split("problems:")[1]
    assert "broken plugin broken (trilemma-broken)" in problems and "missing dep xyz" in problems
    assert "broken plugin typo" in problems and "register_modles" in problems

    only_good = trilemma_cli("list", env=cli_env(site, allow="good"))
    assert "mnist-again" in only_good.stdout and "problems:" not in only_good.stdout
    none = trilemma_cli("list", env=cli_env(site, allow=""))
    assert "mnist-again" not in none.stdout
