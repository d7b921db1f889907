"""The ``Family`` interface: what the training loop, Ray Train, IWAE, serving and anomaly code ask of
a model family, so that none of them reads a VAE's posterior or likelihood directly.

A family is a stateless object registered by name (``@registry.FAMILIES.register("vae")``); every
setting it needs comes from the config passed to the call. The module it builds carries the family's
name (``module.family_name``), so code that only holds a trained model finds the family again
(``family_of``).
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
from typing import Any, ClassVar

import torch
from torch import nn

from vaeflow import registry


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


@dataclasses.dataclass
class FamilyOptimizer:
    """One optimizer of a family, with an optional schedule.

    Attributes:
        name: its name in ``Objective.weights`` (and in the ``loss_<name>`` metric when a family has
            several optimizers; a family with one reports its loss as ``loss``).
        optimizer: the torch optimizer; its parameters are the ones this loss trains and clips.
        scheduler: a torch LR scheduler stepped after every optimizer step, or None.
    """

    name: str
    optimizer: torch.optim.Optimizer
    scheduler: Any = None

    @property
    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]


@dataclasses.dataclass(frozen=True)
class Objective:
    """What each optimizer minimises at one point of training.

    Attributes:
        weights: optimizer name → {term name: weight}; the loop minimises Σ weight · term for each.
        values: schedule values worth logging with the epoch (e.g. the VAE's warmed-up ``beta``).
    """

    weights: dict[str, dict[str, float]]
    values: dict[str, float] = dataclasses.field(default_factory=dict)


class Family(abc.ABC):
    """A model family: how to build the model, its objective and its inference verbs.

    Class attributes:
        score: the validation term checkpoints are selected on (lower is better); ``val_<score>``
            in the epoch rows, ``best_val_<score>`` in the train stage's metrics.
        reported: the terms logged each epoch as ``train_<term>`` / ``val_<term>``, after the
            optimizers' losses; it includes ``score``.
        summary: further validation terms the train stage reports as ``final_val_<term>``.

    The module ``build`` returns should expose ``latent_dim``, ``num_classes`` and
    ``condition_dim`` (0 when unconditional): samplers, the pyfunc model and figures read them.
    ``terms`` receives the model as the loop holds it (possibly wrapped in DDP): call the model
    itself for the forward pass, so DDP synchronises gradients, and ``unwrap(model)`` for anything
    else.
    """

    score: ClassVar[str]
    reported: ClassVar[tuple[str, ...]]
    # Further validation terms the train stage reports as ``final_val_<term>`` (besides the score).
    summary: ClassVar[tuple[str, ...]] = ()
    # How the score reads in the per-epoch log line; its name when empty.
    score_label: ClassVar[str] = ""
    # Whether ``build`` reads model.encoder / model.decoder (config validation checks them only then).
    uses_encoder_decoder: ClassVar[bool] = True
    # Whether ``sample`` takes ``length`` (series of any number of steps; the time-series sample.length).
    any_length: ClassVar[bool] = False

    # --- training -----------------------------------------------------------------------------------

    def check_config(self, config: Any) -> None:
        """Checks across config sections that only this family needs (raise ``ConfigError``); none by default."""

    @abc.abstractmethod
    def build(self, model_config: Any, input_spec: dict[str, Any]) -> nn.Module:
        """The untrained module for ``model_config`` (a ``ModelConfig``) on this data's ``input_spec``."""

    @abc.abstractmethod
    def terms(self, model: nn.Module, inputs: Any, *, config: Any, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """Named batch-mean terms (scalars) for one batch of ``ModelInputs``, in fp32.

        Runs under the loop's autocast; compute likelihoods in fp32 where precision matters."""

    @abc.abstractmethod
    def objective(self, config: Any, epoch: float | None) -> Objective:
        """The weights of the terms per optimizer at (fractional) ``epoch``; None: the full
        objective, used for validation and evaluation."""

    def optimizers(self, model: nn.Module, train_config: Any) -> list[FamilyOptimizer]:
        """Default: one Adam named ``model`` over every parameter (lr, weight_decay from ``train``)."""
        return [FamilyOptimizer("model", torch.optim.Adam(model.parameters(), lr=train_config.lr,
                                                           weight_decay=train_config.weight_decay))]

    # --- inference -----------------------------------------------------------------------------------

    @abc.abstractmethod
    def sample(self, model: nn.Module, n: int, *, labels: torch.Tensor | None = None, temperature: float = 1.0,
               generator: torch.Generator | None = None, mean: bool = True) -> Any:
        """``n`` generated examples in the decoder's output form (e.g. an image tensor): the decoder's
        mean for each latent draw, or (``mean=False``) a draw from the likelihood too (e.g. sampled
        SELFIES tokens instead of greedy ones)."""

    @abc.abstractmethod
    def encode(self, model: nn.Module, x: Any, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Deterministic latent codes of encoder inputs ``x``. Shapes: → (N, latent_dim)."""

    @abc.abstractmethod
    def decode(self, model: nn.Module, z: torch.Tensor, labels: torch.Tensor | None = None, *, mean: bool = True,
               generator: torch.Generator | None = None) -> Any:
        """The decoder's mean output for latent codes ``z``, or (``mean=False``) a draw from the
        likelihood with ``generator``. Shapes: z (N, latent_dim)."""

    def reconstruct(self, model: nn.Module, x: Any, labels: torch.Tensor | None = None) -> Any:
        """Decode the codes of ``x``: the reconstruction the pyfunc model and figures show."""
        return self.decode(model, self.encode(model, x, labels), labels)

    @property
    def has_likelihood(self) -> bool:
        """Whether the family estimates log p(x) (the evaluate stage then reports the IWAE NLL)."""
        return type(self).log_likelihood is not Family.log_likelihood

    def log_likelihood(self, model: nn.Module, inputs: Any, *, k: int,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """An estimate (or lower bound) of log p(x) per example. Shapes: → (N,)."""
        raise NotImplementedError(f"the {type(self).__name__} family has no likelihood estimate")

    def anomaly_scores(self, model: nn.Module, inputs: Any, *, k: int,
                       generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Named per-example anomaly scores (higher = more anomalous). Shapes: each (N,)."""
        raise NotImplementedError(f"the {type(self).__name__} family has no anomaly scores")


def get(name: str, module: str | None = None) -> Family:
    """The registered family ``name``, importing ``module`` first when given (the module that
    registered it, recorded where the family must be found again: Ray workers, checkpoints)."""
    if module and name not in registry.FAMILIES:
        importlib.import_module(module)
    return registry.FAMILIES.get_or_raise(name, "model.family")()


def module_of(name: str) -> str:
    """The module that registered family ``name`` (importable in another process)."""
    return registry.FAMILIES.get_or_raise(name, "model.family").__module__


def build_model(model_config: Any, input_spec: dict[str, Any]) -> nn.Module:
    """Build the model of the family ``model_config.family`` and tag it with that family."""
    family = get(model_config.family)
    model = family.build(model_config, input_spec)
    model.family_name = model_config.family
    # Kept for inference (e.g. mapping samples back to real units); not part of the state dict.
    model.input_spec = dict(input_spec)
    return model


def family_of(model: nn.Module) -> Family:
    """The family that built ``model`` (a bare model or a DDP wrapper)."""
    name = getattr(unwrap(model), "family_name", None)
    if name is None:
        raise TypeError(f"{type(unwrap(model)).__name__} was not built by a family builder "
                        "(vaeflow.models.families.build_model); it has no family_name")
    return get(name)
