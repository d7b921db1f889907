"""Config loading: presets, params.yaml overrides, --set, and one-line errors naming the key."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from vaeflow import config as cfg
from tests.conftest import ROOT, TINY


@pytest.mark.parametrize("preset", sorted((ROOT / "configs").glob("*/*.yaml")), ids=lambda p: p.stem)
def test_every_preset_loads_and_round_trips(preset):
    config = cfg.load(preset)
    assert cfg.from_dict(cfg.ExperimentConfig, config.to_dict()) == config
    assert isinstance(config.seed, int)


def test_params_yaml_overrides_preset_then_set_overrides_both(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {"image": {"epochs": 7, "lr": 0.01}}, "model": {"other": {"latent_dim": 3}}}))
    config = cfg.load(TINY, params=params, overrides=["train.epochs=9"])
    assert config.train.epochs == 9  # --set wins
    assert config.train.lr == 0.01  # params.yaml wins over the preset
    assert config.model.latent_dim == 8  # another modality's section is not applied


def test_exponent_floats_parse_as_numbers_in_files_and_overrides(tmp_path):
    assert cfg.load(TINY, overrides=["train.lr=3e-4"]).train.lr == 3e-4
    preset = tmp_path / "p.yaml"
    preset.write_text(TINY.read_text() + "\n# appended\n")
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  image:\n    lr: 1E-5\n")
    assert cfg.load(preset, params=params).train.lr == 1e-5


def test_int_is_accepted_for_float_but_not_the_reverse():
    assert cfg.load(TINY, overrides=["train.lr=1"]).train.lr == 1.0
    with pytest.raises(cfg.ConfigError, match=r"train\.epochs: expected int, got float 2\.5"):
        cfg.load(TINY, overrides=["train.epochs=2.5"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epoch=3", r"unknown key train\.epoch in train; allowed keys: epochs, batch_size"),
        ("trian.epochs=3", r"unknown key trian in config; allowed keys: modality, seed, data"),
        ("train.epochs=three", r"train\.epochs: expected int, got str 'three'"),
        ("train.use_gpu=1", r"train\.use_gpu: expected bool, got int 1"),
        ("train.precision=fp16", r"train\.precision: 'fp16' is not allowed; use one of 'fp32' \| 'bf16'"),
        ("model.encoder.name=transformer", r"model\.encoder\.name: unknown encoder 'transformer'; allowed: (\w+, )*conv2d\b"),
        ("model.encoder.depth=3", r"unknown key model\.encoder\.depth for encoder 'conv2d'; allowed keys: name, channels, hidden"),
        ("model.encoder.channels=[8, x]", r"model\.encoder\.channels\[1\]: expected int"),
        ("model.decoder.likelihood=poisson", r"model\.decoder\.likelihood: 'poisson' is not allowed"),
        ("data.dataset=cifar", r"data\.dataset: unknown dataset 'cifar'; allowed: .*fashion-mnist, mnist\b"),
        ("train.batch_size=63", r"must be divisible by train\.num_workers"),
        ("train.epochs=0", r"train\.epochs must be ≥ 1"),
        ("train.epochs", r"must look like section\.key=value"),
        ("sample.properties.logP=high", r"sample\.properties\.logP: expected float, got str 'high'"),
        ("sample.properties=3", r"sample\.properties: expected a mapping, got int 3"),
    ],
)
def test_bad_config_names_the_key(override, message):
    with pytest.raises(cfg.ConfigError, match=message):
        cfg.load(TINY, overrides=[override])


def test_missing_preset_and_invalid_yaml(tmp_path):
    with pytest.raises(cfg.ConfigError, match="not found"):
        cfg.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(cfg.ConfigError, match="not valid YAML"):
        cfg.load(bad)


def test_cli_reports_a_config_mistake_in_one_line_before_any_work(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "vaeflow.cli", "train", "--preset", str(TINY), "--set", "train.lr=fast"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["vaeflow train: error: train.lr: expected float, got str 'fast'"]
    assert not (tmp_path / "ray_results").exists() and not (tmp_path / "mlflow.db").exists()


def test_cli_config_command_prints_the_resolved_config(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "vaeflow.cli", "config", "--preset", str(TINY), "--set", "seed=5"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=True,
    )
    assert yaml.safe_load(proc.stdout)["seed"] == 5


def test_flat_params_and_digest():
    a, b = cfg.load(TINY), cfg.load(TINY, overrides=["sample.n=3"])
    flat = a.flat()
    assert flat["train.epochs"] == 1 and flat["model.encoder.name"] == "conv2d"
    assert flat["model.encoder.channels"] == "[8, 16]"
    assert a.digest() != b.digest()
    assert a.digest(exclude=("sample",)) == b.digest(exclude=("sample",))


def test_model_options_its_modules_reject_fail_before_training(project):
    """The decoder rejects an odd setting only when it is built: train builds the model on the driver
    first, so the user sees one config error, and no MLflow run or Ray job starts."""
    from vaeflow import stages
    from tests.conftest import tiny_config

    config = tiny_config(project, "model.decoder.channels=[8, 8, 8]")  # 28 px is not divisible by 2^3
    with pytest.raises(cfg.ConfigError, match=r"^model: .*not divisible by 2\^3.*; change it in the preset or with --set$"):
        stages.train(config, stages.Paths.for_modality("image", project), progress=False)
    assert not (project / "mlflow.db").exists() and not (project / "ray_results").exists()


def test_stages_without_their_inputs_say_which_stage_to_run(tmp_path):
    from vaeflow import stages
    from tests.conftest import tiny_config

    config, paths = tiny_config(tmp_path), stages.Paths.for_modality("image", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"data/processed/image not found; run the prepare stage first \(dvc repro prepare@image"):
        stages.train(config, paths, progress=False)
    for stage in (stages.sample, stages.evaluate):
        with pytest.raises(FileNotFoundError, match=r"models/image/model\.pt not found; run the train stage first"):
            stage(config, paths, progress=False)
    assert not (tmp_path / "mlflow.db").exists()
