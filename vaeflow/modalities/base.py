"""What every modality provides: a data side (prepare, load, feed the model, the serving codec) and a
task side (samples, figures, metrics). The data side never imports the task side."""

from __future__ import annotations

import abc
import dataclasses
from pathlib import Path
from typing import Any

import torch


@dataclasses.dataclass
class ModelInputs:
    """One batch as the model sees it.

    Attributes:
        x: encoder input.
        target: what the decoder's likelihood scores (e.g. binarised pixels).
        labels: class labels, if the data set has them: the condition of a conditional
            model, and the colour of latent plots.
    """

    x: Any
    target: Any
    labels: torch.Tensor | None = None


@dataclasses.dataclass
class ServingRows:
    """A serving request split into the rows the encoder can read and the rows it cannot.

    Attributes:
        x: encoder input of the readable rows, in request order; None when no row is readable
            (e.g. an empty request).
        valid: (N,) bool, one per request row; None when every row is readable by construction
            (the modality answers a whole batch or raises).
        reasons: one per request row: "" where valid, else why the row cannot be answered.
    """

    x: Any
    valid: Any = None
    reasons: list[str] = dataclasses.field(default_factory=list)

    def frame(self, values: Any) -> Any:
        """Per-row answer: the readable rows' ``values`` (an (n_valid, D) array, or a DataFrame of
        n_valid rows) scattered back to request order, NaN where a row was not readable, plus
        ``valid`` and ``reason`` columns. Without per-row validity, ``values`` as they are."""
        if self.valid is None:
            return values
        import numpy as np
        import pandas as pd

        index = np.flatnonzero(self.valid)
        if not isinstance(values, pd.DataFrame):
            values = np.asarray(values)  # (n_valid, D)
            values = pd.DataFrame(values, columns=[f"z{i}" for i in range(values.shape[1])])
        out = values.set_axis(index).reindex(range(len(self.valid)))
        return out.assign(valid=np.asarray(self.valid, dtype=bool), reason=list(self.reasons))


class ModalityData(abc.ABC):
    """The data side of a modality: raw data → processed splits → batches, and the serving codec."""

    @abc.abstractmethod
    def prepare(self, config: Any, seed: int, out_dir: Path, *, progress: bool = True) -> dict[str, Any]:
        """Fetch and verify raw data, write the processed splits into ``out_dir``; return counts.

        ``config`` is the modality's own data section."""

    @abc.abstractmethod
    def load(self, processed_dir: Path, split: str) -> torch.utils.data.Dataset:
        """One split (``train``, ``val``, ``test``) of a processed data set."""

    @abc.abstractmethod
    def input_spec(self, processed_dir: Path) -> dict[str, Any]:
        """What the model builder needs to know about the data (shapes, vocabulary, classes)."""

    @abc.abstractmethod
    def model_inputs(self, batch: Any, config: Any, *, train: bool, generator: torch.Generator | None) -> ModelInputs:
        """Turn a collated batch (already on the device) into model inputs."""

    def fixed(self, dataset: torch.utils.data.Dataset, config: Any, seed: int) -> torch.utils.data.Dataset:
        """A copy of ``dataset`` whose model inputs no longer depend on a generator (e.g. binarised once),
        so that several evaluations (ELBO, IWAE, plots) score exactly the same data."""
        return dataset

    @abc.abstractmethod
    def example_input(self, dataset: torch.utils.data.Dataset, n: int) -> Any:
        """``n`` inputs in the form the MLflow pyfunc model accepts (its signature's input example)."""

    def collate_fn(self) -> Any:
        """The DataLoader collate function; None uses torch's default."""
        return None

    def lengths(self, dataset: torch.utils.data.Dataset) -> torch.Tensor | None:
        """Each example's length where a batch costs what its longest example does (a padded
        sequence), for length-bucketed batches (``train.length_buckets``); None (the default) when
        examples have no such length, and training shuffles them plainly.

        Shapes:
            → (len(dataset),) long
        """
        return None

    def encoder_input(self, example: Any, spec: dict[str, Any]) -> Any:
        """Turn raw inputs (an ``example_input`` or what the pyfunc model receives) into the encoder's
        input; the default reads them as a float32 tensor."""
        import numpy as np

        return torch.as_tensor(np.asarray(example, dtype=np.float32))

    def serving_rows(self, example: Any, spec: dict[str, Any]) -> ServingRows:
        """A serving request as encoder input plus per-row validity; default: the whole request
        through ``encoder_input`` (a bad request fails as a whole)."""
        return ServingRows(x=self.encoder_input(example, spec))

    def predictions(self, generated: torch.Tensor, spec: dict[str, Any]) -> Any:
        """What the pyfunc model returns for generated or reconstructed data; default: the array."""
        return generated.cpu().numpy()


class TrainingMonitor(abc.ABC):
    """A measurement of the model taken during training on rank 0, every ``every`` epochs; picklable
    (it travels to the Ray workers with the job's config)."""

    every: int

    def due(self, epoch: int) -> bool:
        """Whether to measure after ``epoch`` (1-based) finished."""
        return self.every > 0 and epoch % self.every == 0

    @abc.abstractmethod
    def names(self) -> tuple[str, ...]:
        """The metric names it returns (each epoch row holds them on the epochs it is due)."""

    @abc.abstractmethod
    def __call__(self, model: Any, device: torch.device, generator: torch.Generator) -> dict[str, float]:
        """Measure ``model`` (the bare module, in eval mode for the call)."""


class ModalityTask(abc.ABC):
    """The task side of a modality: what its samples look like and how they are scored."""

    def __init__(self, data: ModalityData):
        self.data = data

    @abc.abstractmethod
    def write_samples(self, model: Any, config: Any, paths: Any, out_dir: Path,
                      generator: torch.Generator) -> dict[str, Any]:
        """Draw ``config.sample.n`` samples from the prior into ``out_dir``; return summary metrics.

        ``paths`` are the job's folders (``paths.processed``: the prepared data)."""

    @abc.abstractmethod
    def evaluation_figures(self, model: Any, dataset: torch.utils.data.Dataset, spec: dict[str, Any],
                           out_dir: Path, generator: torch.Generator) -> list[Path]:
        """Write the modality's evaluation figures into ``out_dir``; return their paths."""

    def training_monitor(self, config: Any, paths: Any) -> TrainingMonitor | None:
        """What rank 0 measures on the model at some epoch ends while it trains, beyond the family's
        loss terms (images: the VAE-GAN's FD); built on the driver, sent to the workers. Default: none."""
        return None

    def evaluation_metrics(self, model: Any, config: Any, paths: Any, out_dir: Path,
                           generator: torch.Generator, *, progress: bool = True) -> dict[str, float]:
        """Modality-specific test metrics beyond the family's own (e.g. the MOSES suite); may write
        tables and figures into ``out_dir`` (the evaluation folder, logged to MLflow). Default: none."""
        return {}


@dataclasses.dataclass(frozen=True)
class Modality:
    """What a modality package registers in ``registry.MODALITIES`` (from its ``__init__``).

    Attributes:
        name: the ``--modality`` name.
        data: its data side.
        task: its task side (built on the data side).
        data_config: its ``data`` section type (a ``vaeflow.config.DataConfig``); the config loader
            builds ``config.data`` from it, so a key it lacks is an error naming this modality.
        sample_config: its ``sample`` section type (a ``vaeflow.config.SampleConfig``).
        evaluate_config: its ``evaluate`` section type (a ``vaeflow.config.EvaluateConfig``).
        dataset_type: the class (or classes) of the sources in ``registry.DATASETS`` that this
            modality prepares; ``data.dataset`` must name one of them.
    """

    name: str
    data: ModalityData
    task: ModalityTask
    data_config: type
    sample_config: type
    evaluate_config: type
    dataset_type: type | tuple[type, ...]
