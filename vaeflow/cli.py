"""The ``vaeflow`` command: ``vaeflow {prepare,classifier,train,sample,evaluate,config,params,submit,anomaly,interpolate,optimize} …``.

Configuration comes from params.yaml's section for ``--modality`` (what DVC tracks), or from the
preset file ``--preset`` instead, then ``--set section.key=value`` overrides (docs/configuration.md).
User mistakes end in one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from vaeflow import config as cfg

STAGES = ("prepare", "classifier", "train", "sample", "evaluate")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vaeflow", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    helps = {
        "prepare": "fetch, verify and split the raw data set into data/processed/<modality>/",
        "classifier": "images: train the in-domain classifier whose features evaluate's FD and precision/recall use",
        "train": "train with Ray Train (resumes an unfinished job with the same config) and log to MLflow",
        "sample": "draw samples from the trained model's prior into samples/<modality>/",
        "evaluate": "test −ELBO, IWAE NLL, figures (and for images FD, precision, recall) into metrics/ and plots/",
        "config": "print the resolved configuration as YAML and exit",
        "params": "write a preset's values (+ --set) into params.yaml's section for one modality (e.g. to switch to the full preset)",
    }
    s = sub.add_parser(
        "submit",
        help="submit a vaeflow command to a running Ray cluster as a job (Ray's job API)",
        description="Submit `vaeflow COMMAND …` to a Ray cluster, wait for it, print its status, log tail and MLflow run. "
        "Example: vaeflow submit --address http://127.0.0.1:8265 -- train --modality image",
    )
    s.add_argument("--address", default=None, help="Ray dashboard address (default: $RAY_ADDRESS or http://127.0.0.1:8265)")
    s.add_argument("--working-dir", default=".", help="folder uploaded as the job's working directory (default: .)")
    s.add_argument("--no-wait", action="store_true", help="return after submitting")
    s.add_argument("job", nargs=argparse.REMAINDER, help="the vaeflow command to run, after --")
    def config_args(s: argparse.ArgumentParser, modality: str) -> None:
        s.add_argument("--modality", default=modality, help=f"modality (default: {modality})")
        s.add_argument("--preset", type=Path, help="preset YAML to use instead of params.yaml's section")
        s.add_argument("--params", type=Path, default=Path("params.yaml"),
                       help="params.yaml holding one section per modality (default: ./params.yaml)")
        s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override one config key, e.g. --set train.epochs=3 (repeatable)")

    for name, text in helps.items():
        s = sub.add_parser(name, help=text, description=text)
        config_args(s, "image")
        s.add_argument("--root", type=Path, default=Path("."), help="project folder holding data/, models/ … (default: .)")
        s.add_argument("--no-progress", action="store_true", help="no progress bars")
    text = "score each window of your own CSV (rows = time steps) with the trained time-series model"
    s = sub.add_parser("anomaly", help=text, description=text)
    s.add_argument("input", type=Path, help="CSV with one column per channel of the training data (header optional), "
                   "or a CSV/TSV/Parquet file in the wide or long layout (--layout, or the model's data section)")
    # The current config (params.yaml's section, or --preset, + --set) gives evaluate.anomaly_k.
    config_args(s, "timeseries")
    s.add_argument("--root", type=Path, default=Path("."), help="project folder holding models/ (default: .)")
    s.add_argument("--model", type=Path, help="model file (default: <root>/models/<modality>/model.pt)")
    s.add_argument("--output", type=Path, help="scores CSV to write (default: <input>.scores.csv)")
    s.add_argument("--stride", type=int, default=1, help="steps between window starts (default: 1)")
    s.add_argument("--k", type=int, help="Monte-Carlo samples of z per window (default: evaluate.anomaly_k of the current config)")
    s.add_argument("--label", type=int, help="class label, for a conditional model")
    s.add_argument("--seed", type=int, default=0, help="seed of the Monte-Carlo samples (default: 0)")
    # How to read the file (default: as the model's data section read its training file, docs/timeseries.md).
    s.add_argument("--layout", choices=("wide", "long"), help="wide (one column per channel) or long (series column)")
    for flag in ("time-column", "time-format", "series-column", "label-column", "delimiter"):
        s.add_argument(f"--{flag}", help=f"the data.{flag.replace('-', '_')} to read the file with")
    s.add_argument("--value-columns", help="comma-separated channel columns (default: the model's channels)")
    s.add_argument("--missing", choices=("impute", "drop", "reject"), help="what to do with missing values and gaps")
    latent = {
        "interpolate": "decode the straight latent path between two molecules (greedy), with their properties",
        "optimize": "gradient ascent on the property head's prediction from a molecule's latent code, decoded along the way",
    }
    for name, text in latent.items():
        s = sub.add_parser(name, help=text, description=text)
        s.add_argument("--modality", default="molecule", help="modality of the trained model (default: molecule)")
        s.add_argument("--root", type=Path, default=Path("."), help="project folder holding models/ (default: .)")
        s.add_argument("--model", type=Path, help="model file (default: <root>/models/<modality>/model.pt)")
        s.add_argument("--start", required=True, help="SMILES of the starting molecule")
        s.add_argument("--steps", type=int, default=8 if name == "interpolate" else 100,
                       help="points on the path, ≥ 2 (interpolate) or gradient steps, ≥ 1 (optimize)")
        if name == "interpolate":
            s.add_argument("--end", required=True, help="SMILES of the end molecule")
        else:
            s.add_argument("--property", default="QED", help="property to optimise: logP, QED, SA, weight, or a data.property_columns column the model was trained on (default: QED)")
            s.add_argument("--minimize", action="store_true", help="decrease the property instead (e.g. SA)")
            s.add_argument("--lr", type=float, default=0.05, help="Adam step size in latent space (default: 0.05)")
            s.add_argument("--every", type=int, default=10, help="decode every this many steps, ≥ 1 (default: 10)")
    return p


def latent_command(args: argparse.Namespace) -> Any:
    """``vaeflow interpolate`` / ``vaeflow optimize`` on a trained model's latent space."""
    from vaeflow.modalities.molecule import task as molecules
    from vaeflow.training import checkpoint

    if args.command == "interpolate" and args.steps < 2:
        raise cfg.ConfigError(f"--steps must be ≥ 2 (the path includes both molecules), got {args.steps}")
    if args.command == "optimize" and (args.steps < 1 or args.every < 1):
        raise cfg.ConfigError(f"--steps and --every must be ≥ 1, got --steps {args.steps} --every {args.every}")
    path = args.model or args.root / "models" / args.modality / "model.pt"
    model, config, state = checkpoint.load_model(path)
    if config.modality != "molecule":
        raise cfg.ConfigError(f"{path} is a {config.modality} model; vaeflow {args.command} works on a molecule "
                              "model's latent space (e.g. --model models/molecule/model.pt)")
    spec = state["input_spec"]
    try:
        if args.command == "interpolate":
            return molecules.interpolate(model, spec, args.start, args.end, steps=args.steps)
        return molecules.optimize(model, spec, args.start, prop=args.property, steps=args.steps, lr=args.lr,
                                  maximize=not args.minimize, every=args.every)
    except ValueError as exc:  # an unusable SMILES or property: a user mistake
        raise cfg.ConfigError(str(exc)) from None


def resolve_config(args: argparse.Namespace) -> cfg.ExperimentConfig:
    """``--preset`` if given (instead of params.yaml), else params.yaml's ``--modality`` section; then ``--set``."""
    if args.preset is not None:
        named = cfg.read_yaml(args.preset).get("modality")
        if named != args.modality:
            raise cfg.ConfigError(f"preset {args.preset} is for modality {named!r}, not {args.modality!r}; "
                                  f"pass --modality {named}")
        return cfg.load(args.preset, overrides=args.overrides)
    if not args.params.is_file():
        raise cfg.ConfigError(f"{args.params} not found; pass --preset configs/{args.modality}/quick.yaml, or write it with "
                              f"vaeflow params --modality {args.modality} --preset configs/{args.modality}/quick.yaml")
    return cfg.load_params(args.params, args.modality, overrides=args.overrides)


PARAMS_HEADER = """\
# The pipeline's configuration, the one source DVC tracks: one section per modality, each a whole
# config (every key is read by that modality's stages). Change one value for one run with
#   dvc exp run -S image.train.epochs=3
# and rewrite a modality's section from a preset (a template in configs/) with
#   vaeflow params --modality image --preset configs/image/full.yaml
# See docs/configuration.md.
"""


def write_params(args: argparse.Namespace) -> dict[str, Any]:
    """Write the preset's resolved config (+ ``--set``) as params.yaml's section for its modality."""
    import yaml

    from vaeflow.io import write_text

    if args.preset is None:
        raise cfg.ConfigError("vaeflow params needs --preset, e.g. --preset configs/image/full.yaml")
    config = resolve_config(args)  # the whole preset validated, as every stage would
    params = cfg.read_yaml(args.params) if args.params.is_file() else {}
    params[config.modality] = cfg.params_entry(config)
    cfg.params_section(params, config.modality, args.params)  # the other sections are still well-formed
    write_text(args.params, PARAMS_HEADER + yaml.safe_dump(params, sort_keys=False))
    return {"params": str(args.params), "modality": config.modality, "preset": args.preset.as_posix()}


def submit_job(args: argparse.Namespace) -> dict[str, Any]:
    from vaeflow.cluster import submit

    job = [a for a in args.job if a != "--"] if args.job[:1] == ["--"] else list(args.job)
    if not job:
        raise cfg.ConfigError("nothing to submit: give the vaeflow command after --, e.g. -- train --modality image")
    address = args.address or os.environ.get("RAY_ADDRESS") or "http://127.0.0.1:8265"
    result = submit(address, job, working_dir=args.working_dir, wait=not args.no_wait)
    if result.logs_tail:
        print(result.logs_tail)
    if result.status not in ("SUCCEEDED", "PENDING", "RUNNING"):
        raise JobFailed(f"job {result.submission_id} ended {result.status}; see `ray job logs {result.submission_id} --address {address}`")
    return {"submission_id": result.submission_id, "status": result.status, "mlflow_run_id": result.mlflow_run_id}


class JobFailed(RuntimeError):
    """A submitted job did not succeed."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from vaeflow.download import DataNotFoundError
    from vaeflow.idx import IdxFormatError
    from vaeflow.modalities.timeseries.data import SeriesDataError
    from vaeflow.registry import RegistryError
    from vaeflow.tables import TableError
    from vaeflow.tracking import TrackingUnavailable

    errors: list[type[BaseException]] = [cfg.ConfigError, RegistryError, DataNotFoundError, IdxFormatError,
                                         FileNotFoundError, JobFailed, SeriesDataError, TableError, TrackingUnavailable]
    try:
        from vaeflow.training.ray import TrainingError

        errors.append(TrainingError)
    except ImportError:  # pragma: no cover - ray is a hard dependency
        pass
    return tuple(errors)


def run(args: argparse.Namespace) -> Any:
    from vaeflow import stages

    if args.command == "params":
        return write_params(args)
    if args.command == "submit":
        return submit_job(args)
    if args.command == "anomaly":
        from vaeflow.modalities.timeseries.anomaly import score_csv
        from vaeflow.training import checkpoint

        if args.stride < 1 or (args.k is not None and args.k < 1):
            raise cfg.ConfigError("--stride and --k must be ≥ 1")
        # k is a scoring setting: from the current config (or --k), never the one the model was trained under.
        if args.k is None:
            if args.preset is None and not args.params.is_file():
                raise cfg.ConfigError(f"{args.params} not found: pass --k N, or --params/--preset to take "
                                      "evaluate.anomaly_k from")
            current = resolve_config(args)
            if not hasattr(current.evaluate, "anomaly_k"):
                raise cfg.ConfigError(f"anomaly scores time-series models; modality {current.modality} has no "
                                      "evaluate.anomaly_k (pass --modality timeseries, or --k)")
        k = args.k if args.k is not None else current.evaluate.anomaly_k
        model, config, _ = checkpoint.load_model(args.model or args.root / "models" / args.modality / "model.pt")
        output = args.output or args.input.with_name(args.input.name + ".scores.csv")
        reading = {key: getattr(args, key) for key in ("layout", "time_column", "time_format", "series_column",
                                                       "label_column", "delimiter", "missing")
                   if getattr(args, key) is not None}
        if args.value_columns:
            reading["value_columns"] = [c.strip() for c in args.value_columns.split(",")]
        return score_csv(model, config, args.input, output, k=k, stride=args.stride, label=args.label, seed=args.seed,
                         reading=reading)
    if args.command in ("interpolate", "optimize"):
        return latent_command(args)
    config = resolve_config(args)
    if args.command == "config":
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return None
    stage = {"prepare": stages.prepare, "classifier": stages.classifier, "train": stages.train, "sample": stages.sample,
             "evaluate": stages.evaluate}
    paths = stages.Paths.for_modality(config.modality, args.root)
    return stage[args.command](config, paths, progress=not args.no_progress)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("vaeflow").setLevel(logging.INFO)
    try:
        result = run(args)
    except _user_errors() as exc:
        print(f"vaeflow {args.command}: error: {exc}", file=sys.stderr)
        return 2
    if result is not None:
        print(json.dumps(result, indent=2, sort_keys=True, default=float))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
