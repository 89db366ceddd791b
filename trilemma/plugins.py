"""Plugin discovery: built-ins plus ``trilemma`` entry points, each loaded on its own.

Load order decides who keeps a name (first come): trilemma's built-in modules, then the
first-party plugin distributions shipped with trilemma, then every other entry point, sorted by
distribution and entry-point name. Hook ordering flags cannot change it, since each plugin's hook
is called on its own. Any exception a plugin raises while importing or registering (``SystemExit``
included, ``KeyboardInterrupt`` not) marks it broken, undoes what it registered, and the others
load.
"""

from __future__ import annotations

import importlib
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any

import pluggy

from trilemma import hookspecs
from trilemma.columns import HARNESS_COST, HARNESS_IDENTITY, Column
from trilemma.hookspecs import ALLOWLIST_ENV
from trilemma.registry import Conflict, Entry, Provider, Registry

ENTRY_POINT_GROUP = "trilemma"
BUILTIN_MODULES = (
    "trilemma.datasets",
    "trilemma.metrics.fidelity",
    "trilemma.metrics.speed",
    "trilemma.metrics.coverage",
    "trilemma.metrics.density",
    "trilemma.metrics.realism",
    "trilemma.metrics.memorization",
    "trilemma.metrics.likelihood",
    "trilemma.executors",
    "trilemma.ray_executor",
    "trilemma.slurm_executor",
    "trilemma.trackers",
)
#: The model plugins shipped with trilemma (``plugins/`` in its repository): loaded before any
#: other distribution, so no third party can take their names. A test keeps this in step with
#: the repository.
FIRST_PARTY_DISTRIBUTIONS = frozenset({"trilemma-vae", "trilemma-dcgan", "trilemma-ddpm", "trilemma-ddgan",
                                       "trilemma-flow-matching", "trilemma-flow", "trilemma-cld",
                                       "trilemma-lsgm", "trilemma-reflow", "trilemma-consistency",
                                       "trilemma-progressive-distillation"})


@dataclass(frozen=True)
class BrokenPlugin:
    """A plugin that failed to import or to register; the others keep working."""

    name: str
    distribution: str
    error: str
    details: str


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, plus where each plugin came from and which plugins are broken."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.providers: dict[str, Provider] = {}
        self.broken: dict[str, BrokenPlugin] = {}
        self.in_process: list[str] = []  # plugins registered by this process, which another process cannot load

    def register_plugin(self, plugin: ModuleType | object, name: str, provider: Provider) -> None:
        self.register(plugin, name=name)
        self.providers[name] = provider

    def mark_broken(self, name: str, distribution: str, exc: BaseException) -> None:
        self.broken[name] = BrokenPlugin(
            name, distribution, f"{type(exc).__name__}: {exc}",
            "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        )
        if self.get_plugin(name) is not None:
            self.unregister(name=name)


def _load_order(ep: EntryPoint) -> tuple[bool, str, str]:
    dist = ep.dist.name if ep.dist else ""
    return dist not in FIRST_PARTY_DISTRIBUTIONS, dist, ep.name


def allowed_entry_points() -> list[EntryPoint]:
    """Entry points in the group in load order, filtered by ``TRILEMMA_LOAD_PLUGINS``
    (comma-separated names; empty: none) when it is set."""
    found = sorted(entry_points(group=ENTRY_POINT_GROUP), key=_load_order)
    allow = os.environ.get(ALLOWLIST_ENV)
    if allow is None:
        return found
    names = {n.strip() for n in allow.split(",") if n.strip()}
    return [ep for ep in found if ep.name in names]


def _builtin_provider(module_name: str) -> Provider:
    from trilemma import __version__

    return Provider(module_name, "trilemma", __version__)


def get_plugin_manager(extra_plugins: dict[str, object] | None = None) -> PluginManager:
    """A new manager with the built-ins, the allowed entry points and ``extra_plugins`` (name →
    module or object, for tests). A plugin that fails to import is recorded in ``broken``."""
    pm = PluginManager()
    for module_name in BUILTIN_MODULES:
        pm.register_plugin(importlib.import_module(module_name), module_name, _builtin_provider(module_name))
    for ep in allowed_entry_points():
        dist = ep.dist.name if ep.dist else "?"
        version = ep.dist.version if ep.dist else ""
        if pm.has_plugin(ep.name) or ep.name in pm.broken:
            pm.mark_broken(f"{ep.name} ({dist})", dist, ValueError(f"entry point name {ep.name!r} is already taken"))
            continue
        try:
            plugin = ep.load()
            pm.register_plugin(plugin, ep.name, Provider(ep.name, dist, version))
            pm.check_pending()  # a misspelt hook is this plugin's fault: report it as broken
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a broken plugin must not take the others down, nor exit
            pm.mark_broken(ep.name, dist, exc)
    for name, plugin in (extra_plugins or {}).items():
        pm.register_plugin(plugin, name, Provider(name, name, ""))
        pm.in_process.append(name)
    pm.check_pending()
    return pm


@dataclass
class Registries:
    """Everything the plugins registered, by kind, and the plugins that broke."""

    models: Registry
    metrics: Registry
    datasets: Registry
    executors: Registry
    trackers: Registry
    broken: dict[str, BrokenPlugin]
    plugin_manager: PluginManager

    def all(self) -> list[Registry]:
        return [self.datasets, self.metrics, self.models, self.executors, self.trackers]

    def conflicts(self) -> list[Conflict]:
        return [c for registry in self.all() for c in registry.conflicts]


def _fill(pm: PluginManager, hook_name: str, registry: Registry, registries: Registries) -> None:
    """Call ``hook_name`` of one plugin at a time, in load order, through pluggy's hook caller
    restricted to that plugin, so each registration is attributed to its plugin and a plugin that
    raises is marked broken (and what it registered is undone) while the others go on."""
    plugins = [name for name, _ in pm.list_name_plugin()]
    implementers = {impl.plugin_name for impl in getattr(pm.hook, hook_name).get_hookimpls()}
    for name in plugins:
        if name not in implementers or name in pm.broken:
            continue
        others = [pm.get_plugin(other) for other in plugins if other != name]
        try:
            pm.subset_hook_caller(hook_name, remove_plugins=others)(register=registry.bound(pm.providers[name]))
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            pm.mark_broken(name, pm.providers[name].distribution, exc)
            for each in registries.all():
                each.remove_plugin(name)


def _column_clash(metric: Any, entries: list[Entry]) -> tuple[Provider, str] | None:
    """A metric may not declare a column the harness or an earlier metric owns."""

    def overlap(a: str, b: str) -> bool:
        return Column(a).matches(b) or Column(b).matches(a)

    for column in metric.columns:
        for owned in (*HARNESS_IDENTITY, *HARNESS_COST):
            if overlap(column.name, owned.name):
                return _builtin_provider("trilemma.columns"), f"column {column.name!r} belongs to the harness"
        for entry in entries:
            for owned in entry.item.columns:
                if overlap(column.name, owned.name):
                    return entry.provider, f"column {column.name!r} belongs to metric {entry.name!r}"
    return None


def collect(pm: PluginManager | None = None) -> Registries:
    """Call every plugin's hooks, one plugin at a time, into validating registries."""
    from trilemma.datasets import Dataset
    from trilemma.executor_api import Executor
    from trilemma.metrics import Metric
    from trilemma.model import GenerativeModel
    from trilemma.tracker_api import Tracker

    pm = pm or get_plugin_manager()

    def model_problem(item: Any) -> str | None:
        if not (isinstance(item, type) and issubclass(item, GenerativeModel)):
            return "not a trilemma.GenerativeModel subclass"
        if not item.name:
            return "its class attribute `name` is empty"
        return item.declaration_problem()

    def instance_of(cls: type) -> Callable[[Any], str | None]:
        return lambda item: None if isinstance(item, cls) else f"not a {cls.__module__}.{cls.__name__}"

    registries = Registries(
        models=Registry("model", model_problem, lambda m: m.name),
        metrics=Registry("metric", instance_of(Metric), lambda m: m.name, clash=_column_clash),
        datasets=Registry("dataset", instance_of(Dataset), lambda d: d.name),
        executors=Registry("executor", instance_of(Executor), lambda e: e.name),
        trackers=Registry("tracker", instance_of(Tracker), lambda t: t.name),
        broken=pm.broken,
        plugin_manager=pm,
    )
    _fill(pm, "register_datasets", registries.datasets, registries)
    _fill(pm, "register_metrics", registries.metrics, registries)
    _fill(pm, "register_models", registries.models, registries)
    _fill(pm, "register_executors", registries.executors, registries)
    _fill(pm, "register_trackers", registries.trackers, registries)
    return registries
