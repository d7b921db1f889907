"""Contract tests shared by every encoder/decoder family, plus the VAE wrapper.

A new family adds one entry to FAMILIES: a tiny input spec, options and a batch factory.
"""

from __future__ import annotations

import io

import pytest
import torch

from vaeflow import registry
from vaeflow.config import ModelConfig, ModuleSpec
from vaeflow.models.vae import build_model

IMAGE_SPEC = {"channels": 1, "height": 12, "width": 8, "num_classes": 3}


def _image_batch(n: int, generator: torch.Generator):
    x = torch.rand(n, 1, 12, 8, generator=generator)
    return x, torch.bernoulli(x, generator=generator), torch.randint(0, 3, (n,), generator=generator)


RGB_SPEC = {"channels": 3, "height": 8, "width": 8, "num_classes": 3}


def _rgb_batch(n: int, generator: torch.Generator):
    """8-bit colour pixels (k/255), as a discretised likelihood scores them."""
    x = torch.randint(0, 256, (n, 3, 8, 8), generator=generator).float() / 255
    return x, x.clone(), torch.randint(0, 3, (n,), generator=generator)


SERIES_SPEC = {"channels": 3, "length": 10, "num_classes": 3}


def _series_batch(n: int, generator: torch.Generator):
    x = torch.randn(n, 10, 3, generator=generator)
    return x, x.clone(), torch.randint(0, 3, (n,), generator=generator)
MOLECULE_SPEC = {"atom_feature_sizes": [4, 4, 2, 5, 4, 2], "bond_feature_sizes": [4, 2, 2],
                 "vocab": ["<pad>", "<bos>", "<eos>", "[C]", "[N]", "[O]", "[=C]", "[Ring1]", "[Branch1]"],
                 "max_tokens": 7, "properties": ["logP", "QED", "SA", "weight"], "num_classes": 3}


def _molecule_batch(n: int, generator: torch.Generator):
    """Random molecular graphs (3–6 atoms, a chain plus one extra bond) with token targets."""
    from torch_geometric.data import Batch, Data

    from vaeflow.modalities.molecule.data import MoleculeTarget

    graphs = []
    for _ in range(n):
        atoms = int(torch.randint(3, 7, (1,), generator=generator))
        src = list(range(atoms - 1)) + [0]
        dst = list(range(1, atoms)) + [atoms - 1]
        ei = torch.tensor([src + dst, dst + src])
        x = torch.stack([torch.randint(0, s, (atoms,), generator=generator) for s in MOLECULE_SPEC["atom_feature_sizes"]], 1)
        e = torch.stack([torch.randint(0, s, (len(src),), generator=generator) for s in MOLECULE_SPEC["bond_feature_sizes"]], 1)
        graphs.append(Data(x=x, edge_index=ei, edge_attr=torch.cat([e, e]), num_nodes=atoms))
    tokens = torch.randint(3, 9, (n, 7), generator=generator)
    tokens[:, -2:] = torch.tensor([2, 0])  # …, <eos>, <pad>
    target = MoleculeTarget(tokens=tokens, properties=torch.randn(n, 4, generator=generator))
    return Batch.from_data_list(graphs), target, torch.randint(0, 3, (n,), generator=generator)


FAMILIES = {
    "conv2d/bernoulli": (IMAGE_SPEC, ModuleSpec("conv2d", {"channels": [4, 8], "hidden": 16}),
                         ModuleSpec("conv2d", {"channels": [8, 4], "hidden": 16}), _image_batch),
    "conv2d/gaussian": (IMAGE_SPEC, ModuleSpec("conv2d", {"channels": [4], "hidden": 16}),
                        ModuleSpec("conv2d", {"channels": [4], "hidden": 16, "likelihood": "gaussian"}), _image_batch),
    "conv2d/discretized_logistic": (RGB_SPEC, ModuleSpec("conv2d", {"channels": [4], "hidden": 16}),
                                    ModuleSpec("conv2d", {"channels": [4], "hidden": 16, "likelihood": "discretized_logistic",
                                                          "scale": "pixel"}),
                                    _rgb_batch),
    "gru/gru": (SERIES_SPEC, ModuleSpec("gru", {"hidden": 8, "layers": 2}), ModuleSpec("gru", {"hidden": 8, "layers": 2}), _series_batch),
    "conv1d/conv1d": (SERIES_SPEC, ModuleSpec("conv1d", {"channels": [4, 4]}), ModuleSpec("conv1d", {"channels": [4, 4]}), _series_batch),
    "gru/timevae": (SERIES_SPEC, ModuleSpec("gru", {"hidden": 8}),
                    ModuleSpec("timevae", {"trend_degree": 2, "seasons": [[3, 2], [2, 1]], "residual_channels": [4]}), _series_batch),
    "gine/selfies_gru": (MOLECULE_SPEC, ModuleSpec("gine", {"hidden": 8, "layers": 2}),
                         ModuleSpec("selfies_gru", {"embed": 4, "hidden": 8, "layers": 2}), _molecule_batch),
}


def _model(family: str, conditional: bool = False, seed: int = 0):
    spec, enc, dec, batch = FAMILIES[family]
    torch.manual_seed(seed)
    model = build_model(ModelConfig(latent_dim=3, encoder=enc, decoder=dec, conditional=conditional), spec)
    return model, batch


def test_every_registered_family_has_a_contract_case():
    registry.load_plugins()
    covered = {(e.name, d.name) for _, e, d, _ in FAMILIES.values()}
    assert {e for e, _ in covered} == set(registry.ENCODERS)
    assert {d for _, d in covered} == set(registry.DECODERS)


def test_every_module_declares_the_modalities_it_reads():
    registry.load_plugins()
    for reg in (registry.ENCODERS, registry.DECODERS):
        for name, cls in reg.items():
            assert set(cls.modalities) <= set(registry.MODALITIES), (reg.kind, name, cls.modalities)


@pytest.mark.parametrize("modality, key, name, allowed", [
    ("image", "encoder", "gine", "conv2d"),  # was KeyError 'atom_feature_sizes' from the train stage
    ("image", "encoder", "gru", "conv2d"),  # built, then failed inside the Ray workers
    ("molecule", "decoder", "conv2d", "selfies_gru"),
])
def test_a_module_of_another_modality_is_one_line_at_config_time(modality, key, name, allowed):
    from pathlib import Path

    from vaeflow import config as cfg

    preset = Path(__file__).parents[1] / "configs" / modality / "tiny.yaml"
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load(preset, overrides=[f"model.{key}.name={name}"])
    message = str(info.value)
    assert "\n" not in message and f"model.{key}.name" in message and f"not {modality}" in message
    assert message.endswith(f"allowed for {modality}: {allowed}")


@pytest.mark.parametrize("conditional", [False, True], ids=["plain", "conditional"])
@pytest.mark.parametrize("family", FAMILIES)
def test_shapes_finiteness_and_gradients(family, conditional):
    model, batch = _model(family, conditional)
    g = torch.Generator().manual_seed(1)
    x, target, labels = batch(5, g)
    labels = labels if conditional else None
    out = model(x, labels, target=target, generator=g)
    assert out.posterior.mu.shape == out.posterior.logvar.shape == out.z.shape == (5, 3)
    log_px = model.decoder.log_prob(out.decoded, target)
    kl = out.posterior.kl_standard_normal()
    assert log_px.shape == (5,) and kl.shape == (5, 3)
    assert torch.isfinite(log_px).all() and torch.isfinite(kl).all() and (kl >= 0).all()
    if model.decoder.likelihood in ("bernoulli", "discretized_logistic"):
        assert (log_px <= 0).all()  # a probability mass, not a density
    (kl.sum() - log_px.sum()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert not missing, f"parameters without gradient: {missing}"


@pytest.mark.parametrize("family", FAMILIES)
def test_determinism_under_a_fixed_generator(family):
    model, batch = _model(family)
    x, target, _ = batch(4, torch.Generator().manual_seed(2))
    a = model(x, target=target, generator=torch.Generator().manual_seed(3))
    b = model(x, target=target, generator=torch.Generator().manual_seed(3))
    c = model(x, target=target, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.z, b.z) and torch.equal(a.decoded.params, b.decoded.params)
    assert not torch.equal(a.z, c.z)
    s1 = model.sample(6, generator=torch.Generator().manual_seed(5))
    s2 = model.sample(6, generator=torch.Generator().manual_seed(5))
    assert torch.equal(s1, s2) and s1.shape[0] == 6


@pytest.mark.parametrize("family", FAMILIES)
def test_state_dict_round_trip_with_weights_only(family):
    model, batch = _model(family, seed=0)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    other, _ = _model(family, seed=123)
    other.load_state_dict(torch.load(buf, weights_only=True))
    x, target, _ = batch(3, torch.Generator().manual_seed(0))
    model.eval(), other.eval()
    assert torch.equal(model.encode(x).mu, other.encode(x).mu)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(model(x, target=target, generator=g()).decoded.params,
                       other(x, target=target, generator=g()).decoded.params)
    assert torch.equal(model.decode(model.encode(x).mu).params, other.decode(other.encode(x).mu).params)


@pytest.mark.parametrize("family", FAMILIES)
def test_reset_parameters_reinitialises(family):
    """reset_parameters reaches every encoder and decoder parameter: each one, overwritten with a
    sentinel first, holds a fresh initial value afterwards (random or a constant like log σ = log 0.1)."""
    model, _ = _model(family)
    fresh = {n: p.detach().clone() for n, p in model.named_parameters()}
    sentinel = 7.25
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(sentinel)
    torch.manual_seed(99)
    model.encoder.reset_parameters()
    model.decoder.reset_parameters()
    params = {n: p for n, p in model.named_parameters() if n.startswith(("encoder", "decoder"))}
    stale = [n for n, p in params.items() if (p == sentinel).any()]
    assert not stale, f"parameters reset_parameters does not reach: {stale}"
    # Random initialisations are redrawn (another seed than at construction: other values); constant
    # ones come back exactly.
    assert any(not torch.equal(fresh[n], p) for n, p in params.items())


def test_decode_folds_sample_dimensions():
    model, batch = _model("conv2d/bernoulli", conditional=True)
    x, target, labels = batch(4, torch.Generator().manual_seed(0))
    q = model.encode(x, labels)
    z = q.rsample(torch.Generator().manual_seed(0), k=7)  # (7, 4, 3)
    out = model.decode(z, labels)
    assert out.params.shape == (7, 4, 1, 12, 8)
    assert model.decoder.log_prob(out, target).shape == (7, 4)
    # Each of the k slices equals decoding that slice alone.
    assert torch.allclose(out.params[2], model.decode(z[2], labels).params, atol=1e-6)


def test_conditional_model_requires_labels():
    model, batch = _model("conv2d/bernoulli", conditional=True)
    x, _, _ = batch(2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="conditional: pass class labels"):
        model.encode(x)


def test_conditional_needs_a_labelled_data_set():
    spec = {k: v for k, v in IMAGE_SPEC.items() if k != "num_classes"}
    with pytest.raises(ValueError, match="no class labels"):
        build_model(ModelConfig(latent_dim=2, conditional=True), spec)


def test_decoder_rejects_sizes_it_cannot_produce():
    with pytest.raises(ValueError, match="not divisible by 2\\^3"):
        build_model(ModelConfig(decoder=ModuleSpec("conv2d", {"channels": [8, 8, 8]})), IMAGE_SPEC)


def test_decode_expands_the_target_along_sample_dimensions():
    """A teacher-forced decoder sees its target repeated for each of the k importance samples."""
    model, batch = _model("gine/selfies_gru")
    model.eval()
    x, target, _ = batch(4, torch.Generator().manual_seed(0))
    z = model.encode(x).rsample(torch.Generator().manual_seed(0), k=5)  # (5, 4, 3)
    out = model.decode(z, None, target)
    assert out.params.shape == (5, 4, 7, 9) and out.aux.shape == (5, 4, 4)
    lp = model.decoder.log_prob(out, target)
    assert lp.shape == (5, 4)
    assert torch.allclose(lp[3], model.decoder.log_prob(model.decode(z[3], None, target), target), atol=1e-5)


def test_property_head_reads_z_not_the_condition():
    """On a property-conditional model the condition is the property vector y itself; the property
    term must be p(y | z), so the head's predictions do not move when only the condition does."""
    spec = {k: v for k, v in MOLECULE_SPEC.items() if k != "num_classes"} | {"condition_dim": 4}
    _, enc, dec, batch = FAMILIES["gine/selfies_gru"]
    torch.manual_seed(0)
    model = build_model(ModelConfig(latent_dim=3, encoder=enc, decoder=dec, conditional=True), spec).eval()
    assert model.condition_dim == 4
    g = torch.Generator().manual_seed(0)
    _, target, _ = batch(5, g)
    z = torch.randn(5, 3, generator=g)
    a = model.decode(z, target.properties, target)
    b = model.decode(z, torch.randn(5, 4, generator=g), target)
    assert not torch.allclose(a.params, b.params)  # the tokens do read the condition
    assert torch.equal(a.aux, b.aux) and torch.equal(a.aux, model.decoder.predict_properties(z))


def test_word_dropout_blanks_teacher_forced_inputs_only_while_training():
    """Word dropout replaces the decoder's previous-token inputs by <pad> (zero embedding) during
    training: the logits at a dropped step no longer depend on the token it hid, the first step
    (<bos>) is never dropped, and an evaluating model is unaffected."""
    from vaeflow.modalities.molecule.data import MoleculeTarget

    spec, enc, _, batch = FAMILIES["gine/selfies_gru"]
    torch.manual_seed(0)
    dec = ModuleSpec("selfies_gru", {"embed": 4, "hidden": 8, "layers": 1, "word_dropout": 0.999})
    model = build_model(ModelConfig(latent_dim=3, encoder=enc, decoder=dec), spec)
    decoder = model.decoder
    x, target, _ = batch(6, torch.Generator().manual_seed(0))
    z = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    other = MoleculeTarget(tokens=target.tokens.roll(1, 0), properties=target.properties)

    decoder.train()
    torch.manual_seed(2)
    a = decoder(z, None, target).params
    torch.manual_seed(2)
    b = decoder(z, None, other).params
    assert torch.allclose(a, b)  # every input after <bos> dropped: the tokens no longer matter

    decoder.eval()
    a, b = decoder(z, None, target).params, decoder(z, None, other).params
    assert torch.allclose(a[:, 0], b[:, 0]) and not torch.allclose(a[:, 1:], b[:, 1:])
    decoder.word_dropout = 0.0
    assert torch.equal(a, decoder(z, None, target).params)

    with pytest.raises(ValueError, match="word_dropout must be in"):
        build_model(ModelConfig(latent_dim=3, encoder=enc, decoder=ModuleSpec("selfies_gru", {"word_dropout": 1.0})), spec)
