"""Anomaly-detection protocol on a labelled UCR set: train on one class as normal, score the others.

Protocol (one-class, per normal class c and seed s):
  1. the official UCR training split, restricted to class c, is the training data (whole series,
     scaler fitted on it alone); no test series is seen before scoring;
  2. a VAE (the preset's encoder/decoder, ``--set`` overrides) is trained with the trainer's own
     epoch loop (``vaeflow.training.loop.run_epoch``, one process, no Ray: the sets are tiny);
  3. every series of the official test split is scored by the negative Monte-Carlo reconstruction
     probability and by the −ELBO (``evaluate.anomaly_k`` samples of z); series of any class other
     than c are the anomalies;
  4. AUROC and the best F1 over all thresholds (no point adjustment: one series = one decision).
Results are the mean ± std over normal classes × seeds, next to a classic baseline scored on the same
split: the Euclidean distance of each (scaled) test series to its nearest training series (1-NN).

    python bench/timeseries_anomaly.py --dataset ucr-gunpoint --epochs 1500 --seeds 3    # ~4 min on 2 cores
    python bench/timeseries_anomaly.py --preset configs/timeseries/quick.yaml   # the Stocks preset's GRU + TimeVAE
    python bench/timeseries_anomaly.py --preset configs/timeseries/files-long.yaml \
        --set data.path=examples/timeseries/basicmotions_long.csv   # your own labelled long-layout file
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import print_table, write_json  # noqa: E402
from vaeflow import config as cfg
from vaeflow.modalities.timeseries.data import (RawSeries, TimeSeriesData, WindowDataset, build_splits,
                                                read_files_raw)
from vaeflow.modalities.timeseries import anomaly
from vaeflow.modalities.timeseries import metrics as tsm
from vaeflow.models import families
from vaeflow.registry import DATASETS
from vaeflow.training.loop import run_epoch


def one_class_run(raw: RawSeries, normal: int, config: cfg.ExperimentConfig, epochs: int, seed: int) -> dict[str, float]:
    xs, ys = raw.splits["train"]
    keep = np.flatnonzero(ys == normal)
    one_class = RawSeries(raw.channel_names, splits={"train": ([xs[i] for i in keep], ys[keep]), "test": raw.splits["test"]},
                          class_names=raw.class_names)
    data = dataclasses.replace(config.data, window=None, val_fraction=0.0)
    splits, scaler, _ = build_splits(one_class, data, seed)
    x_train, y_train, _ = splits["train"]
    x_test, y_test, _ = splits["test"]
    spec = {"channels": x_train.shape[2], "length": x_train.shape[1], "num_classes": 0, "scaler": scaler.to_dict()}
    torch.manual_seed(seed)
    # The config's family (model.family: vae or vrnn) builds the model and its optimizers.
    model = families.build_model(dataclasses.replace(config.model, conditional=False), spec)
    opt = families.family_of(model).optimizers(model, config.train)
    loader = DataLoader(WindowDataset(x_train, y_train), batch_size=min(config.train.batch_size, len(y_train)),
                        shuffle=True, generator=torch.Generator().manual_seed(seed))
    run_config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=epochs))
    for epoch in range(epochs):
        run_epoch(model, loader, TimeSeriesData(), run_config, epoch=epoch, device=torch.device("cpu"),
                  generator=torch.Generator().manual_seed(seed * 100_000 + epoch), optimizer=opt)
    scores = anomaly.anomaly_scores(model, torch.as_tensor(x_test), k=config.evaluate.anomaly_k,
                                generator=torch.Generator().manual_seed(seed))
    is_anomaly = y_test != normal
    out = {"n_train": len(y_train), "n_test": len(y_test), "anomaly_rate": float(is_anomaly.mean())}
    flat = lambda x: torch.nan_to_num(torch.as_tensor(x)).flatten(1)  # noqa: E731  (padding is NaN in storage, 0 as model input)
    nearest = torch.cdist(flat(x_test), flat(x_train)).min(1).values
    for name, s in (("recon_prob", scores.recon_prob), ("neg_elbo", scores.neg_elbo), ("1nn_distance", nearest.numpy())):
        out[f"auroc_{name}"] = tsm.auroc(s, is_anomaly)
        out[f"best_f1_{name}"] = tsm.best_f1(s, is_anomaly)[0]
    return out


def labelled_file(config: cfg.ExperimentConfig) -> RawSeries:
    """A long-layout file with a label column (``data.source: files``) as a labelled set: whole series
    dealt to a training and a test split (``data.test_fraction`` of each label's series, at least one,
    seeded), in place of a UCR set's official split."""
    raw, _, _ = read_files_raw(config.data)
    if raw.many is None or not raw.class_names:
        raise SystemExit("timeseries_anomaly benchmark: the file needs data.layout: long and a data.label_column "
                         "(one label per series)")
    xs, ys = raw.many
    rng = np.random.default_rng(config.seed)
    test = np.zeros(len(ys), dtype=bool)
    for c in range(len(raw.class_names)):  # stratified: every class is in both splits
        idx = rng.permutation(np.flatnonzero(ys == c))
        test[idx[: max(1, int(round(len(idx) * config.data.test_fraction)))]] = True
    if test.all():
        raise SystemExit("timeseries_anomaly benchmark: too few series per label for a training and a test split")
    split = lambda keep: ([xs[i] for i in np.flatnonzero(keep)], ys[keep])  # noqa: E731
    return RawSeries(raw.channel_names, splits={"train": split(~test), "test": split(test)}, class_names=raw.class_names)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="ucr-gunpoint")
    p.add_argument("--preset", default=str(Path(__file__).resolve().parents[1] / "configs/timeseries/ucr_anomaly.yaml"))
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--epochs", type=int, default=1500, help="passes over the normal class's training series")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default=None, help="JSON path (default: bench/results/timeseries_anomaly_<dataset>.json)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    try:
        config = cfg.load(args.preset, overrides=[f"data.dataset={args.dataset}", *args.overrides])
    except cfg.ConfigError as exc:
        raise SystemExit(f"timeseries_anomaly benchmark: {exc}") from None
    if config.data.source == "files":  # your own long-layout file with one label per series
        raw = labelled_file(config)
        args.dataset = Path(config.data.path).stem
    else:
        raw = DATASETS.get_or_raise(args.dataset).load()
    started = time.perf_counter()
    runs = [one_class_run(raw, c, config, args.epochs, s) | {"normal_class": raw.class_names[c], "seed": s}
            for c in range(len(raw.class_names)) for s in range(args.seeds)]
    seconds = time.perf_counter() - started
    scores = [k.removeprefix("auroc_") for k in runs[0] if k.startswith("auroc_")]
    rows = [{"score": name,
             "auroc_mean": float(np.mean([r[f"auroc_{name}"] for r in runs])), "auroc_std": float(np.std([r[f"auroc_{name}"] for r in runs])),
             "best_f1_mean": float(np.mean([r[f"best_f1_{name}"] for r in runs])),
             "best_f1_std": float(np.std([r[f"best_f1_{name}"] for r in runs]))} for name in scores]
    print_table(rows, f"{args.dataset}: one-class anomaly detection, {len(raw.class_names)} normal classes × "
                      f"{args.seeds} seeds, {args.epochs} epochs ({seconds:.0f} s)")
    own_networks = not families.get(config.model.family).uses_encoder_decoder  # the VRNN reads neither
    record = {"settings": vars(args) | {"out": None}, "family": config.model.family,
              "encoder": None if own_networks else config.model.encoder.name,
              "decoder": None if own_networks else config.model.decoder.name,
              "anomaly_k": config.evaluate.anomaly_k, "seconds": seconds,
              "rows": rows, "runs": runs}
    write_json(f"timeseries_anomaly_{args.dataset}", record, args.out)
    return record


if __name__ == "__main__":
    main()
