"""Plain-torch train/eval epochs, independent of Ray: testable on their own, reused by every modality."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from vaeflow.config import ExperimentConfig
from vaeflow.modalities.base import ModalityData
from vaeflow.losses import beta_at, elbo

METRICS = ("loss", "recon", "kl", "neg_elbo")


class NonFiniteLossError(FloatingPointError):
    """The loss or its gradient became NaN/inf; training stops and the last good checkpoint stays."""


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


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


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CPU or GPU when asked for; a no-op for fp32."""
    if precision == "bf16":
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


def run_epoch(
    model: nn.Module,
    loader: Iterable[Any],
    modality: ModalityData,
    config: ExperimentConfig,
    *,
    epoch: int,
    device: torch.device,
    generator: torch.Generator | None,
    optimizer: torch.optim.Optimizer | None = None,
    progress: Callable[..., Any] | None = None,
    start_step: int = 0,
    totals: dict[str, float] | None = None,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[int, dict[str, float]], None] | None = None,
    reseed: Callable[[int], torch.Generator] | None = None,
) -> dict[str, float]:
    """One pass over ``loader``; trains when an optimizer is given, else evaluates under no_grad.

    Returns the example-weighted means of loss, recon, kl and neg_elbo over all workers,
    plus the β in force at the end of the epoch.

    Mid-epoch checkpoints (training only): every ``checkpoint_every`` steps, ``on_checkpoint(step,
    totals)`` gets the running totals summed over all workers. A run resumed from such a checkpoint
    passes ``start_step`` and those ``totals`` (on one worker only). ``reseed(step)`` gives the
    generator for the steps from ``step`` on, and torch's global RNG (which ``nn.Dropout`` and word
    dropout draw from) is seeded from it at that step, so the randomness after a checkpoint never
    depends on the steps before it and a resumed epoch continues exactly.

    Raises:
        NonFiniteLossError: the loss or the gradient norm is NaN/inf (same step on every worker,
            since gradients are synchronised before the check).
    """
    train = optimizer is not None
    model.train(train)
    bare = unwrap(model)
    n_steps = len(loader) if hasattr(loader, "__len__") else None
    sums = dict.fromkeys(METRICS, 0.0) | {"n": 0.0} | (totals or {})
    if reseed is not None:
        generator = reseed(start_step)
    seed_global_rng = reseed is not None  # at the next step trained, not before: iterating the loader may draw from it
    beta = config.loss.beta
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
                frac = step / n_steps if n_steps else 0.0
                beta = beta_at(epoch + frac, beta=config.loss.beta, warmup_epochs=config.loss.warmup_epochs)
            with autocast(config.train.precision, device):
                out = model(inputs.x, inputs.labels if bare.conditional else None, target=inputs.target, generator=generator)
            # Likelihood and KL in fp32 whatever the forward precision.
            log_px_z = bare.decoder.log_prob(out.decoded.float(), inputs.target)
            kl = out.posterior.kl_standard_normal().float()
            terms = elbo(log_px_z, kl, beta=beta, free_bits=config.loss.free_bits)
            if train:
                optimizer.zero_grad(set_to_none=True)
                terms.loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                if not (torch.isfinite(grad_norm) and torch.isfinite(terms.loss)):
                    raise NonFiniteLossError(
                        f"loss became {terms.loss.item():.4g} (gradient norm {grad_norm.item():.4g}) at epoch "
                        f"{epoch + 1}, step {step + 1}; training stopped and the last good checkpoint is kept. "
                        "Lower train.lr, set train.grad_clip, or check the data for NaN/inf."
                    )
                optimizer.step()
            n = log_px_z.shape[0]
            sums["n"] += n
            for key in METRICS:
                sums[key] += getattr(terms, key).item() * n
            done = step + 1
            if train and checkpoint_every and done % checkpoint_every == 0 and (n_steps is None or done < n_steps):
                on_checkpoint(done, _reduce(dict(sums), device))
                if reseed is not None:
                    generator = reseed(done)
                    seed_global_rng = True
            if bar is not None:
                bar.update(1)
                if step % 20 == 0:
                    bar.set_description(f"{desc} loss={terms.loss.item():.2f} kl={terms.kl.item():.2f}")
    if bar is not None:
        bar.close()
    sums = _reduce(sums, device)
    total = max(sums.pop("n"), 1.0)
    return {k: v / total for k, v in sums.items()} | {"beta": beta}
