"""The GE2E LSTM audio backbone: resemblyzer's partial windows and real weights, the
checkpoint converter, volume normalisation, and its checkpoint errors. (Shared helpers are
in ``test_backbones``; the synthetic voices in ``test_frontends``.)"""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

from extractors import load_backbone
from extractors.audio import ge2e as audio_ge2e
from pipeline.core import BackboneError
from tests.extractors.audio.test_backbones import assert_layout, build, check_batch_vs_single
from tests.extractors.audio.test_frontends import SPEAKER_A, SPEAKER_B, batch_of, clips, toy_voice

pytestmark = pytest.mark.usefixtures("one_thread")


# resemblyzer 0.1.4 pretrained.pt["model_state"]: 16 tensors.
REF_GE2E = {"lstm.weight_ih_l0": (1024, 40), "lstm.weight_hh_l0": (1024, 256), "lstm.bias_ih_l1": (1024,),
            "lstm.weight_ih_l2": (1024, 256), "lstm.bias_hh_l2": (1024,), "linear.weight": (256, 256),
            "linear.bias": (256,), "similarity_weight": (1,), "similarity_bias": (1,)}
REF_GE2E_COUNT = 16
# start frames of resemblyzer's VoiceEncoder.compute_partial_slices(n, rate=1.3, min_coverage=0.75)
REF_PARTIALS = {0: [0], 16000: [0], 30000: [0], 40000: [0, 77], 64000: [0, 77, 154, 231],
                123457: [0, 77, 154, 231, 308, 385, 462, 539, 616]}


def test_ge2e_partial_windows_match_resemblyzer():
    for n, starts in REF_PARTIALS.items():
        assert audio_ge2e.partial_starts(n) == starts, n


def _pretrained() -> str:
    try:
        return str(audio_ge2e.pretrained_path())
    except BackboneError as e:  # resemblyzer is a --no-deps install of the dev environment
        pytest.skip(str(e))


def test_ge2e_real_weights_shape_norm_padding_and_speakers():
    path = _pretrained()
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert_layout(raw["model_state"], REF_GE2E, REF_GE2E_COUNT)
    model, info = load_backbone("ge2e_lstm", path)
    assert info["checkpoint_format"] == "resemblyzer pretrained.pt" and info["sha256"]
    assert set(info["load_notes"]["dropped_keys"]) == {"similarity_weight", "similarity_bias"}
    # 3 utterances each of two toy speakers, of different lengths (padding in the batch)
    waves = ([toy_voice(*SPEAKER_A, s, seed) for s, seed in ((1.2, 1), (1.6, 2), (2.0, 3))]
             + [toy_voice(*SPEAKER_B, s, seed) for s, seed in ((1.3, 4), (1.8, 5), (1.5, 6))])
    emb = check_batch_vs_single(model, waves, rtol=1e-5, atol=1e-5)
    assert emb.shape == (6, 256)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(6))
    sim = emb @ emb.T
    spk = torch.tensor([0, 0, 0, 1, 1, 1])
    same = sim[(spk[:, None] == spk[None]) & ~torch.eye(6, dtype=torch.bool)]
    diff = sim[spk[:, None] != spk[None]]
    assert same.min() > diff.max() + 0.1 and same.mean() > diff.mean() + 0.3, (same, diff)


def test_ge2e_converter_round_trip_and_file(tmp_path):
    src = build("ge2e_lstm", seed=5)
    published = audio_ge2e.to_resemblyzer(src)
    assert_layout(published["model_state"], REF_GE2E, REF_GE2E_COUNT)
    back, undone = audio_ge2e.ge2e_state_from_checkpoint(published)
    assert back.keys() == src.state_dict().keys() and all(torch.equal(back[k], v) for k, v in src.state_dict().items())
    assert set(undone["dropped_keys"]) == {"similarity_weight", "similarity_bias"}
    prefixed = audio_ge2e.to_resemblyzer(src, prefix="module.")
    assert all(k.startswith("module.") for k in prefixed["model_state"])
    path = tmp_path / "enc.pt"
    torch.save(prefixed, path)
    model, info = load_backbone("ge2e_lstm", path, seed=99)
    assert info["load_notes"]["stripped_prefixes"] == ["module."]
    waves = clips((1.1,))
    with torch.no_grad():
        a = model(*batch_of(waves))
        b = src(*batch_of(waves))
    torch.testing.assert_close(a, b)


def test_ge2e_volume_normalisation_is_increase_only():
    x = torch.zeros(3, 1000)
    x[0, :800] = 0.001 * torch.sin(torch.arange(800.0))      # quiet: raised to -30 dBFS
    x[1, :900] = 0.5 * torch.sin(torch.arange(900.0))        # loud: unchanged
    out = audio_ge2e.normalize_volume(x, torch.tensor([800, 900, 0]))
    rms = out[0, :800].square().mean().sqrt()
    assert 20 * math.log10(float(rms)) == pytest.approx(-30.0, abs=1e-3)
    torch.testing.assert_close(out[1], x[1])
    assert torch.equal(out[2], torch.zeros(1000))             # silent/empty: left alone


def test_ge2e_missing_package_says_how_to_install(monkeypatch):
    import importlib.metadata
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)

    def no_dist(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", no_dist)
    with pytest.raises(BackboneError) as ei:
        audio_ge2e.pretrained_path()
    assert "pip install --no-deps resemblyzer==0.1.4" in str(ei.value)


def test_ge2e_mismatched_checkpoints(tmp_path):
    state = build("ge2e_lstm").state_dict()
    state["linear.weight"] = torch.zeros(128, 256)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(BackboneError) as ei:
        load_backbone("ge2e_lstm", path)
    assert "linear.weight: checkpoint (128, 256) vs expected (256, 256)" in str(ei.value)
    face = tmp_path / "face.pt"
    torch.save(torchvision.models.resnet18().state_dict(), face)
    with pytest.raises(BackboneError) as ei:
        load_backbone("ge2e_lstm", face)
    msg = str(ei.value)
    assert "torchvision ResNet" in msg and "lstm.weight_ih_l0" in msg
