"""``avfuse extract --segment-windows centre`` (the DCA authors' 8 x 1.015 s windows) end to
end on real wav files, a real backbone (mobilenetv2_mel, random weights) and a real Zarr cache."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from data_manifests import ClipRecord, write_manifest
from extractors.windows import window_samples
from pipeline.core import CacheError, ConfigError, fingerprint
from pipeline.extract import ExtractConfig, get_models, run_extract

pytestmark = pytest.mark.usefixtures("one_thread")

SR = 16000
W = window_samples(SR)
SECONDS = {"id00001/v/00001": 0.3, "id00001/v/00002": 0.75, "id00002/v/00001": 3.0, "id00002/v/00002": 9.0}
AUDIO = dict(audio_backbone="mobilenetv2_mel", audio_weights="random", segments=8, dtype="float32",
             shard_size=2, batch_size=4, num_workers=0, min_segment_seconds=0.5)


def _wave(seconds: float, seed: int) -> np.ndarray:
    """A tone of another random pitch and level every 0.2 s (so windows at other places hear other
    sounds), on the 16-bit grid (k / 32768): any decoder returns exactly these floats."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SR))
    piece = np.arange(n) // (SR // 5)
    freq = rng.uniform(100, 4000, piece[-1] + 1)[piece]
    amp = rng.uniform(1000, 12000, piece[-1] + 1)[piece]
    k = np.round(amp * np.sin(2 * np.pi * freq * np.arange(n) / SR))
    return (k / 32768.0).astype(np.float32)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    import soundfile as sf
    root = tmp_path_factory.mktemp("windows")
    recs, waves = [], {}
    for j, (cid, sec) in enumerate(SECONDS.items()):
        waves[cid] = _wave(sec, j)
        path = root / f"{j}.wav"
        sf.write(str(path), waves[cid], SR, subtype="PCM_16")
        recs.append(ClipRecord(clip_id=cid, speaker=cid.split("/")[0], video="v", audio_path=str(path), split="train"))
    write_manifest(root / "manifest.jsonl", recs)
    equal = ExtractConfig(**AUDIO)
    centre = ExtractConfig(**AUDIO, segment_windows="centre")
    run_extract(root / "manifest.jsonl", root / "equal.zarr", equal, progress=False)
    run_extract(root / "manifest.jsonl", root / "centre.zarr", centre, progress=False)
    return SimpleNamespace(root=root, waves=waves, equal=equal, centre=centre)


def _unit(x):
    """Rows scaled to unit length: the random-weight backbone's embeddings are ~1e-9 in size, so
    they are compared by direction (an absolute tolerance would pass anything)."""
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _same(a, b):
    np.testing.assert_allclose(_unit(a), _unit(b), rtol=0, atol=1e-4)


def _arrays(path):
    from pipeline.cache import open_cache
    with open_cache(path) as c:
        return {n: c.to_numpy(n, dtype=None) for n in c.names}, c.provenance, c.fingerprint


def test_config_default_keeps_the_provenance_fingerprint():
    # the embedding config of the default ExtractConfig, as written before the option existed
    # (computed from the previous commit's ExtractConfig): existing caches stay valid
    assert fingerprint(ExtractConfig().embedding_config()) == "fd0c1a187723d219"
    assert "segment_windows" not in ExtractConfig().embedding_config()
    assert ExtractConfig(segment_windows="centre").embedding_config()["segment_windows"] == "centre"
    with pytest.raises(ConfigError, match="segment_windows"):
        ExtractConfig(**AUDIO, segment_windows="middle").validate()


def test_centre_windows_differ_from_equal_parts_same_shape(runs):
    eq, p_eq, fp_eq = _arrays(runs.root / "equal.zarr")
    ce, p_ce, fp_ce = _arrays(runs.root / "centre.zarr")
    assert p_ce["config"]["segment_windows"] == "centre" and "segment_windows" not in p_eq["config"]
    assert fp_ce != fp_eq
    assert set(eq) == set(ce) and all(eq[n].shape == ce[n].shape for n in eq)
    assert ce["has_audio"].all()
    _same(ce["audio/clip"], eq["audio/clip"])                   # the whole clip: the same in both
    for i in (1, 2, 3):                          # every clip with real audio in a window gets other segments
        assert np.abs(_unit(ce["audio/segments"][i]) - _unit(eq["audio/segments"][i])).max() > 1e-2, i
    # validity: 0.3 s < the 0.5 s minimum: none; 0.75 s: the last window; 3 s: the last 3 windows hold
    # >= 0.5 s of audio (front padding); 9 s > 8 x 1.015 s: all 8
    assert ce["audio/segment_valid"].tolist() == [[False] * 8, [False] * 7 + [True], [False] * 5 + [True] * 3,
                                                  [True] * 8]
    segs = ce["audio/segments"]
    for i, first in ((0, 7), (1, 7), (2, 5)):    # invalid slots hold the first valid window's embedding
        assert all(np.array_equal(segs[i][s], segs[i][first]) for s in range(first))


def test_centre_windows_are_the_backbone_on_those_samples(runs):
    import torch
    ce, _, _ = _arrays(runs.root / "centre.zarr")
    models = get_models(runs.centre)
    w3, w9 = runs.waves["id00002/v/00001"], runs.waves["id00002/v/00002"]
    span = len(w9) // 8
    a = 3 * span + (span - W) // 2
    windows = np.stack([w9[a:a + W],                             # 9 s clip, slot 3: the centre of span 3
                        w3[-W:],                                 # 3 s clip, slot 7: its last 1.015 s
                        np.concatenate([np.zeros(W - 12000, np.float32), runs.waves["id00001/v/00002"]])])
    with torch.inference_mode():
        emb = models.audio(torch.from_numpy(windows), torch.full((3,), W, dtype=torch.int64)).float().numpy()
    got = np.stack([ce["audio/segments"][3][3], ce["audio/segments"][2][7], ce["audio/segments"][1][7]])
    _same(got, emb)
    assert np.abs(_unit(got[0]) - _unit(got[1])).max() > 1e-2        # three different windows


def test_cli_option_and_provenance_refusal(runs, invoke, tmp_path):
    code, out, err = invoke(["extract", "--help"])
    assert code == 0 and "--segment-windows" in out and "1.015" in out
    path = tmp_path / "cli.zarr"
    args = ["extract", "-m", str(runs.root / "manifest.jsonl"), "-c", str(path), "--audio-backbone", "mobilenetv2_mel",
            "--audio-weights", "random", "--device", "cpu", "--segments", "8", "--dtype", "float32",
            "--shard-size", "2", "--num-workers", "0", "--threads", "1", "--quiet", "--segment-windows", "centre"]
    code, _, err = invoke(args)
    assert code == 0, err
    cli, prov, _ = _arrays(path)
    ref, _, _ = _arrays(runs.root / "centre.zarr")
    assert prov["config"]["segment_windows"] == "centre"
    _same(cli["audio/segments"], ref["audio/segments"])
    # a cache made with the centre windows is not silently resumed with the equal parts
    with pytest.raises(CacheError):
        run_extract(runs.root / "manifest.jsonl", path, runs.equal, progress=False)
