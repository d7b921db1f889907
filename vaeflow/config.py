"""Typed, frozen configuration: preset YAML < params.yaml section < ``--set`` overrides.

Every job is described by one :class:`ExperimentConfig`. It is built from a preset in
``configs/`` (a complete configuration), then the per-modality sections of ``params.yaml``
(``train.image``, ``model.image`` … — what DVC tracks), then ``--set key=value`` overrides.
Unknown keys and wrong types raise :class:`ConfigError` before any work starts, with a
message that names the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from vaeflow import registry

SECTIONS = ("data", "model", "loss", "train", "sample", "evaluate", "tracking")


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` as a float, as YAML 1.2 does (PyYAML's 1.1 rules need ``1.0e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.[\d_]*)?[eE][-+]?\d+$|" r"^[-+]?(?:\d[\d_]*)?\.[\d_]*$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506  (a SafeLoader subclass)


class ConfigError(ValueError):
    """A user mistake in a configuration; the message says which key and what to do."""


@dataclasses.dataclass(frozen=True)
class ModuleSpec:
    """A registered module by name plus its keyword arguments (checked against its signature)."""

    name: str
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str = "fashion-mnist"
    # Held out from the official training split, chosen with the job seed, for keep-best and warm-up.
    val_size: int = 5000
    # Seeded subsets for quick and tiny runs; None keeps the whole split.
    limit_train: int | None = None
    limit_test: int | None = None
    # Dynamic binarisation of pixels (the standard protocol for Bernoulli likelihoods).
    binarize: bool = True
    # --- time series (read by the timeseries modality only) ---
    # Sliding-window length and step in time steps (24 as in TimeGAN, Yoon et al. 2019); a null
    # window keeps each series whole (UCR/UEA sets), padding shorter ones to the longest.
    window: int | None = 24
    stride: int = 1
    # Fractions of a long series' time span held out at its end, in time order (train | val | test),
    # so no window crosses a split. Sets of separate series (UCR/UEA) keep the official test split
    # and hold out val_fraction of their training series, chosen with the job seed.
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    # How a long series is split: "time" (the spans above, scaler fitted on the train span) or
    # "shuffled", the TimeGAN/TimeVAE papers' protocol: the whole series scaled together, cut into
    # windows, and the windows shuffled (with the seed) before the fractions are taken. Overlapping
    # windows then share time steps across splits, so validation and test scores are optimistic;
    # use it to compare with published numbers, not to estimate how a model does on the future.
    split: Literal["time", "shuffled"] = "time"
    # Per-channel scaling fitted on the training split only: minmax to [0, 1] (TimeGAN) or standard.
    scaling: Literal["minmax", "standard"] = "minmax"
    # NaN/inf values: impute (carry the last finite value forward, the first one backward), drop
    # (the time steps that hold one), reject (stop with an error). Counts go to prepare.json.
    missing: Literal["impute", "drop", "reject"] = "impute"
    # Channels constant over the training split: drop them, keep them (scaled to 0), or reject.
    constant_channels: Literal["drop", "keep", "reject"] = "drop"
    # Series shorter than a window: drop them, pad them (padding is masked out of the likelihood),
    # or reject. With a null window, unequal lengths are padded unless this is reject.
    short_series: Literal["drop", "pad", "reject"] = "pad"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    latent_dim: int = 16
    encoder: ModuleSpec = ModuleSpec("conv2d")
    decoder: ModuleSpec = ModuleSpec("conv2d")
    # Class-conditional VAE (Sohn et al. 2015): labels feed both encoder and decoder.
    conditional: bool = False


@dataclasses.dataclass(frozen=True)
class LossConfig:
    # β-VAE weight on the KL term (Higgins et al. 2017); 1.0 is the plain ELBO.
    beta: float = 1.0
    # Linear KL warm-up from 0 to beta over this many epochs (Bowman et al. 2016); 0 disables it.
    warmup_epochs: int = 0
    # Free bits in nats per latent dimension (Kingma et al. 2016); 0 disables it.
    free_bits: float = 0.0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    # Global batch; each of the num_workers workers sees batch_size // num_workers.
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    # Gradient-norm clipping; 0 disables it.
    grad_clip: float = 0.0
    num_workers: int = 2
    use_gpu: bool = False
    # Torch threads per worker; num_workers * threads should not exceed the cores.
    cpus_per_worker: int = 1
    # bf16 autocast for forward passes (GPU or CPU); the loss is always reduced in fp32.
    precision: Literal["fp32", "bf16"] = "fp32"
    # Ray Train results and checkpoints; a relative path is taken from the working directory.
    storage_path: str = "ray_results"
    # Checkpoints kept by validation loss (the latest is always kept for resume).
    keep_checkpoints: int = 2
    # Also checkpoint every N training steps inside an epoch (for long epochs); 0: at epoch ends only.
    checkpoint_every_steps: int = 0
    # Worker-group restarts Ray Train attempts before the job fails.
    max_failures: int = 0


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    n: int = 64
    # Scales the prior's standard deviation; 1.0 samples the model's own prior.
    temperature: float = 1.0
    # Property targets for a property-conditional model (molecules: e.g. {logP: 3.0, QED: 0.8}, in
    # real units); properties left out are drawn with the rest of a random training molecule's row.
    properties: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    # Importance samples for the IWAE bound on test NLL (Burda et al. 2016).
    iwae_k: int = 1000
    # Test examples the IWAE NLL is computed on; None uses the whole test split.
    iwae_examples: int | None = None
    batch_size: int = 256
    # Post-hoc scores of generated data (time series: the TimeGAN discriminative and predictive
    # scores): seeds averaged over, and optimiser steps of each post-hoc GRU (TimeGAN: 2000).
    posthoc_seeds: int = 3
    posthoc_steps: int = 2000
    # Monte-Carlo samples of z per window for anomaly scores (reconstruction probability).
    anomaly_k: int = 16


@dataclasses.dataclass(frozen=True)
class TrackingConfig:
    # A relative sqlite path is made absolute (sqlite:////abs/path.db) from the working directory.
    uri: str = "sqlite:///mlflow.db"
    # Where a new experiment stores artifacts when the backend is local (sqlite/file); a tracking
    # server uses its own artifact root.
    artifact_location: str = "mlartifacts"
    experiment: str = "vaeflow"
    registered_model: str = "vaeflow-image"
    alias: str = "candidate"


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    modality: str = "image"
    seed: int = 0
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    tracking: TrackingConfig = TrackingConfig()

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON/YAML-safe) that :func:`from_dict` turns back into this config."""
        return _to_plain(self)

    def flat(self) -> dict[str, Any]:
        """Dotted keys → scalar values, for MLflow params."""
        out: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, Mapping) and value:
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                out[prefix] = json.dumps(value) if isinstance(value, (list, dict)) else value

        walk("", self.to_dict())
        return out

    def digest(self, *, exclude: tuple[str, ...] = ()) -> str:
        """Short stable hash of the resolved config (sections in ``exclude`` left out)."""
        data = {k: v for k, v in self.to_dict().items() if k not in exclude}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]


def _to_plain(value: Any) -> Any:
    if isinstance(value, ModuleSpec):
        return {"name": value.name, **{k: _to_plain(v) for k, v in value.options.items()}}
    if dataclasses.is_dataclass(value):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return repr(tp).replace("typing.", "")
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def check_type(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` converted to ``tp`` where that is lossless (int → float), else raise."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(f"{key}: {value!r} is not allowed; use one of {_type_name(tp)}")
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return check_type(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        key_tp, item_tp = typing.get_args(tp) or (Any, Any)
        return {check_type(k, key_tp, key): check_type(v, item_tp, f"{key}.{k}") for k, v in value.items()}
    if origin in (list, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [check_type(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is type(None):
        if value is None:
            return None
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _module_spec(value: Any, key: str) -> ModuleSpec:
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, Mapping) or not isinstance(value.get("name"), str):
        raise ConfigError(f"{key}: expected a mapping with a 'name' key, e.g. {{name: conv2d}}")
    options = {k: v for k, v in value.items() if k != "name"}
    return ModuleSpec(name=value["name"], options=options)


def from_dict(cls: type, data: Mapping[str, Any] | None, prefix: str = "") -> Any:
    """Build the frozen dataclass ``cls`` from ``data``; unknown keys and wrong types raise."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = prefix.rstrip(".") or "config"
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]!s} in {where}; allowed keys: {', '.join(fields)}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        tp = hints[name]
        if tp is ModuleSpec:
            kwargs[name] = _module_spec(value, key)
        elif dataclasses.is_dataclass(tp):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{key}: expected a mapping of {tp.__name__} keys, got {value!r}")
            kwargs[name] = from_dict(tp, value, prefix=f"{key}.")
        else:
            kwargs[name] = check_type(value, tp, key)
    return cls(**kwargs)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` wins; nested mappings merge key by key."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``'train.epochs=3'`` → ``{'train': {'epochs': 3}}`` (the value is parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value, e.g. train.epochs=3")
    key, raw = text.split("=", 1)
    value = yaml_load(raw) if raw.strip() else None
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; pass an existing preset, e.g. configs/image/quick.yaml")
    try:
        data = yaml_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config sections, not {type(data).__name__}")
    return data


# params.yaml keys, each holding one entry per modality: `seed.image`, `train.image.epochs`, …
PARAMS_KEYS = ("seed", *SECTIONS)


def params_overrides(params: Mapping[str, Any], modality: str) -> dict[str, Any]:
    """The ``<key>.<modality>`` entries of params.yaml, as a config-shaped dict."""
    out: dict[str, Any] = {}
    for key in PARAMS_KEYS:
        section = params.get(key) or {}
        if not isinstance(section, Mapping):
            raise ConfigError(f"params.yaml: {key} must map modality names to values, e.g. {key}: {{image: ...}}")
        if section.get(modality) is not None:
            out[key] = section[modality]
    return out


def params_sections(config: ExperimentConfig) -> dict[str, Any]:
    """The inverse of :func:`params_overrides`: ``{key: {modality: value}}`` for a whole config."""
    plain = config.to_dict()
    return {key: {config.modality: plain[key]} for key in PARAMS_KEYS}


def load(
    preset: str | Path,
    *,
    params: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> ExperimentConfig:
    """Resolve a job's config: preset, then params.yaml's sections for its modality, then overrides."""
    data = read_yaml(preset)
    modality = data.get("modality", ExperimentConfig.modality)
    if params is not None:
        data = deep_merge(data, params_overrides(read_yaml(params), modality))
    for text in overrides:
        data = deep_merge(data, parse_override(text))
    config = from_dict(ExperimentConfig, data)
    validate(config)
    return config


def validate(config: ExperimentConfig) -> None:
    """Cross-field and registry checks that the type system alone cannot express."""
    try:
        registry.check_name("modality", registry.MODALITIES, config.modality)
        registry.check_name("data.dataset", registry.DATASETS, config.data.dataset)
        registry.check_options("model.encoder", registry.ENCODERS, config.model.encoder, check_type, config.modality)
        registry.check_options("model.decoder", registry.DECODERS, config.model.decoder, check_type, config.modality)
    except registry.RegistryError as exc:
        raise ConfigError(str(exc)) from None
    t = config.train
    positive = {
        "train.epochs": t.epochs,
        "train.batch_size": t.batch_size,
        "train.num_workers": t.num_workers,
        "train.cpus_per_worker": t.cpus_per_worker,
        "train.keep_checkpoints": t.keep_checkpoints,
        "model.latent_dim": config.model.latent_dim,
        "evaluate.iwae_k": config.evaluate.iwae_k,
        "sample.n": config.sample.n,
        "data.stride": config.data.stride,
        "evaluate.posthoc_seeds": config.evaluate.posthoc_seeds,
        "evaluate.posthoc_steps": config.evaluate.posthoc_steps,
        "evaluate.anomaly_k": config.evaluate.anomaly_k,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be ≥ 1, got {value}")
    if t.batch_size % t.num_workers:
        raise ConfigError(
            f"train.batch_size ({t.batch_size}) must be divisible by train.num_workers ({t.num_workers}): "
            "each worker gets batch_size / num_workers examples"
        )
    if t.checkpoint_every_steps < 0:
        raise ConfigError(f"train.checkpoint_every_steps must be ≥ 0 (0: only at epoch ends), got {t.checkpoint_every_steps}")
    d = config.data
    if d.window is not None and d.window < 2:
        raise ConfigError(f"data.window must be ≥ 2 time steps (or null for whole series), got {d.window}")
    if not (0 <= d.val_fraction < 1 and 0 <= d.test_fraction < 1 and d.val_fraction + d.test_fraction < 1):
        raise ConfigError(f"data.val_fraction ({d.val_fraction}) and data.test_fraction ({d.test_fraction}) "
                          "must be in [0, 1) and sum to less than 1")
    if t.lr <= 0:
        raise ConfigError(f"train.lr must be > 0, got {t.lr}")
    if config.loss.beta < 0 or config.loss.free_bits < 0:
        raise ConfigError("loss.beta and loss.free_bits must be ≥ 0")
