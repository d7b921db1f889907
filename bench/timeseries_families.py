"""Three time-series families side by side on Stocks and Energy, the TimeGAN/TimeVAE papers' protocol (issue 17).

Models (one training seed each; each preset's own sizes and epochs, 60):
  gru-vae   GRU encoder + GRU decoder (configs/timeseries/quick.yaml with model.decoder: gru, hidden 32)
  timevae   GRU encoder + TimeVAE decoder (configs/timeseries/quick.yaml's model)
  vrnn      the VRNN, a latent z_t per step (configs/timeseries/vrnn.yaml, model.family: vrnn)

Protocol, as the papers score it: ``data.split=shuffled`` (the whole series min-max scaled together, cut
into 24-step windows, the windows shuffled into train / val / test) and ``data.transform=none``: raw
levels, min-max scaled, not the quick preset's log-returns. Each (dataset, model) runs vaeflow's real
stages (prepare → train → sample → evaluate, Ray Train workers and MLflow on SQLite in a project folder
of its own under ``--workdir``); the post-hoc scores compare generated windows with the training windows
(``*_train`` keys of evaluate.json) with each post-hoc GRU trained ``evaluate.posthoc_steps=2000`` steps
and averaged over ``evaluate.posthoc_seeds=5`` seeds. The 5 seeds are post-hoc seeds, as in the papers
(TimeGAN, TimeVAE, Diffusion-TS): one model is trained per (dataset, model), so the ± is the post-hoc
classifier's and regressor's spread, not the spread over training runs.

Columns per (dataset, model): discriminative score (mean ± std, |accuracy − 0.5|, ↓), predictive score
(next-step MAE of a GRU trained on generated windows and tested on the real ones, mean ± std, ↓),
autocorrelation distance (↓), test NLL (IWAE, ``test_nll_iwae``, nats per window, ↓; the test windows
overlap the training windows under the shuffled split, so it is optimistic), the median seconds per
training epoch (train.json), and GunPoint's one-class anomaly AUROC / best F1 of the reconstruction
probability (bench/timeseries_anomaly.py's protocol and code; the model section of the same family on
GunPoint's whole series with configs/timeseries/ucr_anomaly.yaml's other sections; one figure per
model, repeated on each dataset's row). The VRNN also reports ``discriminative_score_train_10x`` (windows
cut from series 10 windows long). Published anchors sit next to the rows: Stocks from Diffusion-TS's
Table 1 (ICLR 2024), Energy's TimeGAN and TimeVAE figures from the same table; Diffusion-TS's own Energy
figures are left out (not checked against the paper).

The full table (about 1 h 15 min on 2 lightly loaded cores, extrapolated from timed parts: Stocks ~12 min,
Energy ~32 min of which the VRNN ~15 (8 s per epoch; evaluate's IWAE k=1000 and figures ~3.7 min),
GunPoint ~32 min of which the VRNN ~17 (0.11 s per one-class epoch, 9,000 of them)):

    python bench/timeseries_families.py

Shorter runs and smoke tests:

    python bench/timeseries_families.py --datasets stocks --epochs 20 --seeds 3 --posthoc-steps 1000
    python bench/timeseries_families.py --datasets stocks --epochs 1 --posthoc-steps 20 --seeds 1 \\
        --gunpoint-epochs 2 --gunpoint-seeds 1 --set train.num_workers=1
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import timeseries_anomaly  # noqa: E402
from bench._common import pipeline_config, print_table, run_stages, write_json  # noqa: E402
from vaeflow import config as cfg  # noqa: E402

PRESETS = Path(__file__).resolve().parents[1] / "configs/timeseries"
DATASETS = ("stocks", "energy")
# name → (preset, model-section keys replaced on top of it)
MODELS: dict[str, tuple[Path, dict[str, Any]]] = {
    "gru-vae": (PRESETS / "quick.yaml", {"decoder": {"name": "gru", "hidden": 32, "layers": 1}}),
    "timevae": (PRESETS / "quick.yaml", {}),
    "vrnn": (PRESETS / "vrnn.yaml", {}),
}
# The papers' protocol (the post-hoc sizes come from the flags).
PROTOCOL = ("data.split=shuffled", "data.transform=none", "data.window_scaling=none")
STAGES = ("prepare", "train", "sample", "evaluate")
# Published scores on 24-step windows, Diffusion-TS (Yuan & Qiao, ICLR 2024) Table 1: disc., pred.
ANCHORS = {
    "stocks": [{"model": "Diffusion-TS (ICLR 2024)", "discriminative": 0.067, "predictive": 0.036},
               {"model": "TimeGAN", "discriminative": 0.102, "predictive": 0.038},
               {"model": "TimeVAE", "discriminative": 0.145, "predictive": 0.039}],
    "energy": [{"model": "TimeGAN", "discriminative": 0.236, "predictive": 0.273},
               {"model": "TimeVAE", "discriminative": 0.498, "predictive": 0.268}],
}
ANCHOR_SOURCE = ("Diffusion-TS (Yuan & Qiao, ICLR 2024), Table 1, 24-step windows; Energy's Diffusion-TS "
                 "row is left out (not checked against the paper)")


def model_preset(name: str, workdir: Path) -> Path:
    """The preset of model ``name``: its own file, or a copy with the model section changed (JSON is YAML)."""
    preset, changes = MODELS[name]
    if not changes:
        return preset
    data = cfg.read_yaml(preset)
    data["model"] = data["model"] | changes
    path = workdir / "presets" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def gunpoint_preset(name: str, workdir: Path) -> Path:
    """ucr_anomaly.yaml (GunPoint, whole series) with model ``name``'s model section."""
    data = cfg.read_yaml(PRESETS / "ucr_anomaly.yaml")
    data["model"] = cfg.read_yaml(model_preset(name, workdir))["model"]
    path = workdir / "presets" / f"gunpoint-{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def run_pipeline(dataset: str, name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """prepare → train → sample → evaluate for one (dataset, model) in a project folder of its own."""
    root = workdir / f"{dataset}-{name}"
    overrides = [f"data.dataset={dataset}", *PROTOCOL, f"evaluate.posthoc_steps={args.posthoc_steps}",
                 f"evaluate.posthoc_seeds={args.seeds}",
                 *([f"train.epochs={args.epochs}"] if args.epochs else []), *args.overrides]
    config = pipeline_config(model_preset(name, workdir), root, overrides)
    started = time.perf_counter()
    # --reuse: a stage whose metrics file a run with the same --workdir left is not run again.
    done = {s: root / "metrics/timeseries" / f"{s}.json" for s in STAGES}
    kept = [s for s in STAGES if args.reuse and done[s].is_file()]
    out = {s: json.loads(done[s].read_text()) for s in kept} | run_stages(config, root, [s for s in STAGES if s not in kept])
    ev, tr = out["evaluate"], out["train"]
    row = {
        "dataset": dataset, "model": name, "family": config.model.family, "epochs": config.train.epochs,
        "disc": ev["discriminative_score_train"], "disc_std": ev["discriminative_score_train_std"],
        "pred": ev["predictive_score_train"], "pred_std": ev["predictive_score_train_std"],
        "acf_dist": ev["acf_distance_train"], "test_nll_iwae": ev.get("test_nll_iwae", math.nan),
        "epoch_s": tr["median_epoch_time_s"],
    }
    if "discriminative_score_train_10x" in ev:  # a family that generates any length (the VRNN)
        row |= {"disc_10x": ev["discriminative_score_train_10x"], "disc_10x_std": ev["discriminative_score_train_10x_std"]}
    stage_s = {k: v for stage in out.values() for k, v in stage.items() if k.endswith("_wall_s")}
    return {"row": row, "train": tr, "evaluate": ev, "stage_wall_s": stage_s, "seconds": time.perf_counter() - started}


def run_gunpoint(name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """bench/timeseries_anomaly.py's one-class protocol on GunPoint with model ``name``."""
    started = time.perf_counter()
    out = workdir / f"gunpoint-{name}.json"
    if args.reuse and out.is_file():  # a finished GunPoint run of the same settings
        record = json.loads(out.read_text())
        if (record["settings"]["epochs"], record["settings"]["seeds"]) == (args.gunpoint_epochs, args.gunpoint_seeds):
            return {"rows": {r["score"]: r for r in record["rows"]}, "runs": record["runs"], "seconds": record["seconds"]}
    record = timeseries_anomaly.main(["--dataset", "ucr-gunpoint", "--preset", str(gunpoint_preset(name, workdir)),
                                      "--epochs", str(args.gunpoint_epochs), "--seeds", str(args.gunpoint_seeds),
                                      *(a for o in args.overrides if o.startswith("model.") for a in ("--set", o)),
                                      "--out", str(out)])
    rows = {r["score"]: r for r in record["rows"]}
    return {"rows": rows, "runs": record["runs"], "seconds": time.perf_counter() - started}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: each preset's own, 60)")
    p.add_argument("--posthoc-steps", type=int, default=2000, help="steps of each post-hoc GRU (the papers: 2000)")
    p.add_argument("--seeds", type=int, default=5, help="post-hoc seeds (the papers: 5)")
    p.add_argument("--gunpoint-epochs", type=int, default=1500, help="GunPoint one-class training epochs")
    p.add_argument("--gunpoint-seeds", type=int, default=3)
    p.add_argument("--skip-gunpoint", action="store_true")
    p.add_argument("--workdir", default=None, help="project folders (default: a temporary folder, removed at the end)")
    p.add_argument("--reuse", action="store_true",
                   help="with --workdir: keep the stages and GunPoint runs an interrupted run finished")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="override for every pipeline run, e.g. train.num_workers=1 (model.* ones also on GunPoint)")
    p.add_argument("--out", default=None, help="JSON path (default: bench/results/timeseries_families.json)")
    args = p.parse_args(argv)

    import ray

    fresh_ray = not ray.is_initialized()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="vaeflow-families-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        try:
            runs = {(d, m): run_pipeline(d, m, args, workdir) for d in args.datasets for m in args.models}
        except cfg.ConfigError as exc:
            raise SystemExit(f"timeseries_families benchmark: {exc}") from None
        gunpoint = {} if args.skip_gunpoint else {m: run_gunpoint(m, args, workdir) for m in args.models}
    finally:
        if fresh_ray and ray.is_initialized():
            ray.shutdown()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    seconds = time.perf_counter() - started

    rows = []
    for (d, m), run in runs.items():
        row = dict(run["row"])
        if m in gunpoint:
            rp = gunpoint[m]["rows"]["recon_prob"]
            row |= {"gunpoint_auroc": rp["auroc_mean"], "gunpoint_auroc_std": rp["auroc_std"],
                    "gunpoint_best_f1": rp["best_f1_mean"], "gunpoint_best_f1_std": rp["best_f1_std"]}
        rows.append(row)
    for d in args.datasets:
        shown = [{k: v for k, v in r.items() if k != "dataset"} for r in rows if r["dataset"] == d]
        print_table(shown, f"{d}: shuffled windows, raw levels min-max scaled, post-hoc {args.posthoc_steps} steps × "
                           f"{args.seeds} seeds (↓ all but GunPoint)")
        print_table(ANCHORS[d], f"{d}: published anchors ({ANCHOR_SOURCE})")
    record = {
        "settings": vars(args) | {"out": None, "workdir": None if args.workdir is None else str(workdir)},
        "protocol": [*PROTOCOL, f"evaluate.posthoc_steps={args.posthoc_steps}", f"evaluate.posthoc_seeds={args.seeds}"],
        "seconds": seconds, "rows": rows,
        "anchors": {d: ANCHORS[d] for d in args.datasets}, "anchor_source": ANCHOR_SOURCE,
        "runs": {f"{d}/{m}": {k: v for k, v in run.items() if k != "row"} for (d, m), run in runs.items()},
        "gunpoint": gunpoint,
    }
    write_json("timeseries_families", record, args.out)
    return record


if __name__ == "__main__":
    main()
