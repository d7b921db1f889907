"""vaeflow against pythae: the same conv VAE on dynamically binarised Fashion-MNIST, trained by each.

What it measures, for each trainer: test NLL by IWAE and test −ELBO (one estimator, vaeflow's, applied
to both trained models), wall time per training epoch (median over the steady-state epochs, i.e. all
but the first) and in total, the seconds spent outside the training epochs (``overhead_s``: the
trainer's own training wall time, from before its data loading or MLflow run to the end of training,
minus the sum of its epoch times, so validation, checkpoints, Ray start-up and the worker group count
here; ``overhead_process_s``: the same from the spawned process's start to its exit, i.e. also
imports and shutdown), CPU seconds of the whole process tree, and peak memory of the trainer's whole
process tree (the root process and every descendant, listed with psutil's ``children(recursive=True)``
every 0.2 s):

  * **peak summed PSS** (the headline figure): the ``Pss:`` line of ``/proc/<pid>/smaps_rollup`` of
    every process in the tree, summed per sample, peak over samples. PSS divides each shared page
    among the processes that map it, so the shared libraries and the shared-memory object store that
    Ray's ~28 processes all map are counted once in total, not once per process;
  * peak summed RSS, kept for comparison with the earlier figures (it counts shared pages once per
    process, so it overstates a many-process tree);
  * for vaeflow also the Ray Train worker's own peak PSS and RSS, since Ray's daemons add a fixed cost.

Both trees are sampled by one thread of the parent, at niceness 19 so that it takes no CPU the trainers
want (its CPU seconds are in the JSON: reading smaps_rollup walks each process's page tables). Pages a
trainer shares with that parent (the torch libraries both map) are split with it too, which lowers
each tree's PSS by at most its file-backed part (``peak_pss_tree_parts_mb.pss_file``, tens of MB).

Protocol:
  1. ``vaeflow.stages.prepare`` with ``configs/image/quick.yaml`` writes the data into a temporary
     project folder: Fashion-MNIST's 60k training images split into 55k train / 5k validation
     (seeded), and the 10k test images (uint8).
  2. One model definition: vaeflow's ``conv2d`` encoder and decoder built by the family's
     ``build_model`` (the call vaeflow's worker makes) from the quick preset (latent 16), after
     ``torch.manual_seed(seed)`` with the same training seed, so both trainers start from identical
     weights. With ``--seeds S1 S2 …`` each seed trains both trainers once: the seed sets the initial
     weights, the shuffling and noise streams and the validation binarisation of both; the data split
     and the test set's binarisation and IWAE streams stay the preset's (``seed: 0``), so every model
     of every seed is scored on the same binarised test images with the same random streams.
  3. pythae: ``pythae.models.VAE`` (``reconstruction_loss="bce"``) whose ``BaseEncoder`` /
     ``BaseDecoder`` wrap those two modules (the decoder wrapper returns ``sigmoid(logits)``, as
     pythae's BCE expects probabilities), trained by ``pythae.trainers.BaseTrainer`` with Adam, the same
     lr, batch size and epochs, in its own process with ``torch.set_num_threads(cpus_per_worker)``.
  4. vaeflow: its real training path, ``vaeflow.training.ray.fit`` inside an MLflow run (temporary
     SQLite tracking store and Ray storage), on a private local Ray cluster with ``num_workers=1``
     and ``cpus_per_worker=2``, β = 1, no KL warm-up, no free bits, no gradient clipping, in its own
     process.
  5. Each trainer keeps its best epoch by validation −ELBO (pythae's ``eval_dataset`` is vaeflow's
     validation split, binarised once with the seed). Its weights are loaded into a vaeflow ``VAE``
     (pythae's ``encoder.net.*`` / ``decoder.net.*`` keys map onto ``encoder.*`` / ``decoder.*``; the
     sigmoid lives in the wrapper, so the inner decoder's output is already the Bernoulli logits that
     vaeflow's likelihood takes) and scored on the test set binarised once with the seed:
     −ELBO on all test images, IWAE NLL with k samples on the first ``--test-examples`` ones
     (``vaeflow.training.likelihood.iwae_nll``; both models see the same random streams).

Rounds and what is paired: the trainers run one after the other. Each seed gets ``--repeats`` R
rounds (default 1), and over all rounds (seed by seed) the trainers take turns going first, so with
``--seeds 0 1 2`` the orders are pythae→vaeflow, vaeflow→pythae, pythae→vaeflow. Time and memory ratios
are the median of the per-round ratios; a seed's last round's models are scored, right after that
seed's rounds. For the NLL the script reports per seed both trainers' test NLL and −ELBO and the
paired difference vaeflow − pythae (with its standard error over the test images), then over seeds
the mean difference, its standard deviation and standard error over seeds (each seed one paired
observation) and, against it, the seed-to-seed standard deviation of each trainer's NLL; and the
standard error over test images of the per-image difference averaged over the seeds.

    python bench/pythae_compare.py --epochs 5 --k 1000 --test-examples 1000     # ~10–15 min on 2 idle cores
    python bench/pythae_compare.py --epochs 3 --k 1000 --test-examples 500 --repeats 3
    python bench/pythae_compare.py --epochs 10 --seeds 0 1 2 --k 1000 --test-examples 500   # ~40–60 min

On a machine that other jobs load (more runnable threads than cores), two torch threads per trainer
stall each other (a step took 1.6–2 s instead of 0.7 s with one thread): there, run the seeds side by
side with ``--cpus 1``, one ``--seeds S --out seedS.json`` each, and join them with
``--combine seed0.json seed1.json seed2.json --out …`` (per-seed figures copied, statistics over seeds
recomputed); their times then mean nothing, their NLL, −ELBO and memory still do.

Known differences between the two setups (also written to the JSON):
  * Dynamic binarisation: vaeflow draws fresh Bernoulli pixels per batch; pythae's trainer takes a
    Dataset, so it gets a custom ``BaseDataset`` that keeps uint8 images and draws fresh pixels per
    item on every access (the same distribution; a plain ``BaseDataset`` would hold one fixed float32
    binarisation, 4× the memory, and overfit to it).
  * Batches: vaeflow drops the last incomplete batch (``DistributedSampler(drop_last=True)``), pythae
    keeps it (one extra step per epoch). Shuffling and reparameterisation noise come from different
    random streams.
  * Likelihood numerics: pythae computes BCE on ``sigmoid(logits)`` (log clamped at −100), vaeflow
    on logits; the same function in exact arithmetic.
  * vaeflow also computes the gradient norm every step (its NaN/inf guard), writes a checkpoint per
    epoch and logs epoch metrics to MLflow; pythae keeps a deep copy of the best model in memory and
    writes it once at the end. Both validate every epoch (not counted in the per-epoch time).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as `python bench/pythae_compare.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import median, print_table, run_monitored, write_json  # noqa: E402
from vaeflow import config as cfg  # noqa: E402
from vaeflow import registry, stages  # noqa: E402
from vaeflow.models import families  # noqa: E402
from vaeflow.models.vae import VAE, build_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs/image/quick.yaml"
MISSING = "pythae is not installed: pip install --no-deps pythae==0.1.2 imageio (benchmark only; its deps pin a useless dataclasses backport)"

DIFFERENCES = [
    "data: both train on vaeflow's 55k training split and validate on its 5k validation split "
    "(the 60k Fashion-MNIST training images, seeded split); best epoch by validation -ELBO on both sides",
    "dynamic binarisation: vaeflow per batch; pythae through a custom BaseDataset that draws fresh pixels "
    "per item from uint8 images (same distribution; pythae's stock BaseDataset would fix one float32 draw)",
    "last incomplete batch: dropped by vaeflow, kept by pythae (one extra step per epoch)",
    "random streams (shuffling, reparameterisation noise) differ; initial weights are identical",
    "likelihood numerics: pythae BCE on sigmoid(logits) with log clamped at -100, vaeflow on logits",
    "vaeflow computes the gradient norm each step (NaN/inf guard), checkpoints every epoch and logs to "
    "MLflow; pythae deep-copies the best model in memory and saves once at the end",
    "vaeflow runs on a private local Ray cluster (1 worker, cpus_per_worker threads); pythae in one "
    "process with the same number of torch threads",
]


@dataclasses.dataclass(frozen=True)
class Job:
    """What a trainer process needs: the resolved config (as a dict), the data and its work folder."""

    config: dict[str, Any]
    processed: str
    workdir: str
    round: int = 0  # global round index; names vaeflow's Ray Train run (a finished run of the same name would be
    # resumed, not retrained), the log and the model files


# --- pythae side -------------------------------------------------------------------------------------


def _pythae_classes() -> tuple[type, type, type]:
    """The pythae wrappers around vaeflow's modules, and the dynamically binarised dataset.

    Defined lazily so that the script fails with one clear line where pythae is missing.
    """
    from pythae.data.datasets import BaseDataset, DatasetOutput
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    class WrappedEncoder(BaseEncoder):
        """A vaeflow encoder as a pythae encoder: (mu, logvar) → (embedding, log_covariance)."""

        def __init__(self, net: torch.nn.Module):
            BaseEncoder.__init__(self)
            self.net = net

        def forward(self, x: torch.Tensor) -> ModelOutput:
            out = self.net(x)
            return ModelOutput(embedding=out.mu, log_covariance=out.logvar)

    class WrappedDecoder(BaseDecoder):
        """A vaeflow Bernoulli decoder as a pythae decoder: pythae's BCE takes probabilities, not logits."""

        def __init__(self, net: torch.nn.Module):
            BaseDecoder.__init__(self)
            self.net = net

        def forward(self, z: torch.Tensor) -> ModelOutput:
            return ModelOutput(reconstruction=torch.sigmoid(self.net(z).params))

    class BinarizedImages(BaseDataset):
        """uint8 images as pythae items; with a generator, fresh Bernoulli pixels on every access.

        Args:
            images: uint8 images in [0, 255].
            generator: draws the binarisation per access (dynamic); None: the images are already
                {0, 255} and are only scaled to {0, 1}.

        Shapes:
            images: (N, C, H, W) → item ``data``: (C, H, W) float32
        """

        def __init__(self, images: torch.Tensor, generator: torch.Generator | None):
            self.images = images
            self.labels = torch.zeros(len(images))
            self.generator = generator

        def __len__(self) -> int:
            return len(self.images)

        def __getitem__(self, index: int) -> DatasetOutput:
            x = self.images[index].float() / 255.0
            if self.generator is not None:
                x = torch.bernoulli(x, generator=self.generator)
            return DatasetOutput(data=x, labels=self.labels[index])

    return WrappedEncoder, WrappedDecoder, BinarizedImages


def pythae_model(model: VAE) -> Any:
    """A ``pythae.models.VAE`` sharing the encoder and decoder modules of a vaeflow ``VAE``."""
    from pythae.models import VAE as PythaeVAE
    from pythae.models import VAEConfig

    enc, dec, _ = _pythae_classes()
    spec = model.input_spec
    pconfig = VAEConfig(input_dim=(spec["channels"], spec["height"], spec["width"]), latent_dim=model.latent_dim,
                        reconstruction_loss="bce")
    return PythaeVAE(pconfig, encoder=enc(model.encoder), decoder=dec(model.decoder))


def vaeflow_state_from_pythae(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """pythae's state dict of a wrapped model → the vaeflow ``VAE`` state dict (same tensors)."""
    out = {}
    for key, value in state.items():
        part, net, rest = key.split(".", 2)
        if part not in ("encoder", "decoder") or net != "net":
            raise KeyError(f"unexpected key {key!r} in pythae's state dict; expected encoder.net.* or decoder.net.*")
        out[f"{part}.{rest}"] = value
    return out


def _train_pythae(job: Job) -> dict[str, Any]:
    from pythae.trainers import BaseTrainer, BaseTrainerConfig
    from pythae.trainers.training_callbacks import TrainingCallback

    config = cfg.from_dict(cfg.ExperimentConfig, job.config)
    t = config.train
    torch.set_num_threads(t.cpus_per_worker)  # the same threads as vaeflow's one worker
    modality = registry.MODALITIES.get_or_raise(config.modality).data
    processed = Path(job.processed)
    _, _, images = _pythae_classes()
    started = time.perf_counter()
    train = images(modality.load(processed, "train").x, torch.Generator().manual_seed(config.seed))
    val = images(modality.fixed(modality.load(processed, "val"), config.data, config.seed).x, None)

    class Timer(TrainingCallback):
        """Training time per epoch (validation excluded, as in vaeflow's epoch_time_s) and the val loss."""

        def __init__(self) -> None:
            self.start, self.rows = 0.0, []

        def on_train_step_begin(self, training_config: Any, **kwargs: Any) -> None:
            self.start = time.perf_counter()  # called once per epoch, before the first batch

        def on_eval_step_begin(self, training_config: Any, **kwargs: Any) -> None:
            self.rows.append({"epoch_time_s": time.perf_counter() - self.start})

        def on_log(self, training_config: Any, logs: dict[str, float], **kwargs: Any) -> None:
            self.rows[-1] |= {"train_loss": float(logs["train_epoch_loss"]), "val_neg_elbo": float(logs["eval_epoch_loss"])}

    torch.manual_seed(config.seed)  # the same initial weights as vaeflow's worker: the same seed and builder
    model = pythae_model(families.build_model(config.model, modality.input_spec(processed)))
    timer = Timer()
    trainer = BaseTrainer(
        model=model, train_dataset=train, eval_dataset=val, callbacks=[timer],
        training_config=BaseTrainerConfig(
            output_dir=str(Path(job.workdir) / "pythae"), num_epochs=t.epochs, learning_rate=t.lr,
            per_device_train_batch_size=t.batch_size, per_device_eval_batch_size=t.batch_size,
            optimizer_cls="Adam", seed=config.seed, no_cuda=True,
        ),
    )
    trainer.train()
    total = time.perf_counter() - started
    saved = torch.load(Path(trainer.training_dir) / "final_model" / "model.pt", weights_only=True)
    model_file = Path(job.workdir) / f"pythae_vaeflow_state_{job.round}.pt"
    torch.save(vaeflow_state_from_pythae(saved["model_state_dict"]), model_file)
    vals = [r["val_neg_elbo"] for r in timer.rows]
    return {"history": timer.rows, "total_s": total, "best_epoch": 1 + vals.index(min(vals)),
            "model_file": str(model_file)}


# --- vaeflow side ------------------------------------------------------------------------------------


def _train_vaeflow(job: Job) -> dict[str, Any]:
    import ray

    from vaeflow import tracking
    from vaeflow.training import checkpoint
    from vaeflow.training.ray import fit, init_ray

    config = cfg.from_dict(cfg.ExperimentConfig, job.config)
    os.environ.pop("RAY_ADDRESS", None)  # always a private cluster, so its daemons are in this process tree
    started = time.perf_counter()
    tags = tracking.lineage_tags(config, job.processed)
    name = f"bench-pythae-{job.round}"
    run_id = tracking.start_run(config, tags, run_name=name)  # as stages.train: one MLflow run
    mlflow_s = time.perf_counter() - started
    init_ray()  # what fit() does first; timed on its own
    ray_s = time.perf_counter() - started - mlflow_s
    result = fit(config, job.processed, run_name=name, run_id=run_id, progress=False)
    total = time.perf_counter() - started
    tracking.client(config.tracking).set_terminated(run_id, "FINISHED")
    ray.shutdown()
    model_file = Path(job.workdir) / f"vaeflow_state_{job.round}.pt"
    best = checkpoint.load(result.best)
    torch.save(best["model"], model_file)
    return {"history": result.history, "total_s": total, "mlflow_setup_s": mlflow_s, "ray_start_s": ray_s,
            "best_epoch": int(best["epoch"]), "model_file": str(model_file)}


def _train_loop(job: Job) -> dict[str, Any]:
    """vaeflow's training epoch without Ray: the worker's loader, model, optimizer and epoch function,
    with a validation pass and a checkpoint per epoch, in one process (``--with-loop``). Timing only:
    it splits vaeflow / pythae into vaeflow's loop against pythae's and Ray's part."""
    from vaeflow.models import families
    from vaeflow.training import checkpoint
    from vaeflow.training.batching import train_loader
    from vaeflow.training.loop import run_epoch, seeded_generator

    from vaeflow.malloc import keep_freed_memory

    config = cfg.from_dict(cfg.ExperimentConfig, job.config)
    t = config.train
    torch.set_num_threads(t.cpus_per_worker)  # as the worker does
    keep_freed_memory()
    modality = registry.MODALITIES.get_or_raise(config.modality).data
    processed = Path(job.processed)
    started = time.perf_counter()
    train_ds, val_ds = modality.load(processed, "train"), modality.load(processed, "val")
    torch.manual_seed(config.seed)
    model = families.build_model(config.model, modality.input_spec(processed))
    optimizers = families.get(config.model.family).optimizers(model, t)
    loader, sampler = train_loader(train_ds, modality, config, per_worker=t.batch_size, world=1, rank=0)
    val_loader = torch.utils.data.DataLoader(val_ds, batch_size=t.batch_size, collate_fn=modality.collate_fn())
    device, rows = torch.device("cpu"), []
    for epoch in range(t.epochs):
        sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        run_epoch(model, loader, modality, config, epoch=epoch, device=device, optimizer=optimizers,
                  generator=None)  # as the worker calls it: each step draws from a stream seeded by the step
        seconds = time.perf_counter() - t0
        val = run_epoch(model, val_loader, modality, config, epoch=epoch, device=device,
                        generator=seeded_generator(device, config.seed, "val"))
        checkpoint.save(Path(job.workdir) / f"loop_{job.round}.pt", model=model.state_dict(),
                        optimizers=[o.optimizer.state_dict() for o in optimizers], epoch=epoch + 1)
        rows.append({"epoch_time_s": seconds, "val_neg_elbo": val["neg_elbo"]})
    vals = [r["val_neg_elbo"] for r in rows]
    return {"history": rows, "total_s": time.perf_counter() - started, "best_epoch": 1 + vals.index(min(vals))}


# --- process tree measurement ------------------------------------------------------------------------

def run_trainer(target: str, job: Job) -> dict[str, Any]:
    """Train in a fresh spawned process while sampling its process tree; the child's result + memory."""
    work = Path(job.workdir)
    load = os.getloadavg()[0]
    train = {"pythae": _train_pythae, "vaeflow": _train_vaeflow, "loop": _train_loop}[target]
    result, monitor, wall = run_monitored(train, (job,), work / f"{target}_{job.round}_result.json",
                                          work / f"{target}_{job.round}.log", f"{target} training")
    return result | monitor.summary() | {"process_wall_s": wall, "load_avg_1min_before": load}


# --- evaluation --------------------------------------------------------------------------------------


def evaluate(model: VAE, config: cfg.ExperimentConfig, processed: Path, *, k: int, n_iwae: int) -> dict[str, Any]:
    """Test −ELBO (all test images) and IWAE NLL (first ``n_iwae``), as ``stages.evaluate`` computes them."""
    from torch.utils.data import DataLoader, Subset

    from vaeflow.training.likelihood import iwae_nll
    from vaeflow.training.loop import run_epoch

    modality = registry.MODALITIES.get_or_raise(config.modality).data
    device = torch.device("cpu")
    test = modality.fixed(modality.load(processed, "test"), config.data, config.seed)  # one fixed binarisation
    loader = lambda ds: DataLoader(ds, batch_size=config.evaluate.batch_size, collate_fn=modality.collate_fn())  # noqa: E731
    g = lambda: torch.Generator(device=device).manual_seed(config.seed)  # noqa: E731
    model.eval()
    started = time.perf_counter()
    elbo = run_epoch(model, loader(test), modality, config, epoch=0, device=device, generator=g())
    subset = Subset(test, range(min(n_iwae, len(test))))
    nll = iwae_nll(model, loader(subset), modality, config.data, k=k, device=device, generator=g())
    return {"test_neg_elbo": elbo["neg_elbo"], "test_kl": elbo["kl"], "test_nll_iwae": float(nll.mean()),
            "test_nll_iwae_sem": float(nll.std() / max(len(nll), 1) ** 0.5), "eval_s": time.perf_counter() - started,
            "nll": nll}


TIMED = ("epoch_s_median", "train_s_total", "cpu_s_tree")


def _times(run: dict[str, Any]) -> dict[str, float]:
    """A training run's steady epoch time (the first epoch pays for warm-up: allocations, oneDNN
    kernels), its total time and the CPU seconds of its process tree."""
    times = [row["epoch_time_s"] for row in run["history"]]
    return {"epoch_s_median": median(times[1:] or times), "train_s_total": run["total_s"], "cpu_s_tree": run["cpu_s_tree"]}


MEMORY = ("peak_pss_tree_mb", "peak_rss_tree_mb", "peak_pss_worker_mb", "peak_rss_worker_mb")


def _memory(run: dict[str, Any]) -> dict[str, float]:
    """Peak PSS and RSS of a run's process tree and of its training process (pythae: the tree is one process)."""
    return {"peak_pss_tree_mb": run["peak_pss_tree_mb"], "peak_rss_tree_mb": run["peak_rss_tree_mb"],
            "peak_pss_worker_mb": run.get("peak_pss_worker_mb", run["peak_pss_tree_mb"]),
            "peak_rss_worker_mb": run.get("peak_rss_worker_mb", run["peak_rss_tree_mb"])}


def _outside(run: dict[str, Any]) -> dict[str, float]:
    """Seconds outside the training epochs: of the trainer's own training span, and of its whole process."""
    epochs = sum(row["epoch_time_s"] for row in run["history"])
    return {"overhead_s": run["total_s"] - epochs, "overhead_process_s": run["process_wall_s"] - epochs}


def _summarise(name: str, seed: int, run: dict[str, Any], ev: dict[str, Any]) -> dict[str, Any]:
    times = [row["epoch_time_s"] for row in run["history"]]
    out = {
        "trainer": name,
        "seed": seed,
        "epochs": len(times),
        "best_epoch": run["best_epoch"],
        **_times(run),
        **_outside(run),
        **_memory(run),
        "test_neg_elbo": ev["test_neg_elbo"],
        "test_nll_iwae": ev["test_nll_iwae"],
        "test_nll_iwae_sem": ev["test_nll_iwae_sem"],
    }
    extra = {k: run[k] for k in ("mlflow_setup_s", "ray_start_s", "cpu_s_worker", "worker_nice", "process_wall_s",
                                 "load_avg_1min_before", "processes_seen", "peak_pss_tree_parts_mb", "monitor_samples",
                                 "monitor_cpu_s", "largest_processes_pss", "largest_processes") if k in run}
    return out | extra | {"test_kl": ev["test_kl"], "eval_s": ev["eval_s"], "epoch_times_s": times,
                          "history": run["history"]}


def spread(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation and standard error of the mean of independent observations
    (NaN for the last two with fewer than two), and the mean in standard errors."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    sem = sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "sem": sem, "mean_over_sem": mean / sem if sem > 0 else math.nan}


def seed_summary(per_seed: list[dict[str, Any]], nlls: list[dict[str, torch.Tensor]] | None) -> dict[str, Any]:
    """The paired vaeflow − pythae differences over seeds (each seed one observation) and over test images.

    Args:
        per_seed: one row per seed (``nll_*``, ``neg_elbo_*``).
        nlls: per seed, each trainer's per-image IWAE NLL on the same test images and random streams
            (None: not known; the standard error over images is then None).
    """
    per_image_sem = None  # unknown where a combined record lacks a seed's per-image NLLs
    if nlls is not None:
        diffs = torch.stack([n["vaeflow"] - n["pythae"] for n in nlls])  # (seeds, images)
        per_image = diffs.mean(0)  # (images,): each test image's difference, averaged over the seeds
        per_image_sem = float(per_image.std() / max(len(per_image), 1) ** 0.5)
    return {
        "nll_diff": spread([r["nll_diff"] for r in per_seed]),
        "neg_elbo_diff": spread([r["neg_elbo_diff"] for r in per_seed]),
        "nll_pythae": spread([r["nll_pythae"] for r in per_seed]),
        "nll_vaeflow": spread([r["nll_vaeflow"] for r in per_seed]),
        "neg_elbo_pythae": spread([r["neg_elbo_pythae"] for r in per_seed]),
        "neg_elbo_vaeflow": spread([r["neg_elbo_vaeflow"] for r in per_seed]),
        # The test sample's share of the noise: differences averaged over seeds, SE over the images.
        "nll_diff_sem_images": per_image_sem,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="training seeds (initial weights, noise, shuffling); each trains both trainers and is "
                        "scored on its own; default: the preset's seed")
    p.add_argument("--k", type=int, default=1000, help="importance samples of the IWAE NLL")
    p.add_argument("--test-examples", type=int, default=1000, help="test images for the IWAE NLL (−ELBO uses all)")
    p.add_argument("--train-limit", type=int, default=None, help="train on a seeded subset of this many images")
    p.add_argument("--val-size", type=int, default=None, help="validation images (default: the preset's 5,000)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the preset's")
    p.add_argument("--repeats", type=int, default=1,
                   help="training rounds per seed, the trainers' order alternating over all rounds; times and "
                        "memory are paired per round, each seed's last round's models scored")
    p.add_argument("--with-loop", action="store_true",
                   help="also time vaeflow's epoch function in one process without Ray (a third trainer, timing only)")
    p.add_argument("--cpus", type=int, default=2, help="torch threads of each trainer (vaeflow: cpus_per_worker)")
    p.add_argument("--workdir", default=None, help="keep data, logs, checkpoints here (default: a temp folder)")
    p.add_argument("--out", default=None, help="JSON path (default: bench/results/pythae.json)")
    p.add_argument("--combine", nargs="+", metavar="JSON", default=None,
                   help="train nothing: combine these records (runs of different seeds) into --out")
    args = p.parse_args(argv)
    if args.combine:
        record = combine(args.combine, args.out)
        _report(record)
        return record
    if importlib.util.find_spec("pythae") is None:
        raise SystemExit(MISSING)

    with tempfile.TemporaryDirectory(prefix="vaeflow-pythae-") as tmp:
        work = Path(args.workdir or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        overrides = [
            f"train.epochs={args.epochs}", "train.num_workers=1", f"train.cpus_per_worker={args.cpus}",
            "loss.beta=1.0", "loss.warmup_epochs=0", "loss.free_bits=0.0", "train.grad_clip=0.0",  # pythae's objective
            f"train.storage_path={work}/ray_results", f"tracking.uri=sqlite:///{work}/mlflow.db",
            f"tracking.artifact_location={work}/mlartifacts", f"evaluate.iwae_k={args.k}",
            f"evaluate.iwae_examples={args.test_examples}",
            *([f"data.limit_train={args.train_limit}"] if args.train_limit else []),
            *([f"train.batch_size={args.batch_size}"] if args.batch_size else []),
            *([f"data.val_size={args.val_size}"] if args.val_size is not None else []),
        ]
        config = cfg.load(PRESET, overrides=overrides)  # its seed: the data split, test binarisation, IWAE streams
        seeds = args.seeds if args.seeds is not None else [config.seed]
        if len(set(seeds)) != len(seeds):
            raise SystemExit(f"--seeds {seeds}: each seed once (use --repeats for more timing rounds)")
        paths = stages.Paths.for_modality(config.modality, work)
        counts = stages.prepare(config, paths, progress=False)
        print(f"data: {counts}; {args.epochs} epochs, batch {config.train.batch_size}, lr {config.train.lr}, "
              f"latent {config.model.latent_dim}, {args.cpus} threads each, seeds {seeds}; work folder {work}", flush=True)
        torch.set_num_threads(args.cpus)
        spec = registry.MODALITIES.get_or_raise(config.modality).data.input_spec(paths.processed)

        rounds: list[dict[str, Any]] = []
        rows: list[dict[str, Any]] = []
        per_seed: list[dict[str, Any]] = []
        nlls: list[dict[str, torch.Tensor]] = []
        for seed in seeds:
            job = Job(config=config.to_dict() | {"seed": seed}, processed=str(paths.processed), workdir=str(work))
            for _ in range(args.repeats):
                r = len(rounds)
                order = ("pythae", "vaeflow", *(("loop",) if args.with_loop else ()))
                order = order if r % 2 == 0 else order[::-1]  # drift falls on all
                rounds.append({"seed": seed, "order": list(order), "runs": {}})
                for name in order:
                    print(f"round {r + 1}/{len(seeds) * args.repeats} (seed {seed}): training with {name} …", flush=True)
                    run = rounds[-1]["runs"][name] = run_trainer(name, dataclasses.replace(job, round=r))
                    print(f"  {name}: {run['total_s']:.1f} s, peak tree PSS {run['peak_pss_tree_mb']:.0f} MB "
                          f"(RSS {run['peak_rss_tree_mb']:.0f} MB)", flush=True)
            runs = rounds[-1]["runs"]  # the seed's last round is scored
            scored: dict[str, dict[str, Any]] = {}
            nlls.append({})
            for name in ("pythae", "vaeflow"):
                print(f"evaluating {name}, seed {seed} (IWAE k={args.k} on {args.test_examples} test images) …", flush=True)
                model = build_model(config.model, spec)
                model.load_state_dict(torch.load(runs[name]["model_file"], weights_only=True))
                ev = evaluate(model, config, paths.processed, k=args.k, n_iwae=args.test_examples)
                nlls[-1][name] = ev.pop("nll")
                scored[name] = _summarise(name, seed, runs[name], ev)
                rows.append(scored[name])
            diff = nlls[-1]["vaeflow"] - nlls[-1]["pythae"]  # paired: same images, same random streams
            v, py = scored["vaeflow"], scored["pythae"]
            per_seed.append({
                "seed": seed, "nll_pythae": py["test_nll_iwae"], "nll_vaeflow": v["test_nll_iwae"],
                "nll_diff": float(diff.mean()), "nll_diff_sem_images": float(diff.std() / max(len(diff), 1) ** 0.5),
                "neg_elbo_pythae": py["test_neg_elbo"], "neg_elbo_vaeflow": v["test_neg_elbo"],
                "neg_elbo_diff": v["test_neg_elbo"] - py["test_neg_elbo"],
                "best_epoch_pythae": py["best_epoch"], "best_epoch_vaeflow": v["best_epoch"],
            })
            print(f"  seed {seed}: NLL pythae {py['test_nll_iwae']:.3f}, vaeflow {v['test_nll_iwae']:.3f}, "
                  f"paired difference {per_seed[-1]['nll_diff']:+.3f} ± {per_seed[-1]['nll_diff_sem_images']:.3f}",
                  flush=True)
            done = len(per_seed) == len(seeds)
            record = _record(args, config, counts, seeds, rows, rounds, per_seed, nlls, complete=done)
            write_json("pythae", record, args.out)  # after every seed: a long run that dies keeps its finished seeds

    _report(record)
    if not all(math.isfinite(r[k]) for r in rows for k in ("test_neg_elbo", "test_nll_iwae")):
        raise SystemExit("a model's test −ELBO or IWAE NLL is not finite; see the JSON")
    return record


def _loop_split(runs: dict[str, Any]) -> dict[str, float]:
    """With ``--with-loop``: vaeflow / pythae per epoch as (vaeflow's loop / pythae) × (on Ray / the loop)."""
    if "loop" not in runs:
        return {}
    epoch = {n: _times(run)["epoch_s_median"] for n, run in runs.items()}
    return {"epoch_s_median_loop": epoch["loop"], "epoch_loop_over_pythae": epoch["loop"] / epoch["pythae"],
            "epoch_ray_over_loop": epoch["vaeflow"] / epoch["loop"]}


def _record(args: argparse.Namespace, config: cfg.ExperimentConfig, counts: dict[str, Any], seeds: list[int],
            rows: list[dict[str, Any]], rounds: list[dict[str, Any]], per_seed: list[dict[str, Any]],
            nlls: list[dict[str, torch.Tensor]], *, complete: bool) -> dict[str, Any]:
    """The JSON record of the seeds finished so far."""
    # Times and memory from every round, paired within the round.
    keys = (*TIMED, *MEMORY)
    per_round = []
    for rd in rounds:
        v, py = rd["runs"]["vaeflow"], rd["runs"]["pythae"]
        both = {n: _times(run) | _memory(run) for n, run in rd["runs"].items()}
        per_round.append({"seed": rd["seed"], "order": rd["order"]}
                         | {key: both["vaeflow"][key] / both["pythae"][key] for key in keys}
                         | {f"{key}_{n}": both[n][key] for n in ("pythae", "vaeflow") for key in keys}
                         | {f"{key}_{n}": _outside(run)[key] for n, run in (("pythae", py), ("vaeflow", v))
                            for key in ("overhead_s", "overhead_process_s")}
                         | _loop_split(rd["runs"]))
    finished = [rd for rd in per_round if rd["seed"] in {s["seed"] for s in per_seed}]
    summary = seed_summary(per_seed, nlls)
    return {
        "complete": complete,
        "settings": {"epochs": args.epochs, "seeds": seeds, "repeats": args.repeats, "k": args.k,
                     "test_examples": args.test_examples, "train_limit": args.train_limit,
                     "batch_size": config.train.batch_size, "lr": config.train.lr, "latent_dim": config.model.latent_dim,
                     "threads": args.cpus, "n_train": counts["n_train"], "n_val": counts["n_val"],
                     "n_test": counts["n_test"], "data_and_test_seed": config.seed},
        "memory_method": "peak over samples (every 0.2 s) of the summed 'Pss:' line of /proc/<pid>/smaps_rollup "
                         "over the trainer's process and all its descendants (psutil children(recursive=True)); "
                         "peak summed RSS of the same tree kept for comparison",
        "results": rows,
        "per_seed": per_seed,
        "seed_summary": summary,
        "paired_nll": _paired(summary),
        "ratios_vaeflow_over_pythae": _median_ratios(finished),
        "epoch_split_with_loop": _median_split(finished),
        "ratios_per_round": per_round,
        "rounds_epoch_times_s": [{n: [row["epoch_time_s"] for row in run["history"]] for n, run in rd["runs"].items()}
                                 for rd in rounds],
        "differences": DIFFERENCES,
        # Each seed's per-image IWAE NLLs (test images in order), so that records can be combined.
        "per_image_nll": {str(row["seed"]): {n: [round(float(v), 4) for v in t] for n, t in nll.items()}
                          for row, nll in zip(per_seed, nlls)},
    }


def _median_ratios(per_round: list[dict[str, Any]]) -> dict[str, float]:
    return {key: median([pr[key] for pr in per_round]) for key in (*TIMED, *MEMORY)}


def _median_split(per_round: list[dict[str, Any]]) -> dict[str, float] | None:
    """Medians over rounds of ``_loop_split``'s ratios (None without ``--with-loop``)."""
    with_loop = [pr for pr in per_round if "epoch_loop_over_pythae" in pr]
    if not with_loop:
        return None
    return {key: median([pr[key] for pr in with_loop]) for key in ("epoch_loop_over_pythae", "epoch_ray_over_loop")}


def _paired(summary: dict[str, Any]) -> dict[str, Any]:
    """The headline NLL difference, vaeflow − pythae (mean over seeds) and its standard errors."""
    return {"nll_vaeflow_minus_pythae": summary["nll_diff"]["mean"],
            "nll_vaeflow_minus_pythae_sem": summary["nll_diff_sem_images"],  # over test images, as before
            "nll_vaeflow_minus_pythae_sd_seeds": summary["nll_diff"]["sd"],
            "nll_vaeflow_minus_pythae_sem_seeds": summary["nll_diff"]["sem"]}


def combine(files: list[str], out: str | None) -> dict[str, Any]:
    """One record from several runs' JSON records with different seeds (e.g. seeds run side by side).

    Per-seed figures are copied; the statistics over seeds and the median ratios over rounds are
    recomputed. The time ratios of runs that shared the machine with each other mean nothing; the NLL,
    −ELBO and memory figures do not depend on it.
    """
    records = [json.loads(Path(f).read_text()) for f in files]
    per_seed = [row for r in records for row in r["per_seed"]]
    seeds = [row["seed"] for row in per_seed]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"--combine: seed(s) {sorted({s for s in seeds if seeds.count(s) > 1})} appear in more than "
                         "one record; combine records of different seeds")
    tests = {(r["settings"]["k"], r["settings"]["test_examples"], r["settings"]["epochs"],
              r["settings"].get("data_and_test_seed", 0)) for r in records}
    if len(tests) != 1:
        raise SystemExit(f"--combine: the records differ in (k, test examples, epochs, test seed): {sorted(tests)}")
    have = all("per_image_nll" in r for r in records)
    nlls = [{n: torch.tensor(v) for n, v in r["per_image_nll"][str(row["seed"])].items()}
            for r in records for row in r["per_seed"]] if have else None
    summary = seed_summary(per_seed, nlls)
    rounds = [rd for r in records for rd in r["ratios_per_round"]]
    first = records[0]
    record = {
        "complete": all(r.get("complete", False) for r in records),
        "settings": first["settings"] | {"seeds": seeds,
                                         "threads_per_seed": {str(row["seed"]): r["settings"]["threads"]
                                                              for r in records for row in r["per_seed"]}},
        "memory_method": first["memory_method"],
        "combined_from": [{"file": str(f), "machine": r["machine"], "settings": r["settings"],
                           "complete": r.get("complete")} for f, r in zip(files, records)],
        "results": [row for r in records for row in r["results"]],
        "per_seed": per_seed,
        "seed_summary": summary,
        "paired_nll": _paired(summary),
        "ratios_vaeflow_over_pythae": _median_ratios(rounds),
        "ratios_per_round": rounds,
        "rounds_epoch_times_s": [rd for r in records for rd in r["rounds_epoch_times_s"]],
        "differences": first["differences"],
        **({"per_image_nll": {k: v for r in records for k, v in r["per_image_nll"].items()}} if have else {}),
    }
    write_json("pythae", record, out)
    return record


def _report(record: dict[str, Any]) -> None:
    """The tables a reader wants on the terminal; everything else is in the JSON."""
    rows, st = record["results"], record["settings"]
    table_cols = ("trainer", "seed", "epochs", "best_epoch", "epoch_s_median", "train_s_total", "overhead_s",
                  "cpu_s_tree", "peak_pss_tree_mb", "peak_rss_tree_mb", "peak_pss_worker_mb", "test_neg_elbo",
                  "test_nll_iwae", "test_nll_iwae_sem")
    print_table([{c: r[c] for c in table_cols} for r in rows],
                f"pythae vs vaeflow: Fashion-MNIST (dynamic binarisation), {st['epochs']} epochs, "
                f"IWAE k={st['k']} on {st['test_examples']} test images")
    print_table(record["per_seed"], "per seed (differences: vaeflow − pythae, paired on the same test images and streams)")
    summary = record["seed_summary"]
    fmt = lambda d: f"{d['mean']:+.3f} (sd {d['sd']:.3f}, se {d['sem']:.3f} over {d['n']} seeds)"  # noqa: E731
    sem_images = summary["nll_diff_sem_images"]
    print(f"\nNLL difference {fmt(summary['nll_diff'])}; over test images se "
          f"{'unknown' if sem_images is None else f'{sem_images:.3f}'}\n"
          f"−ELBO difference {fmt(summary['neg_elbo_diff'])}\n"
          f"seed-to-seed sd of the NLL: pythae {summary['nll_pythae']['sd']:.3f}, vaeflow {summary['nll_vaeflow']['sd']:.3f}")
    print_table([{"vaeflow / pythae": k, "ratio (median over rounds)": v}
                 for k, v in record["ratios_vaeflow_over_pythae"].items()], "ratios")
    if split := record.get("epoch_split_with_loop"):
        print(f"per epoch, vaeflow / pythae split (medians over rounds): vaeflow's epoch function in one process / "
              f"pythae {split['epoch_loop_over_pythae']:.3f}, on Ray / in one process {split['epoch_ray_over_loop']:.3f}")
    v = next(r for r in reversed(rows) if r["trainer"] == "vaeflow")
    print(f"\nvaeflow overhead: MLflow run {v['mlflow_setup_s']:.1f} s, Ray start {v['ray_start_s']:.1f} s; "
          f"worker peak PSS {v['peak_pss_worker_mb']:.0f} MB of {v['peak_pss_tree_mb']:.0f} MB in the tree "
          f"({v['processes_seen']} processes; summed RSS {v['peak_rss_tree_mb']:.0f} MB), "
          f"worker niceness {v.get('worker_nice')}")
    print("differences between the setups:\n  - " + "\n  - ".join(DIFFERENCES))


if __name__ == "__main__":
    main()
