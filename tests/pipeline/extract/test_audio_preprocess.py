"""The audio weights' preprocessing in extraction (ge2e_lstm ``pretrained``: resemblyzer's
volume normalisation and webrtcvad silence trimming): applied to the whole clip before the
clip and segment embeddings, recorded in the provenance, switched off by
``pretrained-novad``, an all-silent clip kept untrimmed. Real wav files, real Zarr caches,
the real GE2E weights when resemblyzer is installed (random weights otherwise)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_manifests import ClipRecord, write_manifest
from extractors.audio.ge2e import ResemblyzerPreprocess, pretrained_path
from pipeline.cache import open_cache
from pipeline.core import BackboneError, CacheError
from pipeline.extract import ExtractConfig, resolve_config, run_extract
from tests.extractors.audio.test_frontends import SPEAKER_A, SPEAKER_B, toy_voice

pytest.importorskip("webrtcvad")
pytestmark = pytest.mark.usefixtures("one_thread")
SR = 16000
BASE = dict(audio_backbone="ge2e_lstm", segments=4, dtype="float32", num_workers=0, batch_size=4)


def _weights() -> str:
    try:
        pretrained_path()
        return "pretrained"
    except BackboneError:
        return "random"


def _extract(tmp: Path, name: str, waves: dict[str, np.ndarray], **cfg):
    """Write ``waves`` as float wav files (exact samples), extract them, return the cache."""
    d = tmp / name
    d.mkdir()
    recs = []
    for k, (clip, w) in enumerate(waves.items()):
        path = d / f"{clip}.wav"
        sf.write(path, w, SR, subtype="FLOAT")
        recs.append(ClipRecord(clip_id=f"id{10000 + k}/v/{clip}", speaker=f"id{10000 + k}", video="v",
                               audio_path=str(path)))
    write_manifest(d / "m.jsonl", recs)
    run_extract(d / "m.jsonl", d / "c.zarr", ExtractConfig(**{**BASE, **cfg}), progress=False,
                decode_backend="thread")
    return open_cache(d / "c.zarr")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pre")
    a, b = toy_voice(*SPEAKER_A, 1.4, 1), toy_voice(*SPEAKER_B, 1.2, 2)
    noise = (1e-3 * np.random.default_rng(0).standard_normal(2 * SR)).astype(np.float32)
    waves = {"paused": np.concatenate([np.zeros(SR // 2, np.float32), a, noise, b]),
             "silent": np.zeros(SR + 123, np.float32),
             "plain": np.concatenate([a, b])}
    trimmed = {k: ResemblyzerPreprocess()(w) for k, w in waves.items()}
    w = _weights()
    novad_weights = "pretrained-novad" if w == "pretrained" else w
    return dict(waves=waves, trimmed=trimmed, weights=w,
                vad=_extract(tmp, "vad", waves, audio_weights=w, audio_preprocess="resemblyzer_vad"),
                novad=_extract(tmp, "novad", waves, audio_weights=novad_weights),
                novad_on_trimmed=_extract(tmp, "pre_trimmed", trimmed, audio_weights=novad_weights),
                tmp=tmp)


def test_pretrained_resolves_to_the_preprocessing_and_novad_switches_it_off():
    try:
        on = resolve_config(ExtractConfig(audio_backbone="ge2e_lstm", audio_weights="pretrained"))
        off = resolve_config(ExtractConfig(audio_backbone="ge2e_lstm", audio_weights="pretrained-novad"))
    except BackboneError as e:
        pytest.skip(str(e))
    assert on.audio_preprocess == "resemblyzer_vad" and off.audio_preprocess is None
    assert on.audio_weights == off.audio_weights and Path(on.audio_weights).is_file()
    with pytest.raises(BackboneError, match="no input preprocessing 'nope'"):
        from pipeline.extract import get_models
        get_models(ExtractConfig(audio_backbone="ge2e_lstm", audio_weights="random", audio_preprocess="nope"))


def test_clip_and_segments_come_from_the_trimmed_wave(runs):
    vad, pre = runs["vad"], runs["novad_on_trimmed"]
    assert len(runs["trimmed"]["paused"]) < len(runs["waves"]["paused"]) - SR      # the pause was cut
    for name in ("audio/clip", "audio/segments", "audio/segment_valid"):
        np.testing.assert_allclose(vad.to_numpy(name), pre.to_numpy(name), rtol=1e-5, atol=1e-5)
    # the cache's duration is the decoded (untrimmed) audio's
    np.testing.assert_allclose(vad.to_numpy("duration"), [len(w) / SR for w in runs["waves"].values()], atol=1e-6)


def test_the_trimming_changes_paused_clips_only(runs):
    x, y = runs["vad"].to_numpy("audio/clip"), runs["novad"].to_numpy("audio/clip")
    cos = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    paused, silent, plain = cos
    assert paused < 0.999                                 # 2.5 s of silence and noise removed
    assert silent == pytest.approx(1.0, abs=1e-6)         # all silent: the untrimmed wave
    assert plain > 0.999                                  # continuous voice: (almost) nothing cut
    assert runs["vad"].to_numpy("has_audio").all() and not runs["vad"].failures()


def test_provenance_records_the_preprocessing(runs):
    prov = runs["vad"].provenance["audio_backbone"]
    assert prov["preprocess"]["name"] == "resemblyzer_vad"
    assert (prov["preprocess"]["window_ms"], prov["preprocess"]["mode"]) == (30, 3)
    assert "preprocess" not in runs["novad"].provenance["audio_backbone"]
    assert runs["vad"].fingerprint != runs["novad"].fingerprint


def test_a_cache_is_not_resumed_with_the_other_setting(runs):
    d = runs["tmp"] / "novad"
    cfg = ExtractConfig(**{**BASE, "audio_weights": runs["weights"], "audio_preprocess": "resemblyzer_vad"})
    with pytest.raises(CacheError):
        run_extract(d / "m.jsonl", d / "c.zarr", cfg, progress=False, decode_backend="thread")
