"""Name → implementation registries, filled by decorators at import time.

A new modality, encoder, decoder or model family adds a file that registers itself; nothing else
(trainer, CLI, config loader) branches on names, and no list of plugin modules is kept by hand:
``load_plugins`` imports every module under the packages in ``PLUGIN_PACKAGES`` (package
scanning, so a new file in ``vaeflow/models/`` or ``vaeflow/modalities/`` is found without
editing anything), then the modules that installed distributions declare under the
``vaeflow.plugins`` entry-point group (so a separate package can add its own). This module
imports nothing from vaeflow.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import pkgutil
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

# Packages whose modules (all of them, recursively) fill the registries below when imported.
PLUGIN_PACKAGES = ("vaeflow.models", "vaeflow.modalities")
# Entry-point group through which other installed distributions add modules of their own.
ENTRY_POINT_GROUP = "vaeflow.plugins"


class RegistryError(ValueError):
    """An unknown name or a bad option for a registered class; the message lists what is allowed."""


class Registry(dict):
    """A named dict with a ``register`` decorator."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self and self[name] is not obj:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self[name] = obj
            return obj

        return deco

    def get_or_raise(self, name: str, key: str | None = None) -> Any:
        load_plugins()
        if name not in self:
            allowed = ", ".join(sorted(self)) or "(none registered)"
            raise RegistryError(f"{key or self.kind}: unknown {self.kind} {name!r}; allowed: {allowed}")
        return self[name]


MODALITIES = Registry("modality")
DATASETS = Registry("dataset")
ENCODERS = Registry("encoder")
DECODERS = Registry("decoder")
# Model families: each owns its objective (named loss terms, optimizers, selection score) and the
# inference verbs (sample, encode, reconstruct, likelihood, anomaly scores).
FAMILIES = Registry("family")

_loaded = False


def load_plugins() -> None:
    """Import every module of ``PLUGIN_PACKAGES`` and of the ``vaeflow.plugins`` entry points (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name in PLUGIN_PACKAGES:
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{name}."):
            importlib.import_module(info.name)
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        importlib.import_module(entry.module)


def check_name(key: str, registry: Registry, name: str) -> None:
    registry.get_or_raise(name, key)


# Keyword arguments the model builder supplies itself (derived from the data or the config).
BUILDER_ARGS = frozenset({"input_spec", "latent_dim", "cond_dim"})


def check_modality(key: str, registry: Registry, name: str, modality: str) -> None:
    """Check that the registered class reads ``modality``'s batches.

    A class declares the modalities it reads in a ``modalities`` tuple; one without it is taken to
    read any. Raises a RegistryError naming the classes that do read this modality."""
    cls = registry.get_or_raise(name, f"{key}.name")
    reads = getattr(cls, "modalities", None)
    if reads is not None and modality not in reads:
        allowed = sorted(n for n, c in registry.items() if modality in getattr(c, "modalities", (modality,)))
        raise RegistryError(
            f"{key}.name: {registry.kind} {name!r} reads {' or '.join(reads)} data, not {modality}; "
            f"allowed for {modality}: {', '.join(allowed) or '(none registered)'}"
        )


def check_options(key: str, registry: Registry, spec: Any, check_type: Callable[[Any, Any, str], Any],
                  modality: str | None = None) -> None:
    """Check a ModuleSpec's options against the registered class's keyword arguments and types, and
    (given ``modality``) that the class reads that modality's batches (see ``check_modality``).

    ``check_type(value, type, key)`` converts or raises (the config module's type checker)."""
    cls = registry.get_or_raise(spec.name, f"{key}.name")
    if modality is not None:
        check_modality(key, registry, spec.name, modality)
    params = {
        n: p
        for n, p in inspect.signature(cls).parameters.items()
        if n not in BUILDER_ARGS and p.kind is p.KEYWORD_ONLY
    }
    hints = typing.get_type_hints(cls.__init__)
    for name, value in spec.options.items():
        if name not in params:
            raise RegistryError(
                f"unknown key {key}.{name} for {registry.kind} {spec.name!r}; allowed keys: "
                f"name, {', '.join(params)}"
            )
        check_type(value, hints.get(name, Any), f"{key}.{name}")


def build(registry: Registry, spec: Any, **derived: Any) -> Any:
    """Instantiate ``spec.name`` with its options plus the builder-derived keyword arguments."""
    cls = registry.get_or_raise(spec.name)
    options: Mapping[str, Any] = spec.options
    return cls(**derived, **options)
