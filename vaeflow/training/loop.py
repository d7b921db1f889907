"""Plain-torch train/eval epochs, independent of Ray: testable on their own, reused by every modality."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from vaeflow.config import ExperimentConfig
from vaeflow.modalities.base import ModalityData
from vaeflow.models.families import Family, FamilyOptimizer, family_of


class NonFiniteLossError(FloatingPointError):
    """The loss or its gradient became NaN/inf; training stops and the last good checkpoint stays."""


def to_device(batch: Any, device: torch.device) -> Any:
    """Move tensors (also inside tuples, lists, dicts, dataclasses or objects with ``.to``) to ``device``."""
    if isinstance(batch, torch.Tensor) or hasattr(batch, "to") and callable(batch.to):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if dataclasses.is_dataclass(batch):
        return dataclasses.replace(batch, **{f.name: to_device(getattr(batch, f.name), device) for f in dataclasses.fields(batch)})
    return batch


def seeded_generator(device: torch.device, *parts: Any) -> torch.Generator:
    """A generator on ``device`` whose seed is a stable hash of ``parts`` (seed, epoch, rank …)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)


@functools.cache
def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware: a CUDA GPU with bf16 (Ampere on), or a CPU with
    AVX512-BF16 or AMX instructions. Elsewhere torch emulates bf16, slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``train.precision`` as it runs on ``device``: "auto" becomes "bf16" where the device computes
    bf16 natively (``native_bf16``), else "fp32"; "fp32" and "bf16" stay as they are."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CPU or GPU when asked for ("auto": see ``resolve_precision``); a no-op for fp32."""
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _reduce(sums: dict[str, float], device: torch.device) -> dict[str, float]:
    """Sum per-worker totals across the process group (if any)."""
    if not (dist.is_available() and dist.is_initialized()):
        return sums
    keys = sorted(sums)
    t = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def loss_names(family: Family, config: ExperimentConfig) -> dict[str, str]:
    """Optimizer name → the metric its loss is logged as: ``loss`` for a family with one optimizer,
    ``loss_<name>`` for each of several."""
    names = list(family.objective(config, None).weights)
    return {names[0]: "loss"} if len(names) == 1 else {n: f"loss_{n}" for n in names}


def metric_names(family: Family, config: ExperimentConfig) -> tuple[str, ...]:
    """The per-epoch metrics of ``family`` (each row holds them as ``train_<m>`` and ``val_<m>``)."""
    return (*loss_names(family, config).values(), *family.reported)


def _num_examples(x: Any) -> int:
    return getattr(x, "num_graphs", None) or len(x)  # a torch-geometric Batch, or a tensor / list


def _as_family_optimizers(optimizer: Any, family: Family, config: ExperimentConfig) -> list[FamilyOptimizer] | None:
    if optimizer is None or isinstance(optimizer, list):
        return optimizer
    names = list(family.objective(config, None).weights)
    if len(names) != 1:
        raise ValueError(f"the {config.model.family} family trains {len(names)} optimizers ({', '.join(names)}); "
                         "pass the list family.optimizers(...) returns")
    return [FamilyOptimizer(names[0], optimizer)]


def run_epoch(
    model: nn.Module,
    loader: Iterable[Any],
    modality: ModalityData,
    config: ExperimentConfig,
    *,
    epoch: int,
    device: torch.device,
    generator: torch.Generator | None,
    optimizer: list[FamilyOptimizer] | torch.optim.Optimizer | None = None,
    progress: Callable[..., Any] | None = None,
    start_step: int = 0,
    totals: dict[str, float] | None = None,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[int, dict[str, float]], None] | None = None,
    reseed: Callable[[int], torch.Generator] | None = None,
) -> dict[str, float]:
    """One pass over ``loader``; trains when optimizers are given (under ``train.precision``'s
    autocast), else evaluates under no_grad, in fp32.

    The model's family (``family_of(model)``) gives the named terms of each batch and, through its
    ``objective``, the weight of each term in each optimizer's loss; this loop sums and steps them
    and never names a term. ``optimizer`` is the list ``family.optimizers(...)`` returns, or one
    torch optimizer for a family with a single one. An optimizer whose weights are all 0 at a step
    does not step (its parameters stay exactly as they are).

    Returns the example-weighted means over all workers of each optimizer's loss and the family's
    reported terms (``metric_names``), plus the family's schedule values (e.g. ``beta``) at the end
    of the epoch.

    Mid-epoch checkpoints (training only): every ``checkpoint_every`` steps, ``on_checkpoint(step,
    totals)`` gets the running totals summed over all workers. A run resumed from such a checkpoint
    passes ``start_step`` and those ``totals`` (on one worker only). ``reseed(step)`` gives the
    generator for the steps from ``step`` on, and torch's global RNG (which ``nn.Dropout`` and word
    dropout draw from) is seeded from it at that step, so the randomness after a checkpoint never
    depends on the steps before it and a resumed epoch continues exactly.

    Raises:
        NonFiniteLossError: a loss or a gradient norm is NaN/inf (same step on every worker,
            since gradients are synchronised before the check).
    """
    family = family_of(model)
    optimizers = _as_family_optimizers(optimizer, family, config)
    train = optimizers is not None
    model.train(train)
    n_steps = len(loader) if hasattr(loader, "__len__") else None
    losses = loss_names(family, config)
    sums = dict.fromkeys(metric_names(family, config), 0.0) | {"n": 0.0} | (totals or {})
    if reseed is not None:
        generator = reseed(start_step)
    seed_global_rng = reseed is not None  # at the next step trained, not before: iterating the loader may draw from it
    objective = family.objective(config, None)  # what is reported if no step is taken
    desc = f"epoch {epoch + 1}/{config.train.epochs} {'train' if train else 'val'}"
    bar = progress(total=n_steps, desc=desc) if progress else None
    clip = config.train.grad_clip if config.train.grad_clip > 0 else math.inf
    with torch.set_grad_enabled(train):
        for step, batch in enumerate(loader):
            if step < start_step:  # trained on before the checkpoint this run resumed from
                continue
            if seed_global_rng:
                # A stream of its own, derived without drawing from the generator (which would shift
                # the sampling noise of every model, with dropout or not).
                torch.manual_seed(generator.initial_seed() + 1)
                seed_global_rng = False
            batch = to_device(batch, device)
            inputs = modality.model_inputs(batch, config.data, train=train, generator=generator)
            if train:
                objective = family.objective(config, epoch + (step / n_steps if n_steps else 0.0))
            # Evaluation always in fp32: validation scores of runs at different precisions compare.
            with autocast(config.train.precision if train else "fp32", device):
                terms = family.terms(model, inputs, config=config, generator=generator)
            loss = {name: sum(w * terms[t] for t, w in objective.weights[name].items()) for name in losses}
            if train:
                for opt in optimizers:
                    opt.optimizer.zero_grad(set_to_none=True)
                # All backward passes before any step: a step changes parameters that the next
                # loss's graph still holds. Each loss reaches only its own optimizer's parameters.
                for i, opt in enumerate(optimizers):
                    if len(optimizers) == 1:
                        loss[opt.name].backward()
                    else:
                        loss[opt.name].backward(inputs=opt.parameters, retain_graph=i < len(optimizers) - 1)
                for opt in optimizers:
                    grad_norm = torch.nn.utils.clip_grad_norm_(opt.parameters, clip)
                    if not (torch.isfinite(grad_norm) and torch.isfinite(loss[opt.name])):
                        raise NonFiniteLossError(
                            f"{losses[opt.name]} became {loss[opt.name].item():.4g} (gradient norm "
                            f"{grad_norm.item():.4g}) at epoch {epoch + 1}, step {step + 1}; training stopped and the "
                            "last good checkpoint is kept. Lower train.lr, set train.grad_clip, or check the data for NaN/inf."
                        )
                for opt in optimizers:
                    # Frozen in this phase (every weight 0, e.g. the VQ-VAE while its prior trains): its
                    # zero gradients still went through backward (DDP expects every parameter's), but
                    # a step would move it anyway (Adam's momentum, weight decay).
                    if not any(objective.weights[opt.name].values()):
                        continue
                    opt.optimizer.step()
                    if opt.scheduler is not None:
                        opt.scheduler.step()
            n = _num_examples(inputs.x)
            sums["n"] += n
            for name, key in losses.items():
                sums[key] += loss[name].item() * n
            for key in family.reported:
                sums[key] += terms[key].item() * n
            done = step + 1
            if train and checkpoint_every and done % checkpoint_every == 0 and (n_steps is None or done < n_steps):
                on_checkpoint(done, _reduce(dict(sums), device))
                if reseed is not None:
                    generator = reseed(done)
                    seed_global_rng = True
            if bar is not None:
                bar.update(1)
                if step % 20 == 0:
                    shown = ", ".join(f"{k}={v.item():.2f}" for k, v in [*((losses[n], loss[n]) for n in losses),
                                                                         *((k, terms[k]) for k in family.reported[:2])])
                    bar.set_description(f"{desc} {shown}")
    if bar is not None:
        bar.close()
    sums = _reduce(sums, device)
    total = max(sums.pop("n"), 1.0)
    return {k: v / total for k, v in sums.items()} | dict(objective.values)
