"""Config loading: params.yaml's modality section or a preset instead, --set, the modality's own typed
sections, one-line errors naming the key; each stage's own settings in MLflow."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import yaml

from vaeflow import config as cfg
from vaeflow import registry
from tests.conftest import MOL_TINY, ROOT, TINY

TS_TINY = ROOT / "configs/timeseries/tiny.yaml"


def _holds(part, whole, where=""):
    """Every key of ``part`` is in ``whole`` with the same value (a preset's values reach the config)."""
    for key, value in part.items():
        assert key in whole, f"{where}{key} was dropped"
        if isinstance(value, dict) and isinstance(whole[key], dict):
            _holds(value, whole[key], f"{where}{key}.")
        else:
            assert whole[key] == value, f"{where}{key}: {whole[key]!r} != {value!r}"


@pytest.mark.parametrize("preset", sorted((ROOT / "configs").glob("*/*.yaml")), ids=lambda p: p.stem)
def test_every_preset_loads_and_round_trips(preset):
    config = cfg.load(preset)
    assert cfg.from_dict(cfg.ExperimentConfig, config.to_dict()) == config
    # The modality's own section types, and every value the preset sets arrives unchanged.
    modality = registry.MODALITIES[config.modality]
    assert (type(config.data), type(config.sample), type(config.evaluate)) == (
        modality.data_config, modality.sample_config, modality.evaluate_config)
    _holds(yaml.safe_load(preset.read_text()), config.to_dict())


def test_params_yaml_is_whole_sections_that_match_a_preset():
    """params.yaml holds one whole section per modality (every key read), here the quick presets."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    registry.load_plugins()
    assert sorted(params) == sorted(registry.MODALITIES)
    for modality, section in params.items():
        config = cfg.load_params(ROOT / "params.yaml", modality)
        assert cfg.params_entry(config) == section  # nothing left to a default, nothing unread
        assert config == cfg.load(ROOT / f"configs/{modality}/quick.yaml")


def test_params_section_then_set_and_other_sections_ignored(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"image": {"train": {"epochs": 7, "lr": 0.01}},
                                      "molecule": {"model": {"latent_dim": 3}}}))
    config = cfg.load_params(params, "image", overrides=["train.epochs=9"])
    assert config.train.epochs == 9  # --set wins
    assert config.train.lr == 0.01
    assert config.model.latent_dim == 16  # another modality's section is not applied
    params.write_text(yaml.safe_dump({"image": {}, "train": {"image": {"epochs": 3}}}))  # the old layout
    with pytest.raises(cfg.ConfigError, match=r"unknown section 'train'; it holds one section per modality \(image, molecule, timeseries\)"):
        cfg.load_params(params, "image")
    params.write_text(yaml.safe_dump({"image": {}}))
    with pytest.raises(cfg.ConfigError, match=r"has no timeseries section; write one with vaeflow params --modality timeseries"):
        cfg.load_params(params, "timeseries")


def test_exponent_floats_parse_as_numbers_in_files_and_overrides(tmp_path):
    assert cfg.load(TINY, overrides=["train.lr=3e-4"]).train.lr == 3e-4
    preset = tmp_path / "p.yaml"
    preset.write_text(TINY.read_text() + "\n# appended\n")
    assert cfg.load(preset).train.lr == 0.001
    params = tmp_path / "params.yaml"
    params.write_text("image:\n  train:\n    lr: 1E-5\n")
    assert cfg.load_params(params, "image").train.lr == 1e-5


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
        ("train.precision=fp16", r"train\.precision: 'fp16' is not allowed; use one of 'fp32' \| 'bf16' \| 'auto'"),
        ("model.encoder.name=transformer", r"model\.encoder\.name: unknown encoder 'transformer'; allowed: (\w+, )*conv2d\b"),
        ("model.encoder.depth=3", r"unknown key model\.encoder\.depth for encoder 'conv2d'; allowed keys: name, channels, hidden"),
        ("model.encoder.channels=[8, x]", r"model\.encoder\.channels\[1\]: expected int"),
        ("model.decoder.likelihood=poisson", r"model\.decoder\.likelihood: 'poisson' is not allowed"),
        ("data.dataset=cifar", r"data\.dataset: unknown image data set 'cifar'; allowed: fashion-mnist, mnist$"),
        # Another modality's data set and keys: one line naming this modality and what it allows.
        ("data.dataset=stocks", r"data\.dataset: unknown image data set 'stocks'; allowed: fashion-mnist, mnist$"),
        ("data.window=5", r"^unknown key data\.window for modality image; allowed keys: dataset, source, path, val_size, limit_train, limit_test, binarize, mode, image_size, crop, alpha, min_size, val_fraction, test_fraction$"),
        ("evaluate.anomaly_k=4", r"^unknown key evaluate\.anomaly_k for modality image; allowed keys: iwae_k, iwae_examples, batch_size, n_fd_samples, pr_k, blur_sigma, classifier$"),
        ("sample.properties.logP=3", r"^unknown key sample\.properties for modality image; allowed keys: n, temperature$"),
        ("data.val_size=-1", r"data\.val_size must be ≥ 0, got -1"),
        ("evaluate.iwae_k=0", r"evaluate\.iwae_k must be ≥ 1, got 0"),
        ("sample.temperature=0", r"sample\.temperature must be > 0"),
        ("modality=molecule", r"modality cannot be set with --set"),
        ("train.batch_size=63", r"must be divisible by train\.num_workers"),
        ("train.epochs=0", r"train\.epochs must be ≥ 1"),
        ("train.epochs", r"must look like section\.key=value"),
    ],
)
def test_bad_config_names_the_key(override, message):
    with pytest.raises(cfg.ConfigError, match=message):
        cfg.load(TINY, overrides=[override])


@pytest.mark.parametrize(
    ("preset", "override", "message"),
    [
        (MOL_TINY, "sample.properties.logP=high", r"sample\.properties\.logP: expected float, got str 'high'"),
        (MOL_TINY, "sample.properties=3", r"sample\.properties: expected a mapping, got int 3"),
        (MOL_TINY, "data.binarize=true", r"^unknown key data\.binarize for modality molecule; allowed keys: dataset, source, path, val_size, limit_train, limit_test, smiles_column"),
        (MOL_TINY, "evaluate.posthoc_steps=0", r"^unknown key evaluate\.posthoc_steps for modality molecule; allowed keys: iwae_k"),
        (MOL_TINY, "data.dataset=fashion-mnist", r"unknown molecule data set 'fashion-mnist'; allowed: moses, qm9$"),
        (TS_TINY, "data.window=1", r"data\.window must be ≥ 2 time steps"),
        (TS_TINY, "data.val_fraction=0.9", r"data\.val_fraction \(0\.9\) and data\.test_fraction \(0\.15\) must be in \[0, 1\) and sum to less than 1"),
        (TS_TINY, "evaluate.posthoc_steps=0", r"evaluate\.posthoc_steps must be ≥ 1, got 0"),
        (TS_TINY, "evaluate.anomaly_k=0", r"evaluate\.anomaly_k must be ≥ 1, got 0"),
        (TS_TINY, "data.val_size=10", r"^unknown key data\.val_size for modality timeseries; allowed keys: dataset, source, path, window, stride"),
        (TS_TINY, "data.dataset=mnist", r"unknown timeseries data set 'mnist'; allowed: air, energy, stocks, ucr-"),
    ],
    ids=lambda v: v.stem if hasattr(v, "stem") else None,
)
def test_each_modality_checks_its_own_sections(preset, override, message):
    """A modality applies its own rules only: keys it does not read fail, other modalities' rules don't apply."""
    with pytest.raises(cfg.ConfigError, match=message):
        cfg.load(preset, overrides=[override])


def test_a_bad_value_in_a_preset_stops_the_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TS_TINY.read_text().replace("stride: 4", "stride: 0"))
    with pytest.raises(cfg.ConfigError, match=r"data\.stride must be ≥ 1, got 0"):
        cfg.load(bad)


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


def test_preset_replaces_params_yaml_and_params_writes_a_section(tmp_path, monkeypatch, capsys):
    """Defect 8: with params.yaml present, --preset used to lose to it; now the preset is used instead."""
    from vaeflow import cli

    def run(*args):
        code = cli.main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    assert yaml.safe_load(run("config", "--modality", "image")[1])["train"]["epochs"] == 5  # params.yaml (quick)
    code, out, err = run("config", "--modality", "image", "--preset", "configs/image/tiny.yaml")
    assert code == 0, err
    tiny = yaml.safe_load(out)
    assert tiny["train"]["epochs"] == 1 and tiny["data"]["limit_train"] == 512
    code, _, err = run("config", "--modality", "image", "--preset", "configs/molecule/tiny.yaml")
    assert code == 2 and err.splitlines() == [
        "vaeflow config: error: preset configs/molecule/tiny.yaml is for modality 'molecule', not 'image'; pass --modality molecule"]
    # vaeflow params writes the preset's whole resolved config (+ --set) into that modality's section only.
    before = yaml.safe_load((tmp_path / "params.yaml").read_text())
    code, _, err = run("params", "--modality", "image", "--preset", "configs/image/tiny.yaml", "--set", "train.epochs=2")
    assert code == 0, err
    after = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert after["image"]["train"]["epochs"] == 2 and after["image"]["data"]["limit_train"] == 512
    assert after["molecule"] == before["molecule"] and after["timeseries"] == before["timeseries"]
    assert yaml.safe_load(run("config", "--modality", "image")[1]) == {**tiny, "train": {**tiny["train"], "epochs": 2}}
    (tmp_path / "params.yaml").unlink()
    code, _, err = run("config", "--modality", "image")
    assert code == 2 and "params.yaml not found; pass --preset configs/image/quick.yaml" in err


def _untrained_timeseries_model(tmp_path, anomaly_k):
    """A timeseries model file (untrained: the test is about which k scores, not the scores)."""
    from vaeflow.models.vae import build_model
    from vaeflow.modalities.timeseries.data import Scaler
    from vaeflow.training import checkpoint

    config = cfg.load(TS_TINY, overrides=[f"evaluate.anomaly_k={anomaly_k}"])
    spec = {"channels": 2, "length": 24, "num_classes": 0, "channel_names": ["a", "b"], "raw_channels": 2,
            "channels_kept": [0, 1], "scaler": Scaler("minmax", (0.0, 0.0), (1.0, 1.0)).to_dict()}
    model = build_model(config.model, spec)
    path = tmp_path / "model.pt"
    checkpoint.save(path, model=model.state_dict(), config=config.to_dict(), input_spec=spec, epoch=1, mlflow_run_id="")
    return path


def test_anomaly_k_comes_from_the_current_config_not_the_checkpoint(tmp_path, capsys):
    """Defect 6: ``vaeflow anomaly`` read anomaly_k from the train-time config inside model.pt."""
    from vaeflow import cli

    model = _untrained_timeseries_model(tmp_path, anomaly_k=7)
    data = tmp_path / "series.csv"
    data.write_text("a,b\n" + "\n".join(f"{i % 5 / 5},{i % 3 / 3}" for i in range(30)) + "\n")
    params = tmp_path / "params.yaml"
    section = cfg.params_entry(cfg.load(TS_TINY, overrides=["evaluate.anomaly_k=3"]))  # a whole section, as vaeflow params writes
    params.write_text(yaml.safe_dump({"timeseries": section}))

    def k(*extra):
        assert cli.main(["anomaly", str(data), "--model", str(model), "--params", str(params), *extra]) == 0
        return json.loads(capsys.readouterr().out)["k"]

    assert k() == 3  # params.yaml's timeseries section, not the model's 7
    assert k("--set", "evaluate.anomaly_k=5") == 5
    assert k("--preset", str(TS_TINY)) == 4
    assert k("--k", "2") == 2


def test_stage_settings_are_params_of_the_run_and_a_changed_rerun_is_recorded(tmp_path):
    """Defect 6: each stage's own settings are recorded in the job's run, also on a rerun with others."""
    from vaeflow import tracking
    from tests.conftest import tiny_config

    config = tiny_config(tmp_path)
    c = tracking.client(config.tracking)
    run_id = tracking.start_run(config, {}, run_name="job")
    params = c.get_run(run_id).data.params
    assert params["train.epochs"] == "1" and not any(k.startswith(("sample.", "evaluate.")) for k in params)
    tracking.log_stage_config(c, run_id, "evaluate", config.evaluate, used={"n_test": 256, "iwae_k": 10, "iwae_examples": 64})
    run = c.get_run(run_id).data
    assert run.params["evaluate.iwae_k"] == "10" and run.params["evaluate.n_test"] == "256"
    assert "evaluate.iwae_examples_used" not in run.params  # the same as the section's value
    rerun = cfg.load(TINY, overrides=["evaluate.iwae_k=3"])
    tracking.log_stage_config(c, run_id, "evaluate", rerun.evaluate, used={"n_test": 256, "iwae_k": 3, "iwae_examples": 64})
    run = c.get_run(run_id).data
    assert run.params["evaluate.iwae_k"] == "10" and run.tags["evaluate.iwae_k"] == "3"
    saved = json.loads(open(c.download_artifacts(run_id, "stage_config/evaluate.json", str(tmp_path))).read())
    assert saved["config"]["iwae_k"] == 3 and saved["used"]["n_test"] == 256


def test_evaluate_logs_its_settings_as_params_not_metrics(project):
    """Defect 8: iwae_k, iwae_examples and n_test were logged as MLflow metrics."""
    import torch

    from vaeflow import stages, tracking
    from vaeflow.models.vae import build_model
    from vaeflow.training import checkpoint
    from tests.conftest import tiny_config

    config = tiny_config(project, "evaluate.iwae_k=2", "evaluate.iwae_examples=8")
    paths = stages.Paths.for_modality("image", project)
    modality = registry.MODALITIES["image"]
    spec = modality.data.input_spec(paths.processed)
    torch.manual_seed(0)
    model = build_model(config.model, spec)  # untrained: the test is about what is logged where
    c = tracking.client(config.tracking)
    run_id = tracking.start_run(config, {}, run_name="job")
    c.create_registered_model(config.tracking.registered_model)
    version = c.create_model_version(config.tracking.registered_model, source=str(project), run_id=run_id).version
    paths.model.mkdir(parents=True)
    checkpoint.save(paths.model / "model.pt", model=model.state_dict(), config=config.to_dict(), input_spec=spec,
                    epoch=1, mlflow_run_id=run_id)
    (paths.model / "run.json").write_text(json.dumps({"mlflow_run_id": run_id, "registered_model": config.tracking.registered_model,
                                                       "model_version": version}))
    stages.classifier(config, paths)
    metrics = stages.evaluate(config, paths, progress=False)
    assert metrics["iwae_k"] == 2 and metrics["n_test"] == 256  # evaluate.json keeps them for `dvc metrics`
    run = c.get_run(run_id).data
    assert not {"iwae_k", "iwae_examples", "n_test", "n_fd_samples", "n_fd_train"} & set(run.metrics)
    assert "test_nll_iwae" in run.metrics
    assert (run.params["evaluate.iwae_k"], run.params["evaluate.iwae_examples"], run.params["evaluate.n_test"]) == ("2", "8", "256")


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
