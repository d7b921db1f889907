"""Data-parallel training on Ray Train: the only module that imports ``ray.train``.

The driver puts the processed splits into Ray's object store (so workers on other nodes need no
shared file system for data), builds the ``TorchTrainer`` and returns the best and latest
checkpoints. Each worker runs ``_train_worker``: the plain-torch epochs of ``vaeflow.training.loop``
inside DDP, with rank 0 alone printing and writing checkpoints. Epoch metrics reach MLflow from
the Ray Train controller as it commits each report (``vaeflow.training.epoch_log``). Nothing here
imports MLflow: the workers unpickle ``_train_worker`` from this module and have no use for it
(importing it costs a worker ~1–2 s of start-up and ~60 MB).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch

from vaeflow import registry
from vaeflow.config import ExperimentConfig, from_dict
from vaeflow.modalities.base import TrainingMonitor
from vaeflow.models import families
from vaeflow.models.families import Family, FamilyOptimizer, unwrap
from vaeflow.models.families.vae import VAEFamily
from vaeflow.training import checkpoint
from vaeflow.training.backend import TorchWorkersConfig
from vaeflow.training.batching import eval_loader
from vaeflow.training.batching import train_loader as make_train_loader
from vaeflow.training.epoch_log import HISTORY_FILE
from vaeflow.training.loop import NonFiniteLossError, metric_names, resolve_precision, run_epoch, seeded_generator
from vaeflow.malloc import keep_freed_memory

log = logging.getLogger(__name__)


def score_key(family: Family) -> str:
    """The epoch-row metric checkpoints are ranked on (lower is better): ``val_<family.score>``."""
    return f"val_{family.score}"


# The VAE family's checkpoint score (validation −ELBO: unlike the training loss it does not move with β warm-up).
SCORE = score_key(VAEFamily)


class TrainingError(RuntimeError):
    """Training failed for a reason the user can act on (the message says which)."""


@dataclasses.dataclass
class FitResult:
    """What a finished training job leaves behind.

    Attributes:
        best: folder of the checkpoint with the lowest validation score (the family's ``score``).
        latest: folder of the last epoch's checkpoint.
        history: one dict of metrics per epoch.
        run_dir: Ray Train's folder for this run (storage_path/name).
    """

    best: Path
    latest: Path
    history: list[dict[str, float]]
    run_dir: Path


# Whether this process started a lean private cluster (``init_ray`` without ``RAY_ADDRESS``): a private
# cluster lives and dies with this driver, which lets a job leave out the parts of Ray Train that
# exist for shared, long-lived clusters (see ``_trainer_class``).
_private_cluster = False
# Whether this process started the cluster it is connected to (lean or full), rather than joining one.
_owns_cluster = False


def _lean_wanted() -> bool:
    """False when ``VAEFLOW_RAY_LEAN=0`` asks for all of Ray's parts (private cluster and trainer)."""
    return os.environ.get("VAEFLOW_RAY_LEAN", "1") != "0"


def init_ray(num_cpus: int | None = None) -> None:
    """Connect to the cluster in ``RAY_ADDRESS`` (set under ``ray job submit``; ``auto`` joins the
    cluster ``ray start`` runs on this machine) or start a private local one (also for ``local``).

    A private cluster exists only to train this job on this machine, so it is started lean: no
    dashboard (nothing reads it; ``ray start`` clusters keep theirs for the UI and job submission),
    no Prometheus metrics, no idle workers started ahead of need, its workers at normal priority.
    On 2 cores each of those processes takes CPU from the training threads and ~100 MB of memory.
    ``VAEFLOW_RAY_LEAN=0`` starts it with all of Ray's parts instead (for comparison, or should a
    Ray version need them; ``bench/ray_footprint.py`` measures the two side by side).
    """
    global _private_cluster, _owns_cluster
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address and address != "local":
        ray.init()
        return
    # Ray starts workers at niceness 15, so on a shared machine training would yield to any other
    # busy process; a private cluster exists only to train, so its workers run at normal priority.
    os.environ.setdefault("RAY_worker_niceness", "0")
    # Each worker's report queue holds one result and Ray Train's controller drains it every 2 s by
    # default, so epochs shorter than that would wait on the poll instead of computing.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    # Ray Train starts an actor per job that polls for node preemption (spot instances); a private
    # cluster is this machine alone, so that is one more process start per job for nothing.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    _private_cluster = _lean_wanted()
    _owns_cluster = True
    # "local": never join a cluster by accident (Ray's default would join one left by `ray start`).
    if _private_cluster:
        # Ray Train's Prometheus gauges are read through the dashboard, which a private cluster lacks.
        os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 _system_config={"prestart_worker_first_driver": False, "enable_worker_prestart": False})
        return
    # All of Ray's parts. Ray Train's placement-group cleaner polls Ray's state API from inside the
    # cluster, which finds its cluster through /tmp/ray/ray_current_cluster unless told: a `ray start`
    # head that ended without `ray stop` leaves a dead address there, and every job would wait out a
    # 12 s timeout at shutdown. This job's tasks and actors are told their own cluster's dashboard.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ray.init(address="local", num_cpus=num_cpus, dashboard_host="127.0.0.1", dashboard_port=port,
             runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}})


def stop_own_cluster() -> None:
    """Stop the cluster this process started (nothing for a joined one) before a job's last words.

    Ray forwards its processes' logs to this driver's stderr on a thread of its own, so the
    controller's log of a failure can arrive after the driver has printed the one-line reason;
    stopping the cluster first ends that thread, and the reason is the last line a user sees.
    (Ray's full log stays in its session folder.)
    """
    global _owns_cluster
    if _owns_cluster and ray.is_initialized():
        ray.shutdown()
    _owns_cluster = False


class _LeanTrainer(ray.train.torch.TorchTrainer):
    """A ``TorchTrainer`` whose controller does not import torch and that starts no dataset manager:
    safe on any cluster, a shared long-lived one included.

    Its torch set-up is ``TorchWorkersConfig``: Ray's own functions, with torch imported on the
    workers only, so the controller starts without it (216 MB against 350, and its worker group
    starts sooner; BENCHMARKS §14). Ray Train's dataset manager is an actor per job that serves
    Ray Data inputs (``datasets=``); vaeflow passes its splits through the object store instead, so
    the actor would be one Python process start (~125 MB, ~2 CPU-seconds) for nothing. Everything
    else (controller, workers, checkpoints, callbacks, resume, failure retries, the placement-group
    cleaner, autoscaler requests) is Ray Train's own. These are Ray Train V2's internal hooks
    (checked against Ray 2.60, and by ``tests/test_ray_train.py``); ``_trainer_class`` falls back to
    the plain trainer where they are missing.
    """

    _UNUSED_CALLBACKS: tuple[str, ...] = ("DatasetsCallback",)

    def __init__(self, *args: Any, torch_config: TorchWorkersConfig | None = None, **kwargs: Any) -> None:
        super().__init__(*args, torch_config=torch_config or TorchWorkersConfig(), **kwargs)

    def _create_default_callbacks(self) -> list[Any]:
        callbacks = super()._create_default_callbacks()
        return [c for c in callbacks if type(c).__name__ not in self._UNUSED_CALLBACKS]


class _PrivateClusterTrainer(_LeanTrainer):
    """``_LeanTrainer`` without the helpers that serve only a cluster that outlives the job.

    Ray Train also starts, per job, a placement-group cleaner (an actor that removes the job's
    placement group if the controller dies while the cluster lives on) and Ray Data's autoscaling
    coordinator (asks a cluster autoscaler for nodes). A private cluster dies with this driver and
    has no autoscaler, so neither can do anything for it.
    """

    _UNUSED_CALLBACKS = (*_LeanTrainer._UNUSED_CALLBACKS, "PlacementGroupCleanerCallback")

    def _initialize_and_run_controller(self, **kwargs: Any) -> Any:
        kwargs["scaling_policy"] = _FixedScalingWithoutAutoscaler(self.scaling_config)
        return super()._initialize_and_run_controller(**kwargs)


def _fixed_scaling_without_autoscaler() -> type | None:
    try:
        from ray.train.v2._internal.execution.scaling_policy.fixed import FixedScalingPolicy
    except ImportError:
        return None

    class FixedScalingWithoutAutoscaler(FixedScalingPolicy):
        """Ray Train's fixed-size scaling policy, minus its requests to a cluster autoscaler."""

        def after_controller_start(self, train_run_context: Any) -> None:
            pass

        def _maybe_send_resource_request(self) -> None:
            pass

        def _send_resource_request(self) -> None:
            pass

        def _cancel_resource_request(self) -> None:
            pass

    return FixedScalingWithoutAutoscaler


_FixedScalingWithoutAutoscaler = _fixed_scaling_without_autoscaler()


def _trainer_class() -> type[ray.train.torch.TorchTrainer]:
    """The private-cluster trainer on a cluster this job started, the lean one on a cluster it joined
    (where this Ray's internals allow); Ray's own with ``VAEFLOW_RAY_LEAN=0``."""
    base = ray.train.torch.TorchTrainer
    if not _lean_wanted():
        return base
    if not all(hasattr(base, h) for h in ("_create_default_callbacks", "_initialize_and_run_controller")):
        log.warning("this Ray's Train internals differ from 2.60's: the job runs with Ray Train's helper actors")
        return base
    if _private_cluster and _FixedScalingWithoutAutoscaler is not None:
        return _PrivateClusterTrainer
    return _LeanTrainer


def _progress_factory(rank: int) -> Any:
    """A progress-bar constructor for rank 0 (rendered on the driver through Ray), None elsewhere."""
    if rank != 0:
        return None
    from ray.experimental.tqdm_ray import tqdm

    return tqdm


def restore_optimizers(optimizers: list[FamilyOptimizer], state: dict[str, Any]) -> None:
    """Load every optimizer's (and scheduler's) state from a checkpoint.

    The hyperparameters of an unscheduled optimizer come from the config, not the checkpoint (its
    restored state carries the old values); a scheduled one keeps the checkpoint's, which its
    scheduler's restored state continues from. A checkpoint from before families (one
    ``optimizer`` key) restores a single-optimizer family.
    """
    saved = state["optimizers"] if "optimizers" in state else [state["optimizer"]]
    schedulers = state.get("schedulers") or [None] * len(saved)
    if len(saved) != len(optimizers):
        raise TrainingError(f"the checkpoint holds {len(saved)} optimizer states but the family trains "
                            f"{len(optimizers)} optimizers; start a new run")
    for opt, opt_state, sched_state in zip(optimizers, saved, schedulers):
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in opt.optimizer.param_groups]
        opt.optimizer.load_state_dict(opt_state)
        if opt.scheduler is not None and sched_state is not None:
            opt.scheduler.load_state_dict(sched_state)
        elif opt.scheduler is None:
            for group, hyper in zip(opt.optimizer.param_groups, fresh):
                group.update(hyper)


def _train_worker(cfg: dict[str, Any]) -> None:
    """Per-worker training function (runs inside a Ray Train worker)."""
    keep_freed_memory()  # each step reuses the last one's buffers instead of faulting in new pages
    # The family's own module first: a family registered outside vaeflow (a plugin, a test) is
    # found in the worker by importing the module that registered it on the driver.
    family = families.get(cfg["config"]["model"].get("family", "vae"), cfg["family_module"])
    config: ExperimentConfig = from_dict(ExperimentConfig, cfg["config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(config.train.cpus_per_worker)  # never oversubscribe: workers × threads ≤ cores
    device = ray.train.torch.get_device()
    auto_precision = config.train.precision == "auto"
    if auto_precision:  # decided here, on the device that computes
        config = dataclasses.replace(config, train=dataclasses.replace(
            config.train, precision=resolve_precision("auto", device)))
        if rank == 0:
            print(f"train.precision auto: {config.train.precision} on this {device.type}", flush=True)
    modality = registry.MODALITIES.get_or_raise(config.modality).data
    train_ds, val_ds = ray.get(cfg["train"]), ray.get(cfg["val"])
    monitor = None if cfg.get("monitor") is None else ray.get(cfg["monitor"])

    torch.manual_seed(config.seed)  # identical initial weights on every rank
    model = families.build_model(config.model, cfg["input_spec"])
    # A checkpoint's "epoch" counts finished epochs; "step" > 0 marks one taken inside the next epoch.
    state, start_epoch, start_step, totals, history = None, 0, 0, None, []
    resumed = ray.train.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as d:
            state = checkpoint.load(d)
        model.load_state_dict(state["model"])
        start_epoch, history = state["epoch"], state["history"]
        start_step, totals = state.get("step", 0), state.get("totals")
    model = ray.train.torch.prepare_model(model)  # moves to device, wraps in DDP when world > 1
    optimizers = family.optimizers(unwrap(model), config.train)
    if state is not None:
        restore_optimizers(optimizers, state)
    score = score_key(family)
    metrics = metric_names(family, config)

    # Our own sampler (also for one worker): its seed + set_epoch make each epoch's batches a function
    # of (seed, epoch, rank) alone, so a resumed run sees the same batches as an uninterrupted one.
    per_worker = config.train.batch_size // world
    train_loader, sampler = make_train_loader(train_ds, modality, config, per_worker=per_worker, world=world, rank=rank)
    val_loader = eval_loader(val_ds, modality, per_worker=per_worker, world=world, rank=rank)

    def report(metrics: dict[str, float], **state: Any) -> None:
        """Every rank reports (a barrier); rank 0 attaches the checkpoint."""
        if rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint.save(
                Path(tmp) / checkpoint.FILENAME, model=unwrap(model).state_dict(),
                optimizers=[o.optimizer.state_dict() for o in optimizers],
                schedulers=[None if o.scheduler is None else o.scheduler.state_dict() for o in optimizers],
                history=history, config=cfg["config"], input_spec=cfg["input_spec"], mlflow_run_id=cfg["run_id"],
                family_module=cfg["family_module"], **state,
            )
            # The history again as JSON, for the controller (epoch_log), which reads it without torch.
            (Path(tmp) / HISTORY_FILE).write_text(json.dumps(history))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    progress = _progress_factory(rank) if cfg.get("progress", True) else None
    first_epoch_started = time.perf_counter()
    for epoch in range(start_epoch, config.train.epochs):
        sampler.set_epoch(epoch)
        started = time.perf_counter()

        def mid_epoch(step: int, sums: dict[str, float], epoch: int = epoch) -> None:
            # Scored +inf: never the "best" checkpoint, but kept as the latest for resume.
            report({"epoch": epoch, "step": step, "partial": 1.0, score: math.inf}, epoch=epoch, step=step, totals=sums)

        train = run_epoch(
            model, train_loader, modality, config, epoch=epoch, device=device, optimizer=optimizers,
            # A step after a mid-epoch checkpoint draws from its own stream (seeded by the step).
            generator=None, progress=progress, start_step=start_step, totals=totals if rank == 0 else None,
            checkpoint_every=config.train.checkpoint_every_steps, on_checkpoint=mid_epoch,
            reseed=lambda step, epoch=epoch: seeded_generator(device, config.seed, "train", epoch, rank, *([step] if step else [])),
        )
        start_step, totals = 0, None
        seconds = time.perf_counter() - started
        # The same fixed binarisation of the validation set every epoch.
        val = run_epoch(
            model, val_loader, modality, config, epoch=epoch, device=device,
            generator=seeded_generator(device, config.seed, "val", rank),
        )
        # The family's schedule values (the VAE's β) as they stood at the end of the training epoch.
        row = {"epoch": epoch + 1} | {k: v for k, v in train.items() if k not in metrics}
        row |= {"epoch_time_s": seconds, "train_examples_per_s": len(train_loader) * per_worker * world / seconds}
        row |= {f"train_{k}": train[k] for k in metrics} | {f"val_{k}": val[k] for k in metrics}
        if auto_precision:
            row["autocast_bf16"] = float(config.train.precision == "bf16")
        if monitor is not None and monitor.due(epoch + 1):
            row |= _measure(monitor, unwrap(model), rank, device, seeded_generator(device, config.seed, "monitor", epoch))
        history.append(row)
        if rank == 0:
            label = family.score_label or family.score
            print(f"epoch {epoch + 1}/{config.train.epochs}: train {label} {train[family.score]:.2f}, "
                  f"val {label} {val[family.score]:.2f}, {seconds:.1f} s", flush=True)
        report(row, epoch=epoch + 1, step=0)
        if _out_of_time(config.train.time_limit_minutes, time.perf_counter() - first_epoch_started, device):
            if rank == 0 and epoch + 1 < config.train.epochs:
                print(f"train.time_limit_minutes ({config.train.time_limit_minutes:g}) reached after epoch {epoch + 1} "
                      f"of {config.train.epochs}; training stops here", flush=True)
            break


def _measure(monitor: TrainingMonitor, model: torch.nn.Module, rank: int, device: torch.device,
             generator: torch.Generator) -> dict[str, float]:
    """Rank 0 measures; every rank gets its values (all-reduced), so every rank reports the same row."""
    values = monitor(model, device, generator) if rank == 0 else dict.fromkeys(monitor.names(), 0.0)
    t = torch.tensor([values[k] for k in monitor.names()], dtype=torch.float64, device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)  # the others add zeros
    return dict(zip(monitor.names(), t.tolist()))


def _out_of_time(limit_minutes: float | None, elapsed_s: float, device: torch.device) -> bool:
    """Whether the time budget is spent, decided the same on every worker: each one's clock differs
    a little, so the latest one's elapsed time decides (an all-reduce max), and all stop at one epoch."""
    if limit_minutes is None:
        return False
    spent = torch.tensor([elapsed_s >= limit_minutes * 60.0], dtype=torch.float32, device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(spent, op=torch.distributed.ReduceOp.MAX)
    return bool(spent.item())


def _root_cause(exc: BaseException) -> BaseException:
    """The user-facing exception behind Ray's wrappers (worker failures, task errors)."""
    failures = getattr(exc, "worker_failures", None)
    if failures:
        exc = next(iter(failures.values()))
    exc = getattr(exc, "controller_failure", None) or exc  # raised in a callback (ControllerError)
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "cause", None) or exc.__cause__
        if inner is None or inner is exc:
            break
        exc = inner
    return exc


def fit(
    config: ExperimentConfig,
    processed_dir: str | Path,
    *,
    run_name: str,
    run_id: str,
    progress: bool = True,
    monitor: TrainingMonitor | None = None,
) -> FitResult:
    """Train with ``config.train.num_workers`` Ray Train workers; resume if ``run_name`` has checkpoints.

    Args:
        config: the resolved job config.
        processed_dir: the modality's processed data folder.
        run_name: Ray Train run name under ``config.train.storage_path``; the same name resumes.
        run_id: the MLflow run that epoch metrics are logged into.
        progress: show per-epoch progress bars (rank 0 only).
        monitor: a measurement rank 0 adds to the epoch rows when it is due (the modality task's
            ``training_monitor``, e.g. the VAE-GAN's FD).

    Raises:
        TrainingError: with the cause in one line (e.g. a NaN loss, naming epoch and step).
    """
    from vaeflow import tracking  # the driver's; see the module docstring
    from vaeflow.training.epoch_log import EpochMetricsToMlflow

    init_ray()
    modality = registry.MODALITIES.get_or_raise(config.modality).data
    family_module = families.module_of(config.model.family)
    if family_module == "__main__":
        raise TrainingError(f"model family {config.model.family!r} is registered in the __main__ script, which Ray "
                            "workers cannot import; register it in an importable module (or a vaeflow.plugins entry point)")
    score = score_key(families.get(config.model.family))
    t = config.train
    storage = Path(t.storage_path).resolve()
    trainer = _trainer_class()(
        _train_worker,
        train_loop_config={
            "config": config.to_dict(),
            "input_spec": modality.input_spec(Path(processed_dir)),
            "train": ray.put(modality.load(Path(processed_dir), "train")),
            "val": ray.put(modality.load(Path(processed_dir), "val")),
            "run_id": run_id,
            "family_module": family_module,
            # Through the object store, like the data: the controller passes it on without unpickling it.
            "monitor": None if monitor is None else ray.put(monitor),
            # Bars only on a terminal; logs (DVC, CI, ray job logs) get one line per epoch instead.
            "progress": progress and sys.stderr.isatty(),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=t.num_workers,
            use_gpu=t.use_gpu,  # NCCL on GPUs, gloo on CPUs: chosen by Ray from use_gpu
            resources_per_worker={"CPU": t.cpus_per_worker} | ({"GPU": 1} if t.use_gpu else {}),
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=str(storage),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=t.keep_checkpoints, checkpoint_score_attribute=score, checkpoint_score_order="min"
            ),
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            callbacks=[EpochMetricsToMlflow(tracking.tracking_uri(config.tracking), run_id, score,
                                            config.tracking.outage_limit_s, str(storage / run_name))],
            # Ray Train logs every report with its metrics at INFO; rank 0 prints one line per epoch instead.
            logging_config=ray.LoggingConfig(log_level="WARNING"),
        ),
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        cause = _root_cause(exc)
        if isinstance(cause, (NonFiniteLossError, tracking.TrackingUnavailable)):
            raise TrainingError(str(cause)) from None
        raise TrainingError(f"training failed: {type(cause).__name__}: {cause}") from exc
    best = result.get_best_checkpoint(score, "min") or result.checkpoint
    latest = result.checkpoint
    if latest is None:
        raise TrainingError(f"training finished without a checkpoint in {storage / run_name}; was train.epochs 0?")
    state = checkpoint.load(latest.path)
    return FitResult(best=Path(best.path), latest=Path(latest.path), history=state["history"], run_dir=storage / run_name)
