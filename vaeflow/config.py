"""Typed, frozen configuration: params.yaml's section for the modality (or a preset instead), then ``--set``.

Every job is described by one :class:`ExperimentConfig`: the shared sections defined here (seed,
model, loss, train, tracking) plus the modality's own data, sample and evaluate sections, whose
types each modality declares in ``vaeflow/modalities/<m>/config.py`` and registers on its
``Modality`` (looked up through ``registry``: this module imports no modality). Its values come
from one source, ``params.yaml``'s section for the modality (what DVC tracks), or from a preset in
``configs/`` given instead, then ``--set key=value`` overrides. Unknown keys (including another
modality's), wrong types and bad values raise :class:`ConfigError` before any work starts, with a
message that names the key and what is allowed. See docs/configuration.md.
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


def require(ok: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``ok`` (for the sections' own checks)."""
    if not ok:
        raise ConfigError(message)


def require_positive(section: str, **values: int) -> None:
    """Every value is ≥ 1 (counts, sizes, steps)."""
    for key, value in values.items():
        require(value >= 1, f"{section}.{key} must be ≥ 1, got {value}")


# --- the modality sections' common parts ------------------------------------------------------------
# Each modality declares its own data, sample and evaluate types in vaeflow/modalities/<m>/config.py
# (subclasses of these), and registers them on its Modality; ExperimentConfig takes the modality's.


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What every modality's data section has: where its data come from.

    ``source: dataset`` prepares the registered public data set named by ``dataset``;
    ``source: files`` reads your own file (or folder) at ``path`` instead (docs/<modality>.md lists
    the formats). Under DVC, keep that file in ``data/raw/<modality>/`` and ``dvc add`` it: that
    folder is a dependency of the ``prepare`` stage, so a changed file reruns it.
    """

    dataset: str = ""
    source: Literal["dataset", "files"] = "dataset"
    path: str | None = None

    def __post_init__(self) -> None:
        require(self.source != "files" or bool(self.path),
                "data.source is files but data.path is not set; set data.path to your file, e.g. "
                "data/raw/<modality>/<file>")


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """What every modality's sample section has (read by its task's ``write_samples``)."""

    n: int = 64
    # Scales the prior's standard deviation; 1.0 samples the model's own prior.
    temperature: float = 1.0

    def __post_init__(self) -> None:
        require_positive("sample", n=self.n)
        require(self.temperature > 0, f"sample.temperature must be > 0, got {self.temperature}")


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """What every modality's evaluate section has (read by ``stages.evaluate``)."""

    # Importance samples for the IWAE bound on test NLL (Burda et al. 2016).
    iwae_k: int = 1000
    # Test examples the IWAE NLL is computed on; None uses the whole test split.
    iwae_examples: int | None = None
    batch_size: int = 256

    def __post_init__(self) -> None:
        require_positive("evaluate", iwae_k=self.iwae_k, batch_size=self.batch_size)
        if self.iwae_examples is not None:
            require_positive("evaluate", iwae_examples=self.iwae_examples)


# --- the shared sections ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VAEGANConfig:
    """``model.vaegan``: the VAE-GAN family's discriminator and loss weights (Larsen et al. 2016,
    https://arxiv.org/abs/1512.09300; docs/image.md, "VAE-GAN"). Read by ``model.family: vaegan`` only."""

    # γ: weight of the feature-space reconstruction against the GAN loss in the decoder's loss.
    gamma: float = 1.0
    # Channels of the discriminator's first conv block; each further block doubles them.
    width: int = 32
    # Conv blocks of the discriminator, each halving height and width (28 → 14 → 7 → 3 for 3).
    layers: int = 3
    # The block l (1-based) whose output Dis_l(x) is the space the reconstruction is measured in.
    feature_layer: int = 3
    # Weight of the pixel-space reconstruction −log p(x | z) in the encoder's and decoder's losses:
    # an anchor while the discriminator's features are still uninformative; 0: the paper's objective.
    pixel_weight: float = 1.0
    # The discriminator's learning rate; None: train.lr (the encoder and decoder always use train.lr).
    discriminator_lr: float | None = None
    # Every this many epochs, the FD of fd_samples prior samples against the validation images in
    # the classifier stage's features is logged as val_fd (mode collapse and instability show there);
    # 0: never. Needs the classifier stage's output (dvc repro runs it before train@image).
    fd_every_epochs: int = 0
    # Samples per val_fd (fewer than evaluate's FD: cheaper, and a little higher, since FD is biased upwards in n).
    fd_samples: int = 2000

    def __post_init__(self) -> None:
        require_positive("model.vaegan", width=self.width, layers=self.layers)
        require(1 <= self.feature_layer <= self.layers,
                f"model.vaegan.feature_layer must be between 1 and model.vaegan.layers ({self.layers}), "
                f"got {self.feature_layer}")
        require(self.gamma >= 0 and self.pixel_weight >= 0,
                f"model.vaegan.gamma and model.vaegan.pixel_weight must be ≥ 0, got {self.gamma} and {self.pixel_weight}")
        require(self.discriminator_lr is None or self.discriminator_lr > 0,
                f"model.vaegan.discriminator_lr must be > 0 or null (train.lr), got {self.discriminator_lr}")
        require(self.fd_every_epochs >= 0, f"model.vaegan.fd_every_epochs must be ≥ 0 (0: never), got {self.fd_every_epochs}")
        require(self.fd_samples >= 2, f"model.vaegan.fd_samples must be ≥ 2, got {self.fd_samples}")


@dataclasses.dataclass(frozen=True)
class VQConfig:
    """``model.vq``: the VQ-VAE family's codebook and code prior (read by ``model.family: vqvae`` only).

    Each code has ``model.latent_dim`` dimensions (D); docs/image.md explains the two phases.
    """

    # K, the number of codes in the codebook.
    codebook_size: int = 128
    # Weight of the commitment term ‖z_e − sg[e]‖² (van den Oord et al. 2017 use 0.25 throughout).
    beta: float = 0.25
    # Update the codebook with exponential moving averages (Razavi et al. 2019) instead of its gradient.
    ema: bool = False
    # EMA decay of the codes' counts and sums (read when ema is true).
    decay: float = 0.99
    # A code no worker has picked for this many training steps is moved onto an encoder output; 0: never.
    restart_after_steps: int = 100
    # Epochs before this one train the VQ-VAE; from it on the PixelCNN prior trains on its frozen codes.
    prior_start_epoch: int = 5
    # Width and residual blocks of the PixelCNN prior over the code grid.
    prior_channels: int = 64
    prior_layers: int = 4

    def __post_init__(self) -> None:
        require(self.codebook_size >= 2, f"model.vq.codebook_size must be ≥ 2, got {self.codebook_size}")
        require(self.beta >= 0, f"model.vq.beta must be ≥ 0, got {self.beta}")
        require(0 < self.decay < 1, f"model.vq.decay must be in (0, 1), e.g. 0.99; got {self.decay}")
        require(self.restart_after_steps >= 0,
                f"model.vq.restart_after_steps must be ≥ 0 (0: never restart), got {self.restart_after_steps}")
        require_positive("model.vq", prior_start_epoch=self.prior_start_epoch, prior_channels=self.prior_channels,
                         prior_layers=self.prior_layers)


@dataclasses.dataclass(frozen=True)
class VRNNConfig:
    """``model.vrnn``: the sizes of the VRNN family (Chung et al. 2015); z_t has ``model.latent_dim``."""

    # Size of the GRU state h_t that carries the past.
    hidden: int = 64
    # Width of the feature extractors φx(x_t), φz(z_t) and of the prior, posterior and decoder MLPs.
    feature: int = 32
    # Initial σ of the Gaussian likelihood in scaled units (as the sequence decoders' scale_init).
    scale_init: float = 0.1

    def __post_init__(self) -> None:
        require_positive("model.vrnn", hidden=self.hidden, feature=self.feature)
        require(self.scale_init > 0, f"model.vrnn.scale_init must be > 0, got {self.scale_init}")


# A family's own section of ``model`` → the family that reads it.
FAMILY_SECTIONS = {"vaegan": "vaegan", "vq": "vqvae", "vrnn": "vrnn"}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    latent_dim: int = 16
    encoder: ModuleSpec = ModuleSpec("conv2d")
    decoder: ModuleSpec = ModuleSpec("conv2d")
    # Class-conditional VAE (Sohn et al. 2015): labels feed both encoder and decoder.
    conditional: bool = False
    # The model family (registry.FAMILIES): it owns the objective, optimizers and inference verbs.
    family: str = "vae"
    # Read by the vaegan family only (images).
    vaegan: VAEGANConfig = VAEGANConfig()
    # The VQ-VAE family's codebook and prior (images).
    vq: VQConfig = VQConfig()
    # Read by the vrnn family only (time series).
    vrnn: VRNNConfig = VRNNConfig()

    def __post_init__(self) -> None:
        # Settings another family would silently ignore.
        for section, family in FAMILY_SECTIONS.items():
            value = getattr(self, section)
            require(self.family == family or value == type(value)(),
                    f"model.{section} is read by model.family {family} only (this job's family is {self.family}); "
                    f"remove the model.{section} settings or set model.family: {family}")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    # β-VAE weight on the KL term (Higgins et al. 2017); 1.0 is the plain ELBO.
    beta: float = 1.0
    # Linear KL warm-up from 0 to beta over this many epochs (Bowman et al. 2016); 0 disables it.
    warmup_epochs: int = 0
    # Free bits in nats per latent dimension (Kingma et al. 2016); 0 disables it.
    free_bits: float = 0.0

    def __post_init__(self) -> None:
        require(self.beta >= 0 and self.free_bits >= 0, "loss.beta and loss.free_bits must be ≥ 0")
        require(self.warmup_epochs >= 0, f"loss.warmup_epochs must be ≥ 0 (0: no warm-up), got {self.warmup_epochs}")


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
    # Length-bucketed training batches, for modalities whose examples have a padded length (molecules:
    # SELFIES tokens): each epoch's shuffled examples are sorted by length within buckets of this many
    # global batches, so a batch pads to little more than its own length; 0: plain shuffling. Batches
    # still depend on (seed, epoch, rank) alone, so resume stays exact. Ignored by other modalities.
    # Off in every preset: 1.3–1.5× the molecules/s, but batches of one length band trained a worse
    # model in the same epochs (validation −ELBO +1.2–1.9 nats on 8k MOSES, seed spread 0.2; see
    # bench/results/molecule_throughput_quality_8k.json). Worth it only where time, not epochs, is fixed.
    length_buckets: int = 0
    # bf16 autocast for training forward passes (GPU or CPU); the loss is always reduced in fp32, and
    # validation and evaluate run in fp32, so runs at different precisions score alike. "auto": bf16
    # where the worker's device computes it natively (a CUDA GPU with bf16; a CPU with AVX512-BF16 or
    # AMX), fp32 elsewhere (emulated bf16 is slower than fp32); each epoch row records the choice as
    # `autocast_bf16`. On such a CPU the molecule model trains 1.3-1.7x faster at the same
    # validation -ELBO (BENCHMARKS §13).
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    # Ray Train results and checkpoints; a relative path is taken from the working directory.
    storage_path: str = "ray_results"
    # Checkpoints kept by validation loss (the latest is always kept for resume).
    keep_checkpoints: int = 2
    # Also checkpoint every N training steps inside an epoch (for long epochs); 0: at epoch ends only.
    checkpoint_every_steps: int = 0
    # Worker-group restarts Ray Train attempts before the job fails.
    max_failures: int = 0
    # A training-time budget: the run stops after the first epoch that ends past it (every worker
    # at the same epoch) and keeps its checkpoints; null trains all train.epochs. Counted from the
    # first epoch of this start: a resumed run (a worker restart, the same command again) gets the
    # budget anew, so running the command again continues towards train.epochs.
    time_limit_minutes: float | None = None

    def __post_init__(self) -> None:
        require_positive("train", epochs=self.epochs, batch_size=self.batch_size, num_workers=self.num_workers,
                         cpus_per_worker=self.cpus_per_worker, keep_checkpoints=self.keep_checkpoints)
        require(self.batch_size % self.num_workers == 0,
                f"train.batch_size ({self.batch_size}) must be divisible by train.num_workers ({self.num_workers}): "
                "each worker gets batch_size / num_workers examples")
        require(self.length_buckets >= 0,
                f"train.length_buckets must be ≥ 0 (global batches per length bucket; 0: plain shuffling), got {self.length_buckets}")
        require(self.checkpoint_every_steps >= 0,
                f"train.checkpoint_every_steps must be ≥ 0 (0: only at epoch ends), got {self.checkpoint_every_steps}")
        require(self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        require(self.max_failures >= 0, f"train.max_failures must be ≥ 0, got {self.max_failures}")
        require(self.time_limit_minutes is None or self.time_limit_minutes > 0,
                f"train.time_limit_minutes must be > 0 or null (no limit), got {self.time_limit_minutes}")


# MLflow's REST client reads these from the environment; vaeflow never stores or logs their values.
CREDENTIAL_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


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
    # How long a job waits for an unreachable tracking server before it stops (checkpoints kept; the
    # same command resumes into the same run). Epoch metrics are kept meanwhile and sent once it is back.
    outage_limit_s: float = 600.0

    def __post_init__(self) -> None:
        # Credentials in the URI would reach params, run.json and printed configs.
        netloc = self.uri.split("://", 1)[1].split("/", 1)[0] if "://" in self.uri else ""
        require("@" not in netloc,
                "tracking.uri must not hold credentials (user:password@host): remove them and set "
                "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the environment")


# The sections whose type the modality declares (its Modality's data_config, sample_config, evaluate_config).
MODALITY_SECTIONS = ("data", "sample", "evaluate")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    """One job: the shared sections plus the modality's own data, sample and evaluate sections.

    Build it with :func:`from_dict` (or :func:`load`), which takes the section types and their
    defaults from the modality registered under ``modality``.
    """

    modality: str = "image"
    seed: int = 0
    data: DataConfig
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    sample: SampleConfig
    evaluate: EvaluateConfig
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


def modality_sections(modality: Any) -> dict[str, type]:
    """The data / sample / evaluate section types the modality registered (config → registry only)."""
    if not isinstance(modality, str):
        raise ConfigError(f"modality: expected a modality name, got {modality!r}")
    try:
        m = registry.MODALITIES.get_or_raise(modality, "modality")
    except registry.RegistryError as exc:
        raise ConfigError(str(exc)) from None
    return {section: getattr(m, f"{section}_config") for section in MODALITY_SECTIONS}


def from_dict(cls: type, data: Mapping[str, Any] | None, prefix: str = "", *, modality: str | None = None) -> Any:
    """Build the frozen dataclass ``cls`` from ``data``; unknown keys and wrong types raise.

    For :class:`ExperimentConfig` the data, sample and evaluate sections take the types (and, where
    left out, the defaults) of the modality that ``data["modality"]`` names. ``modality`` (set for
    those sections) names the modality in the unknown-key message.
    """
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    own: dict[str, type] = {}
    if cls is ExperimentConfig:
        own = modality_sections(data.get("modality", ExperimentConfig.modality))
        hints |= own
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"for modality {modality}" if modality else f"in {prefix.rstrip('.') or 'config'}"
        raise ConfigError(f"unknown key {prefix}{unknown[0]!s} {where}; allowed keys: {', '.join(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        tp = hints[name]
        if tp is ModuleSpec:
            kwargs[name] = _module_spec(value, key)
        elif dataclasses.is_dataclass(tp):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{key}: expected a mapping of {tp.__name__} keys, got {value!r}")
            section_of = data.get("modality", ExperimentConfig.modality) if name in own else None
            kwargs[name] = from_dict(tp, value, prefix=f"{key}.", modality=section_of)
        else:
            kwargs[name] = check_type(value, tp, key)
    for name, tp in own.items():  # a section left out: the modality's defaults
        kwargs.setdefault(name, tp())
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


def params_section(params: Mapping[str, Any], modality: str, source: str | Path = "params.yaml") -> dict[str, Any]:
    """Modality ``modality``'s section of params.yaml (``image: {seed: …, data: {…}, …}``) as a config dict."""
    registry.load_plugins()
    known = sorted(registry.MODALITIES)
    stray = sorted(set(params) - set(known))
    if stray:
        raise ConfigError(f"{source}: unknown section {stray[0]!r}; it holds one section per modality "
                          f"({', '.join(known)})")
    section = params.get(modality)
    if section is None:
        raise ConfigError(f"{source} has no {modality} section; write one with "
                          f"vaeflow params --modality {modality} --preset configs/{modality}/quick.yaml")
    if not isinstance(section, Mapping):
        raise ConfigError(f"{source}: {modality} must be a mapping of config sections (seed, data, model, …)")
    if "modality" in section:
        raise ConfigError(f"{source}: {modality}.modality is implied by the section's name; remove it")
    return {"modality": modality, **section}


def params_entry(config: ExperimentConfig) -> dict[str, Any]:
    """The inverse of :func:`params_section`: the config as params.yaml's section for its modality."""
    plain = config.to_dict()
    del plain["modality"]
    return plain


def resolve(data: Mapping[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """A config dict, then ``--set`` overrides on top: typed, validated."""
    for text in overrides:
        override = parse_override(text)
        if "modality" in override:
            raise ConfigError("modality cannot be set with --set; pass --modality (and a preset of that modality)")
        data = deep_merge(data, override)
    config = from_dict(ExperimentConfig, data)
    validate(config)
    return config


def load(preset: str | Path, *, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """A preset file (a whole config holding ``modality:``), then ``--set`` overrides."""
    data = read_yaml(preset)
    if "modality" not in data:
        raise ConfigError(f"{preset} names no modality; a preset starts with e.g. modality: image")
    return resolve(data, overrides)


def load_params(params: str | Path, modality: str, *, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Modality ``modality``'s section of params.yaml (what DVC tracks), then ``--set`` overrides."""
    return resolve(params_section(read_yaml(params), modality, params), overrides)


def validate(config: ExperimentConfig) -> None:
    """Checks that need the registries (each section checks its own values when it is built)."""
    try:
        m = registry.MODALITIES.get_or_raise(config.modality, "modality")
        registry.check_name("model.family", registry.FAMILIES, config.model.family)
        registry.FAMILIES[config.model.family]().check_config(config)
        if registry.FAMILIES[config.model.family].uses_encoder_decoder:  # a family with networks of its own (the VRNN) reads neither
            registry.check_options("model.encoder", registry.ENCODERS, config.model.encoder, check_type, config.modality)
            registry.check_options("model.decoder", registry.DECODERS, config.model.decoder, check_type, config.modality)
    except registry.RegistryError as exc:
        raise ConfigError(str(exc)) from None
    # One DATASETS registry serves every modality: only this modality's kind of source is allowed.
    own = sorted(name for name, source in registry.DATASETS.items() if isinstance(source, m.dataset_type))
    require(config.data.source == "files" or config.data.dataset in own,
            f"data.dataset: unknown {config.modality} data set {config.data.dataset!r}; allowed: {', '.join(own)}")
    require_positive("model", latent_dim=config.model.latent_dim)
