"""Name → implementation registries, filled by decorators at import time.

A new modality, encoder or decoder adds a file that registers itself; nothing else
(trainer, CLI, config loader) branches on names.
"""

from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

# Modules whose import fills the registries below.
_PLUGINS = (
    "vaeflow.data.images",
    "vaeflow.models.encoders.conv2d",
    "vaeflow.models.decoders.conv2d",
    "vaeflow.data.timeseries",
    "vaeflow.models.encoders.gru",
    "vaeflow.models.encoders.conv1d",
    "vaeflow.models.decoders.gru",
    "vaeflow.models.decoders.conv1d",
    "vaeflow.models.decoders.timevae",
    "vaeflow.data.molecules",
    "vaeflow.models.encoders.gine",
    "vaeflow.models.decoders.selfies_gru",
)


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
            raise _config_error(f"{key or self.kind}: unknown {self.kind} {name!r}; allowed: {allowed}")
        return self[name]


MODALITIES = Registry("modality")
DATASETS = Registry("dataset")
ENCODERS = Registry("encoder")
DECODERS = Registry("decoder")

_loaded = False


def load_plugins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _PLUGINS:
            importlib.import_module(module)


def _config_error(message: str) -> Exception:
    from vaeflow.config import ConfigError

    return ConfigError(message)


def check_name(key: str, registry: Registry, name: str) -> None:
    registry.get_or_raise(name, key)


# Keyword arguments the model builder supplies itself (derived from the data or the config).
BUILDER_ARGS = frozenset({"input_spec", "latent_dim", "cond_dim"})


def check_options(key: str, registry: Registry, spec: Any) -> None:
    """Check a ModuleSpec's options against the registered class's keyword arguments and types."""
    from vaeflow.config import check_type

    cls = registry.get_or_raise(spec.name, f"{key}.name")
    params = {
        n: p
        for n, p in inspect.signature(cls).parameters.items()
        if n not in BUILDER_ARGS and p.kind is p.KEYWORD_ONLY
    }
    hints = typing.get_type_hints(cls.__init__)
    for name, value in spec.options.items():
        if name not in params:
            raise _config_error(
                f"unknown key {key}.{name} for {registry.kind} {spec.name!r}; allowed keys: "
                f"name, {', '.join(params)}"
            )
        check_type(value, hints.get(name, Any), f"{key}.{name}")


def build(registry: Registry, spec: Any, **derived: Any) -> Any:
    """Instantiate ``spec.name`` with its options plus the builder-derived keyword arguments."""
    cls = registry.get_or_raise(spec.name)
    options: Mapping[str, Any] = spec.options
    return cls(**derived, **options)
