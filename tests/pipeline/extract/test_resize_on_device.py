"""``--resize-on device``: faces handed over at the source size and resized by the backbone's
device. The resize must equal an independent reference (PIL's antialiased bilinear filter
written out in numpy), the embeddings must be the backbone on those pixels, the option must be
in the provenance (and absent by default, so existing fingerprints stay), and an extraction
through the shared-memory hand-off must leave nothing in /dev/shm."""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import pytest

from benchmarks.voxceleb_media import generate
from data_manifests.manifest import read_manifest
from pipeline.core import ConfigError
from pipeline.extract import ExtractConfig, get_models, run_extract
from pipeline.extract.decode_pool import DecodeSpec, decode_clip
from pipeline.extract.embed import embed_faces, faces_on_device

pytestmark = pytest.mark.usefixtures("one_thread")
CFG = ExtractConfig(face_backbone="iresnet18", face_weights="random", frames=2, dtype="float32", batch_size=2,
                    num_workers=2, shard_size=2)


def triangle_weights(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` weights of PIL's BILINEAR resize (triangle filter stretched by the
    scale when shrinking, normalised per output pixel), as in PIL's ``precompute_coeffs``."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    W = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) * scale
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), n_in)
        x = np.arange(lo, hi)
        w = np.maximum(0.0, 1.0 - np.abs((x - centre + 0.5) / support))
        W[i, lo:hi] = w / w.sum()
    return W


def reference_resize(faces: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``(F, 3, H, H)`` -> float64 ``(F, 3, size, size)``, separable, no torch."""
    W = triangle_weights(faces.shape[-1], size)
    return W @ faces.astype(np.float64) @ W.T


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("resize")
    return generate(root / "vox2", kind="vox2", durations=[0.6, 1.0, 0.8], progress=False)


def test_device_resize_equals_an_independent_reference(media):
    recs = read_manifest(media)
    spec = DecodeSpec(audio_sr=None, face_size=112, frames=2, resize_on="device")
    faces = [decode_clip(r, spec).faces for r in recs]
    assert all(f.shape == (2, 3, 224, 224) for f in faces)
    odd = faces[0][:, :, 5:195, 5:195].copy()           # another source side in the same batch
    got = faces_on_device([faces[0], faces[1], odd, faces[2]], 112, "cpu").numpy()
    ref = np.concatenate([reference_resize(f, 112) for f in (faces[0], faces[1], odd, faces[2])])
    assert got.shape == ref.shape == (8, 3, 112, 112)
    assert np.abs(got - ref).max() < 1e-3                # float32 rounding only
    same = faces_on_device([faces[0][:, :, :112, :112]], 112, "cpu").numpy()
    assert np.array_equal(same, faces[0][:, :, :112, :112].astype(np.float32))   # right size: untouched


def test_embeddings_are_the_backbone_on_the_reference_pixels(media):
    import torch
    recs = read_manifest(media)
    models = get_models(CFG)
    spec = DecodeSpec(audio_sr=None, face_size=112, frames=2, resize_on="device")
    faces = [decode_clip(r, spec).faces for r in recs]
    res = embed_faces(models, faces, [np.ones(2, bool)] * len(faces), CFG)
    info = models.face_info["spec"]
    mean = np.asarray(info["mean"] or (0, 0, 0)).reshape(1, 3, 1, 1)
    std = np.asarray(info["std"] or (1, 1, 1)).reshape(1, 3, 1, 1)
    x = np.concatenate([(reference_resize(f, 112) / 255.0 - mean) / std for f in faces])
    with torch.inference_mode():
        ref = models.face(torch.from_numpy(x.astype(np.float32))).numpy().reshape(len(faces), 2, -1)
    np.testing.assert_allclose(res.frames, ref, rtol=1e-3, atol=1e-4)
    assert res.ok.all()


def test_option_in_the_provenance_and_nothing_left_in_dev_shm(media, tmp_path):
    before = set(os.listdir("/dev/shm"))
    dev = run_extract(media, tmp_path / "dev.zarr", dataclasses.replace(CFG, resize_on="device"), progress=False)
    cpu = run_extract(media, tmp_path / "cpu.zarr", CFG, progress=False)
    assert dev.failed_clips == cpu.failed_clips == 0 and dev.clips_computed == 3
    from pipeline.cache import open_cache
    with open_cache(tmp_path / "dev.zarr") as d, open_cache(tmp_path / "cpu.zarr") as c:
        assert d.provenance["config"]["resize_on"] == "device"
        assert "resize_on" not in c.provenance["config"]          # the default keeps every fingerprint
        a, b = d.to_numpy("face/frames"), c.to_numpy("face/frames")
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert cos.min() > 0.99                                       # same frames, pixels a little apart
    new = set(os.listdir("/dev/shm")) - before
    time.sleep(0.5)
    assert not (new & set(os.listdir("/dev/shm"))), new
    with pytest.raises(ConfigError, match="resize_on"):
        dataclasses.replace(CFG, resize_on="gpu").validate()


def test_auto_resumes_a_cache_as_it_was_begun(media, tmp_path, capsys):
    """``auto`` follows an existing cache's recorded resize (``device`` begun on a GPU box,
    resumed on a CPU one: ``auto`` alone would pick ``cpu`` there and be refused)."""
    from pipeline.cache import open_cache
    from pipeline.core import CacheError
    from pipeline.extract import follow_cache
    path = tmp_path / "c.zarr"
    first = run_extract(media, path, dataclasses.replace(CFG, resize_on="device"), progress=False)
    assert first.shards_computed == 2
    auto = dataclasses.replace(CFG, resize_on="auto")
    assert auto.compute_resize_on() == "cpu"                          # what auto picks on this CPU
    assert follow_cache(auto, path).resize_on == "device"
    assert follow_cache(auto, path, overwrite=True).resize_on == "auto"
    assert follow_cache(auto, tmp_path / "none.zarr").resize_on == "auto"
    with pytest.raises(CacheError, match="made differently"):        # explicit choices are not followed
        run_extract(media, path, dataclasses.replace(CFG, resize_on="cpu"), progress=False)
    capsys.readouterr()
    again = run_extract(media, path, auto, progress=True)
    assert again.shards_computed == 0 and again.shards_skipped == 2
    plan = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("avfuse: extract")]
    assert plan == ["avfuse: extract 0 of 3 clips (0 of 2 shards): iresnet18 on cpu (fp32); 2 decode workers; "
                    "faces resized on the device; batch 2 clips"]
    with open_cache(path) as c:
        assert c.provenance["config"]["resize_on"] == "device"
    cpu_path = tmp_path / "cpu.zarr"
    run_extract(media, cpu_path, dataclasses.replace(CFG, resize_on="cpu"), progress=False)
    assert follow_cache(dataclasses.replace(auto, device="cuda"), cpu_path).compute_resize_on() == "cpu"
