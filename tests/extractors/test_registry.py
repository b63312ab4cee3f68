"""The backbone registry, checkpoint reading/unwrapping helpers and `avfuse backbones`."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from extractors import (
    BackboneEntry,
    InputSpec,
    get_backbone,
    list_backbones,
    load_backbone,
    read_checkpoint,
    register_backbone,
)
from extractors import checkpoints as ck
from extractors.counting import count_params
from pipeline.cli.backbones import backbones_cmd, measure_gmacs
from pipeline.core import BackboneError

AUDIO = {"ge2e_lstm": 256, "ecapa_tdnn": 192, "ecapa_tdnn_c512": 192, "resnet34": 256, "mobilenetv2_mel": 256}


pytestmark = pytest.mark.usefixtures("one_thread")



# --------------------------------------------------------------------------- registry

def test_audio_backbones_registered_with_specs():
    names = {e.name for e in list_backbones("audio")}
    assert set(AUDIO) <= names
    for name, dim in AUDIO.items():
        e = get_backbone(name)
        assert e.modality == "audio" and e.spec.modality == "audio"
        assert e.spec.sample_rate == 16000 and e.spec.embedding_dim == dim
        assert e.spec.features in ("mel40", "fbank80", "logmel64")
        assert e.formats, name


def test_unknown_name_lists_known_names():
    with pytest.raises(BackboneError) as ei:
        get_backbone("ecapa_tdnnn")
    msg = str(ei.value)
    assert "unknown backbone 'ecapa_tdnnn'" in msg
    for name in AUDIO:
        assert name in msg


def test_register_conflicts_are_refused():
    spec = InputSpec(modality="audio", embedding_dim=4, sample_rate=16000, features="mel40")
    other = BackboneEntry(name="ge2e_lstm", modality="audio", spec=spec, build=lambda: nn.Linear(1, 1),
                          load_state=lambda m, raw: None)
    with pytest.raises(BackboneError, match="registered twice"):
        register_backbone(other)
    odd = BackboneEntry(name="test_odd_modality", modality="face", spec=spec, build=lambda: nn.Linear(1, 1),
                        load_state=lambda m, raw: None)
    with pytest.raises(BackboneError, match="modality"):
        register_backbone(odd)
    assert "test_odd_modality" not in {e.name for e in list_backbones()}


def test_random_weights_are_explicit_seeded_and_recorded():
    with pytest.raises(BackboneError, match="no weights given"):
        load_backbone("ge2e_lstm", "")
    m1, info = load_backbone("ge2e_lstm", "random", seed=3)
    m2, _ = load_backbone("ge2e_lstm", "random", seed=3)
    m3, _ = load_backbone("ge2e_lstm", "random", seed=4)
    assert info["weights"] == "random" and info["sha256"] is None and info["seed"] == 3
    assert info["checkpoint_format"] == "random" and info["frontend"] == "mel40"
    assert info["embedding_dim"] == 256 and info["spec"]["features"] == "mel40"
    assert not m1.training
    assert torch.equal(m1.linear.weight, m2.linear.weight)
    assert not torch.equal(m1.linear.weight, m3.linear.weight)
    json.dumps(info)  # provenance must be JSON-able


def test_checkpoint_info_has_sha256_and_format(tmp_path):
    src, _ = load_backbone("ge2e_lstm", "random", seed=1)
    path = tmp_path / "enc.pt"
    torch.save({"model_state": src.state_dict()}, path)
    _, info = load_backbone("ge2e_lstm", path)
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info["weights"] == str(path.resolve())
    assert info["checkpoint_format"] == "resemblyzer pretrained.pt"
    json.dumps(info)


def test_missing_file(tmp_path):
    with pytest.raises(BackboneError) as ei:
        load_backbone("resnet34", tmp_path / "nope.pt")
    assert "not found" in str(ei.value) and "nope.pt" in str(ei.value)


class _NotAStateDict(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)


def test_pickled_module_is_refused_by_weights_only(tmp_path):
    path = tmp_path / "whole_model.pt"
    torch.save(_NotAStateDict(), path)               # pickles the class, not a state dict
    with pytest.raises(BackboneError) as ei:
        load_backbone("ge2e_lstm", path)
    msg = str(ei.value)
    assert "not a plain state dict" in msg and "weights_only" in msg and "whole_model.pt" in msg
    assert "state_dict()" in msg                      # the hint says how to re-save it


@pytest.mark.parametrize("content", [b"", b"not a torch file at all" * 10])
def test_unreadable_files(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(BackboneError, match="cannot read checkpoint"):
        read_checkpoint(path)


def test_truncated_checkpoint(tmp_path):
    src, _ = load_backbone("ge2e_lstm", "random")
    path = tmp_path / "cut.pt"
    torch.save(src.state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BackboneError, match="cannot read checkpoint"):
        load_backbone("ge2e_lstm", path)


@pytest.mark.parametrize("obj", [[torch.zeros(3)], torch.zeros(3), {"step": 3, "note": "x"}, {}])
def test_non_state_dict_contents(tmp_path, obj):
    path = tmp_path / "odd.pt"
    torch.save(obj, path)
    with pytest.raises(BackboneError, match="not a state dict"):
        load_backbone("ecapa_tdnn_c512", path)


# --------------------------------------------------------------------------- checkpoint helpers

def test_strip_and_add_prefixes_round_trip():
    sd = {"a.weight": torch.zeros(2), "b.bias": torch.ones(1)}
    wrapped = ck.add_prefix(ck.add_prefix(sd, "front."), "module.")
    assert set(wrapped) == {"module.front.a.weight", "module.front.b.bias"}
    back, stripped = ck.strip_prefixes(wrapped)
    assert stripped == ["module.", "front."] and back.keys() == sd.keys()
    # a prefix only some keys carry is not stripped
    mixed = {"module.a": torch.zeros(1), "b": torch.zeros(1)}
    assert ck.strip_prefixes(mixed) == (mixed, [])


def test_unwrap_nesting_and_training_heads():
    sd = {"lstm.weight_ih_l0": torch.zeros(4, 2), "similarity_weight": torch.ones(1)}
    raw = {"step": 10, "model_state": sd, "optimizer_state": {"state": {}}}
    assert ck.unwrap_state_dict(raw, "x") == sd
    assert ck.unwrap_state_dict({"state_dict": {"model": sd}}, "x") == sd
    kept, dropped = ck.split_training_only({**sd, "projection.weight": torch.zeros(3, 3)})
    assert set(kept) == {"lstm.weight_ih_l0"} and set(dropped) == {"similarity_weight", "projection.weight"}
    with pytest.raises(BackboneError, match="holds a list"):
        ck.unwrap_state_dict([sd], "x")


def test_guess_layout_names_foreign_checkpoints():
    import torchvision

    assert ck.guess_layout(torchvision.models.resnet18().state_dict()).startswith("torchvision ResNet")
    assert ck.guess_layout({"lstm.weight_ih_l0": torch.zeros(1), "linear.weight": torch.zeros(1)}).startswith(
        "resemblyzer")
    assert ck.guess_layout({"foo": torch.zeros(1)}) is None


# --------------------------------------------------------------------------- avfuse backbones

def test_backbones_cli_json_and_table():
    runner = CliRunner()
    res = runner.invoke(backbones_cmd, ["--json", "--modality", "audio"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert set(AUDIO) <= set(rows)
    for name, dim in AUDIO.items():
        r = rows[name]
        assert r["modality"] == "audio" and r["embedding_dim"] == dim and r["formats"]
        assert r["spec"]["sample_rate"] == 16000 and r["params"] > 1e6
    # published parameter counts: WeSpeaker README (ECAPA_TDNN_GLOB_c512 6.19M, ResNet34 6.63M)
    assert round(rows["ecapa_tdnn_c512"]["params"] / 1e6, 2) == 6.19
    assert round(rows["resnet34"]["params"] / 1e6, 2) == 6.63
    assert rows["ge2e_lstm"]["params"] == 4 * 256 * (40 + 256 + 2) + 2 * 4 * 256 * (256 + 256 + 2) + 256 * 257
    res = runner.invoke(backbones_cmd, ["--modality", "audio"])
    assert res.exit_code == 0 and "ecapa_tdnn_c512" in res.output and "accepted checkpoint formats" in res.output
    assert "WeSpeaker avg_model.pt" in res.output


def test_backbones_cli_help():
    res = CliRunner().invoke(backbones_cmd, ["--help"])
    assert res.exit_code == 0 and "--json" in res.output and "--macs" in res.output


def test_measure_gmacs_counts_lstm_and_projections():
    from extractors.audio.ge2e import partial_starts

    entry = get_backbone("ge2e_lstm")
    torch.manual_seed(0)
    module = entry.build(**entry.build_kwargs)
    seconds = 3.0
    n = int(seconds * 16000)
    starts = partial_starts(n)
    p = len(starts)
    lstm = p * 160 * 4 * 256 * ((40 + 256) + 2 * (256 + 256))
    linear = p * 256 * 256
    padded = max(n, (starts[-1] + 160) * 160)          # the clip is zero-padded to cover its last window
    mel = (1 + padded // 160) * 201 * 40                # mel projection of every STFT frame
    expected = (lstm + linear + mel) / 1e9 / seconds
    got = measure_gmacs(entry, module, seconds=seconds)
    assert got == pytest.approx(expected, rel=0.02)
    assert count_params(module) == sum(p.numel() for p in module.parameters())
