"""The pipeline's stages as plain functions: prepare → train → sample → evaluate (and, for images,
the ``classifier`` whose features evaluate's FD and precision/recall use).

Each takes the resolved config and the stage's paths, writes its outputs atomically, returns the
metrics it wrote, and logs into the job's single MLflow run (opened by ``train``, whose id
``models/<modality>/run.json`` carries to the later stages).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import itertools
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from vaeflow import registry, tracking
from vaeflow.config import ConfigError, ExperimentConfig
from vaeflow.cluster import SUBMISSION_ENV
from vaeflow.io import atomic_path, write_json
from vaeflow.modalities.base import Modality
from vaeflow.training import checkpoint

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Paths:
    """Where a modality's stages read and write (the dvc.yaml deps and outs)."""

    raw: Path  # your own data files (data.source: files), each added with `dvc add`
    processed: Path
    model: Path
    samples: Path
    metrics: Path
    plots: Path
    classifier: Path  # images: the in-domain classifier of FD and precision/recall

    @classmethod
    def for_modality(cls, modality: str, root: str | Path = ".") -> Paths:
        root = Path(root)
        return cls(
            raw=root / "data/raw" / modality,
            processed=root / "data/processed" / modality,
            model=root / "models" / modality,
            samples=root / "samples" / modality,
            metrics=root / "metrics" / modality,
            plots=root / "plots" / modality,
            classifier=root / "models/classifier" / modality,
        )


def _modality(config: ExperimentConfig) -> Modality:
    return registry.MODALITIES.get_or_raise(config.modality, "modality")


def _device(config: ExperimentConfig) -> torch.device:
    return torch.device("cuda" if config.train.use_gpu and torch.cuda.is_available() else "cpu")


def _check_tracked_source(config: ExperimentConfig, paths: Paths) -> None:
    """Your own data file must sit in the folder the DVC ``prepare`` stage depends on, when DVC runs
    the stage: elsewhere, a change to it would never rerun ``prepare``."""
    if config.data.source != "files" or not os.environ.get("DVC_STAGE"):
        return
    source, raw = Path(config.data.path).resolve(), paths.raw.resolve()
    if not source.is_relative_to(raw):
        raise ConfigError(f"data.path {config.data.path} is outside {paths.raw}/, which DVC's prepare stage "
                          f"tracks; move it there and `dvc add` it (e.g. dvc add {paths.raw}/{source.name})")


def prepare(config: ExperimentConfig, paths: Paths, *, progress: bool = True) -> dict[str, Any]:
    _check_tracked_source(config, paths)
    counts = _modality(config).data.prepare(config.data, config.seed, paths.processed, progress=progress)
    write_json(paths.metrics / "prepare.json", counts)
    return counts


def classifier(config: ExperimentConfig, paths: Paths, *, progress: bool = True) -> dict[str, Any]:
    """Train the in-domain classifier on the prepared training split (images only; docs/image.md).

    Unlabelled images (your own, without class subfolders) have no classes to learn: the stage
    records why, and evaluate then reports no FD, precision or recall.
    """
    if config.modality != "image":
        raise ConfigError(f"the classifier stage is for images (FD and precision/recall), not {config.modality}; "
                          "pass --modality image")
    from vaeflow.modalities.image import quality

    data = _modality(config).data
    n_classes = data.input_spec(paths.processed)["num_classes"]
    train, test = (data.load(paths.processed, split) for split in ("train", "test"))
    if n_classes >= 2:
        model, metrics = quality.fit_classifier(train, test, n_classes, config.evaluate.classifier, config.seed)
    else:
        model, metrics = None, {"num_classes": n_classes, "test_accuracy": None,
                                "skipped": f"{paths.processed} has {n_classes} classes, and the FD classifier needs "
                                           "at least 2; put your images in class subfolders (docs/image.md)"}
    quality.save_classifier(model, metrics, paths.classifier)
    write_json(paths.metrics / "classifier.json", metrics)
    return metrics


# --- train -----------------------------------------------------------------------------------------

JOB_MARKER = "vaeflow_job.json"


def _resume_or_start(config: ExperimentConfig, tags: dict[str, str]) -> tuple[str, str]:
    """Ray run name and MLflow run id for this job: an unfinished job with the same config and data
    resumes (same Ray run name and storage path, same MLflow run); otherwise a new attempt starts."""
    base = f"{config.modality}-{config.digest(exclude=('sample', 'evaluate', 'tracking'))}-{tags['vaeflow.data_sha256'][:8]}"
    storage = Path(config.train.storage_path).resolve()
    c = tracking.client(config.tracking)
    for attempt in itertools.count(1):
        name = base if attempt == 1 else f"{base}-{attempt}"
        marker = storage / name / JOB_MARKER
        if marker.is_file():
            job = json.loads(marker.read_text())
            if job.get("status") == "finished":
                continue
            try:
                c.update_run(job["mlflow_run_id"], status="RUNNING")
                log.info("resuming %s (MLflow run %s)", name, job["mlflow_run_id"])
                return name, job["mlflow_run_id"]
            except tracking.TrackingUnavailable:
                raise
            except Exception:  # the tracking store lost that run: keep the checkpoints, open a new run
                log.warning("MLflow run %s not found; logging the resumed job to a new run", job.get("mlflow_run_id"))
        run_id = tracking.start_run(config, tags, run_name=name)
        write_json(marker, {"mlflow_run_id": run_id, "status": "running"})
        return name, run_id
    raise AssertionError("unreachable")


def _write_history_csv(history: list[dict[str, float]], path: Path) -> None:
    # Every key of any row: a training monitor's metrics are in the rows of the epochs it measured.
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for row in history for k in row)))
        writer.writeheader()
        writer.writerows(history)


def _log_model(config: ExperimentConfig, run_id: str, model_file: Path, example: Any, tags: dict[str, str]) -> str:
    """Log the pyfunc model with signature and input example, register it and point the alias at it.

    Waits out a tracking-server outage, without registering twice: a version already registered
    from this run (before the connection broke) is the one the alias gets.
    """
    uri, limit = tracking.tracking_uri(config.tracking), config.tracking.outage_limit_s
    c = tracking.client(config.tracking)
    name = config.tracking.registered_model
    version = tracking.retrying(lambda: _log_and_register(config, c, run_id, model_file, example),
                                what="logging the model", uri=uri, limit_s=limit)
    c.set_registered_model_alias(name, config.tracking.alias, version)
    for key, value in tags.items():
        c.set_model_version_tag(name, version, key, value)
    return version


def _log_and_register(config: ExperimentConfig, c: Any, run_id: str, model_file: Path, example: Any) -> str:
    import mlflow
    from mlflow.models import infer_signature

    from vaeflow.serving import PREDICT_PARAMS, VAEPyfunc

    name = config.tracking.registered_model
    done = c.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    if done:
        return str(done[0].version)

    # The signature's output is what the logged model answers (encode mode, default params), so a
    # conditional model gets its default condition here exactly as it will when served.
    pyfunc = VAEPyfunc()
    pyfunc.load_context(SimpleNamespace(artifacts={"checkpoint": str(model_file)}))
    output = pyfunc.predict(None, example)
    signature = infer_signature(example, output, params=PREDICT_PARAMS)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).with_name("pyfunc_entry.py")),  # models from code: nothing pickled
            artifacts={"checkpoint": str(model_file)},
            signature=signature,
            input_example=example,
            # vaeflow itself must be importable where the model loads (pip install the project).
            pip_requirements=[f"torch>={torch.__version__.split('+')[0]}", "numpy", "pyyaml"],
            registered_model_name=name,
        )
    return str(info.registered_model_version)


def _check_model_builds(config: ExperimentConfig, modality: Any, processed: Path) -> None:
    """Build the model once here, so an option its modules reject (an even kernel, a word dropout
    of 1.5) fails in one line before any Ray worker starts, not as a traceback from each worker."""
    from vaeflow.models.families import build_model

    try:
        build_model(config.model, modality.data.input_spec(processed))
    except ValueError as exc:
        raise ConfigError(f"model: {exc}; change it in the preset or with --set") from None
    except KeyError as exc:  # a module asked the input spec for something this data set lacks
        raise ConfigError(f"model: the {config.modality} data has no {exc} that {config.model.encoder.name} / "
                          f"{config.model.decoder.name} needs; pick an encoder and decoder for {config.modality}") from None


def _check_split_fills_a_batch(config: ExperimentConfig, n_train: int) -> None:
    """Every worker must get at least one full batch (the loaders drop incomplete ones): a smaller
    training split would train zero steps and register an untrained model."""
    t = config.train
    per_worker = t.batch_size // t.num_workers
    if n_train // t.num_workers < per_worker:
        raise ConfigError(
            f"the training split has {n_train} examples, fewer than one batch per worker (train.batch_size "
            f"{t.batch_size} over {t.num_workers} workers = {per_worker} each), so no step would train; lower "
            "train.batch_size or train.num_workers, or use more training data"
        )


def train(config: ExperimentConfig, paths: Paths, *, progress: bool = True) -> dict[str, Any]:
    from vaeflow import plots
    from vaeflow.models import families
    from vaeflow.training.ray import TrainingError, fit, init_ray, stop_own_cluster

    modality = _modality(config)
    if not paths.processed.is_dir():
        raise FileNotFoundError(f"{paths.processed} not found; run the prepare stage first "
                                f"(dvc repro prepare@{config.modality}, or vaeflow prepare --modality {config.modality})")
    _check_model_builds(config, modality, paths.processed)  # before hashing the data: a mistake fails at once
    train_split = modality.data.load(paths.processed, "train")
    _check_split_fills_a_batch(config, len(train_split))
    if config.train.length_buckets and modality.data.lengths(train_split) is None:
        raise ConfigError(f"train.length_buckets groups examples of similar length, and the {config.modality} "
                          "examples have none (all are the same size); set train.length_buckets=0")
    family = families.get(config.model.family)
    score = family.score
    tracking.check_access(config.tracking)  # a 401/403 stops here, before Ray starts

    def open_run() -> tuple[dict[str, str], Any, str, str]:
        tags = tracking.lineage_tags(config, paths.processed)
        submission = os.environ.get(SUBMISSION_ENV)
        if submission:
            tags["ray.submission_id"] = submission
        monitor = modality.task.training_monitor(config, paths)  # before the run opens: a missing classifier fails here
        return tags, monitor, *_resume_or_start(config, tags)

    # The run opens (data hashes, the git commit, the MLflow store) on another thread while the Ray
    # cluster starts on this one (its processes end with the thread that started them): seconds of
    # start-up each, independent of each other.
    with ThreadPoolExecutor(max_workers=1) as pool:
        opening = pool.submit(open_run)
        try:
            init_ray()
        finally:
            tags, monitor, run_name, run_id = opening.result()
    log.info("MLflow run %s (experiment %s, Ray run %s)", run_id, config.tracking.experiment, run_name)
    try:
        result = fit(config, paths.processed, run_name=run_name, run_id=run_id, progress=progress, monitor=monitor)
    except TrainingError:
        # Shown as failed in the UI; the job marker stays "running", so the same command resumes it.
        # (One try: the tracking server may be what failed; the run then shows RUNNING until resumed.)
        with contextlib.suppress(Exception):
            tracking.client(config.tracking, patient=False).set_terminated(run_id, "FAILED")
        stop_own_cluster()  # Ray's forwarded logs end here: the reason is the last line printed
        raise

    best = checkpoint.load(result.best)
    history = result.history
    c = tracking.client(config.tracking)
    # Epochs the controller could not send (the tracking server was down at the last reports).
    if sent := tracking.log_missing_epochs(c, run_id, history, f"val_{score}"):
        log.info("logged %d epoch(s) that the tracking server missed during training", sent)
    best_val = history[best["epoch"] - 1][f"val_{score}"]
    with atomic_path(paths.model) as tmp:
        tmp.mkdir()
        # The model file keeps what inference needs: no optimizer state.
        keys = ("model", "config", "input_spec", "epoch", "mlflow_run_id", "family_module")
        checkpoint.save(tmp / "model.pt", **{k: best[k] for k in keys if k in best})
        example = modality.data.example_input(modality.data.load(paths.processed, "val"), 4)
        version = _log_model(config, run_id, tmp / "model.pt", example,
                             {"modality": config.modality, "data_sha256": tags["vaeflow.data_sha256"],
                              "git_commit": tags["git_commit"], f"best_val_{score}": f"{best_val:.4f}"})
        experiment = c.get_run(run_id).info.experiment_id
        run_info = {
            "mlflow_run_id": run_id,
            "mlflow_experiment_id": experiment,
            "tracking_uri": tracking.tracking_uri(config.tracking),
            "mlflow_ui": tracking.run_page(config.tracking, run_id, experiment),
            "ray_run": str(result.run_dir),
            "registered_model": config.tracking.registered_model,
            "model_version": version,
            "alias": config.tracking.alias,
        }
        (tmp / "run.json").write_text(json.dumps(run_info, indent=2) + "\n")
    _write_history_csv(history, paths.plots / "history.csv")
    plots.training_curves(history, paths.plots / "training_curves.png")
    c.log_artifact(run_id, str(paths.plots / "training_curves.png"), "plots")
    c.log_artifact(run_id, str(paths.plots / "history.csv"), "plots")

    last = history[-1]
    metrics = {
        "epochs": len(history),
        "best_epoch": int(best["epoch"]),
        f"best_val_{score}": best_val,
        f"final_train_{score}": last[f"train_{score}"],
        f"final_val_{score}": last[f"val_{score}"],
        **{f"final_val_{k}": last[f"val_{k}"] for k in family.summary},
        "median_epoch_time_s": sorted(r["epoch_time_s"] for r in history)[len(history) // 2],
    }
    if monitor is not None:  # its last measurement, if an epoch was due
        metrics |= {f"last_{k}": measured[-1] for k in monitor.names() if (measured := [r[k] for r in history if k in r])}
    write_json(paths.metrics / "train.json", metrics)
    tracking.log_metrics(c, run_id, {f"best_val_{score}": best_val})
    c.set_terminated(run_id, "FINISHED")
    # Stopped by train.time_limit_minutes before train.epochs: the model is registered, and the same
    # command resumes this job (its checkpoints, its MLflow run) rather than starting a new one.
    status = "finished" if last["epoch"] >= config.train.epochs else "stopped_at_time_limit"
    write_json(result.run_dir / JOB_MARKER, {"mlflow_run_id": run_id, "status": status})
    if run_info["mlflow_ui"]:
        log.info("review the run at %s", run_info["mlflow_ui"])
    return metrics


# --- sample and evaluate -----------------------------------------------------------------------------


def _load_trained(paths: Paths, config: ExperimentConfig) -> tuple[Any, dict[str, Any]]:
    run_file = paths.model / "run.json"
    for needed in (paths.model / "model.pt", run_file):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} not found; run the train stage first (dvc repro train@{config.modality})")
    model, _, _ = checkpoint.load_model(paths.model / "model.pt", _device(config), modality=config.modality)
    return model, json.loads(run_file.read_text())


def sample(config: ExperimentConfig, paths: Paths, *, progress: bool = True) -> dict[str, Any]:
    model, run = _load_trained(paths, config)
    # (sample.properties exists for molecules only; the molecule task checks it against the model.)
    generator = torch.Generator(device=_device(config)).manual_seed(config.seed)
    with atomic_path(paths.samples) as tmp:
        tmp.mkdir()
        with torch.no_grad():  # inference: whatever the family's sampler, no graph to keep
            metrics = _modality(config).task.write_samples(model, config, paths, tmp, generator)
    write_json(paths.metrics / "sample.json", metrics)
    c = tracking.client(config.tracking)
    c.log_artifacts(run["mlflow_run_id"], str(paths.samples), "samples")
    tracking.log_stage_config(c, run["mlflow_run_id"], "sample", config.sample)
    tracking.log_metrics(c, run["mlflow_run_id"], {f"sample_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
    return metrics


def evaluate(config: ExperimentConfig, paths: Paths, *, progress: bool = True) -> dict[str, Any]:
    from torch.utils.data import DataLoader, Subset

    from vaeflow.models.families import family_of
    from vaeflow.training.likelihood import iwae_nll
    from vaeflow.training.loop import run_epoch
    from vaeflow.malloc import keep_freed_memory

    keep_freed_memory()  # the IWAE passes reuse their buffers (vaeflow/malloc.py)
    modality = _modality(config)
    model, run = _load_trained(paths, config)
    family = family_of(model)
    score = family.score
    device = _device(config)
    ev = config.evaluate
    # The test split with its randomness fixed once (e.g. binarised with the job seed).
    test = modality.data.fixed(modality.data.load(paths.processed, "test"), config.data, config.seed)
    loader = lambda ds: DataLoader(ds, batch_size=ev.batch_size, collate_fn=modality.data.collate_fn())  # noqa: E731
    g = lambda: torch.Generator(device=device).manual_seed(config.seed)  # noqa: E731

    elbo = run_epoch(model, loader(test), modality.data, config, epoch=0, device=device, generator=g())
    metrics = {
        f"test_{score}": elbo[score],
        **{f"test_{k}": elbo[k] for k in family.reported if k != score},
        "n_test": len(test),
    }
    if family.has_likelihood:
        n_iwae = min(ev.iwae_examples or len(test), len(test))
        subset = Subset(test, range(n_iwae))
        nll = iwae_nll(model, loader(subset), modality.data, config.data, k=ev.iwae_k, device=device, generator=g(),
                       progress=progress)
        subset_elbo = run_epoch(model, loader(subset), modality.data, config, epoch=0, device=device, generator=g())
        metrics |= {
            "test_nll_iwae": float(nll.mean()),
            "test_nll_iwae_sem": float(nll.std() / max(len(nll), 1) ** 0.5),
            "iwae_k": ev.iwae_k,
            "iwae_examples": n_iwae,
            # The score (the VAE's −ELBO) on the same examples as the IWAE NLL, so the two are directly comparable.
            f"iwae_subset_{score}": subset_elbo[score],
        }
        # A decoder of 8-bit pixels also gives these NLLs in bits per dimension (its bits_per_dim says how).
        to_bits = getattr(getattr(model, "decoder", None), "bits_per_dim", None)
        if to_bits is not None and to_bits(metrics["test_nll_iwae"]) is not None:
            metrics |= {"test_bits_per_dim_iwae": to_bits(metrics["test_nll_iwae"]),
                        f"test_bits_per_dim_{score}": to_bits(metrics[f"test_{score}"])}
    spec = modality.data.input_spec(paths.processed)
    figures_dir = paths.plots / "evaluation"
    with atomic_path(figures_dir) as tmp:
        tmp.mkdir()
        modality.task.evaluation_figures(model, test, spec, tmp, g())
        metrics |= modality.task.evaluation_metrics(model, config, paths, tmp, g(), progress=progress)
    write_json(paths.metrics / "evaluate.json", metrics)

    c = tracking.client(config.tracking)
    run_id = run["mlflow_run_id"]
    # Settings (how the numbers were made) are params, not metrics: the section plus the counts used.
    settings = {k: metrics[k] for k in tracking.EVALUATE_SETTINGS if k in metrics}
    tracking.log_stage_config(c, run_id, "evaluate", config.evaluate, used=settings)
    tracking.log_metrics(c, run_id, {k: v for k, v in metrics.items() if k not in settings})
    c.log_artifacts(run_id, str(figures_dir), "evaluation")
    c.log_artifact(run_id, str(paths.metrics / "evaluate.json"), "evaluation")
    for key in (k for k in (f"test_{score}", "test_nll_iwae") if k in metrics):
        c.set_model_version_tag(run["registered_model"], run["model_version"], key, f"{metrics[key]:.4f}")
    return metrics
