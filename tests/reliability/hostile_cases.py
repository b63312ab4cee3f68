"""The fixture of the hostile-input table: one tiny cache, a trained head, trial lists,
a manifest and a few crafted files, built once per test module (seconds); the file hashes
that show no input changed; a test backbone whose embeddings overflow float16."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np

SPEAKERS, CLIPS, DIM = 8, 4, 8


def _ids():
    ids, spk, split = [], [], []
    for s in range(SPEAKERS):
        for c in range(CLIPS):
            ids.append(f"id{s:05d}/vid{c % 2}/{c:05d}")
            spk.append(f"id{s:05d}")
            split.append("train" if s < 5 else "test")
    return ids, spk, split


def make_cache(path: Path, *, seed: int = 0, speakers=None, dtype: str = "float32", dim: int = DIM,
               nan_row: int | None = None):
    """A complete tiny cache: speaker-clustered random embeddings (audio and face, 8-d)."""
    from pipeline.cache.layout import CacheLayout
    from pipeline.cache.writer import create_cache

    ids, spk, split = _ids()
    if speakers is not None:
        spk = speakers
    rng = np.random.default_rng(seed)
    n = len(ids)
    centre_a = rng.standard_normal((SPEAKERS, dim))
    centre_v = rng.standard_normal((SPEAKERS, DIM))
    who = np.repeat(np.arange(SPEAKERS), CLIPS)
    lay = CacheLayout(audio_dim=dim, face_dim=DIM, segments=2, frames=2, dtype=dtype, shard_size=16)
    prov = {"avfuse_version": "test", "manifest_fingerprint": "hostile", "audio_backbone": None,
            "face_backbone": None, "config": {"seed": seed}}
    w = create_cache(path, ids=ids, speakers=spk, splits=split, layout=lay, provenance=prov)
    a = centre_a[who] + 0.3 * rng.standard_normal((n, dim))
    v = centre_v[who] + 0.3 * rng.standard_normal((n, DIM))
    if nan_row is not None:
        a[nan_row] = np.nan
    full = {"audio/clip": a, "audio/segments": np.repeat(a[:, None], 2, 1),
            "audio/segment_valid": np.ones((n, 2), bool), "face/frames": np.repeat(v[:, None], 2, 1),
            "face/frame_valid": np.ones((n, 2), bool), "face/clip": v,
            "has_audio": np.ones(n, bool), "has_face": np.ones(n, bool), "duration": np.ones(n, np.float32)}
    for k in range(w.n_shards):
        s = w.shard_slice(k)
        w.write_shard(k, {name: arr[s] for name, arr in full.items()})
    w.finalize()
    return path


def write_trials(path: Path, *, gz: bool = False, bom: bool = False) -> Path:
    ids, spk, split = _ids()
    test = [i for i, x in zip(ids, split) if x == "test"]
    lines = []
    for i, e in enumerate(test):
        for t in test[i + 1:]:
            lines.append(f"{int(e.split('/')[0] == t.split('/')[0])} {e}.wav {t}.wav")
    data = ("\n".join(lines) + "\n").encode()
    if bom:
        data = b"\xef\xbb\xbf" + data
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_manifest(path: Path, media: Path) -> Path:
    from data_manifests.manifest import ClipRecord
    from data_manifests.manifest import write_manifest as _write
    ids, spk, split = _ids()
    recs = [ClipRecord(clip_id=i, speaker=s, video=i.split("/")[1], audio_path=str(media / "a.wav"),
                       video_path=None, frames_dir=None, duration=1.0, sample_rate=16000, fps=None,
                       num_frames=None, split=x, dataset="test") for i, s, x in zip(ids, spk, split)]
    _write(path, recs)
    return path


def train_head(cache: Path, out: Path, head: str = "mean") -> Path:
    from pipeline.cli.main import main
    try:
        main(["train", "-c", str(cache), "--head", head, "--epochs", "1", "--batch-size", "8",
              "--device", "cpu", "--quiet", "--out", str(out)])
    except SystemExit as e:
        assert e.code == 0, e.code
    return out


def edit_head(src: Path, dst: Path, edit) -> Path:
    """Copy a head checkpoint with ``edit(blob)`` applied (a crafted checkpoint)."""
    import torch
    blob = torch.load(src, weights_only=True)
    edit(blob)
    buf = io.BytesIO()
    torch.save(blob, buf)
    dst.write_bytes(buf.getvalue())
    return dst


def nan_head(src: Path, dst: Path) -> Path:
    def edit(blob):
        for v in blob["state_dict"].values():
            if v.is_floating_point():
                v.fill_(float("nan"))
    return edit_head(src, dst, edit)


def set_json(key: str, value):
    def edit(blob):
        blob[key] = value if isinstance(value, str) else json.dumps(value)
    return edit


def patch_config(**changes):
    def edit(blob):
        cfg = json.loads(blob["config_json"])
        for k, v in changes.items():
            if v is None:
                cfg.pop(k, None)
            else:
                cfg[k] = v
        blob["config_json"] = json.dumps(cfg)
    return edit


def truncate(src: Path, dst: Path, keep: float = 0.6) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def build(root: Path) -> dict:
    """Every input file of the hostile table, under ``root`` (returned as name -> path)."""
    import shutil

    import torch
    import zarr

    root.mkdir(parents=True, exist_ok=True)
    d = {"root": root}
    d["cache"] = make_cache(root / "c.zarr")
    d["trials"] = write_trials(root / "t.txt")
    d["trials_bom"] = write_trials(root / "bom.txt", bom=True)
    d["trials_gz"] = truncate(write_trials(root / "full.txt.gz", gz=True), root / "cut.txt.gz")
    (root / "full.txt.gz").unlink()
    d["side_trials"] = write_trials(root / "side.tsv.json")        # the sidecar name of --out side.tsv
    (root / "media").mkdir()
    (root / "media" / "a.wav").write_bytes(b"RIFF")
    d["manifest"] = write_manifest(root / "m.jsonl", root / "media")
    d["manifest_gz"] = root / "cut.jsonl.gz"
    d["manifest_gz"].write_bytes(gzip.compress(d["manifest"].read_bytes())[:300])
    d["manifest_latin1"] = root / "latin1.jsonl"
    d["manifest_latin1"].write_bytes(d["manifest"].read_bytes() + b'{"clip_id": "caf\xe9"}\n')
    d["meta_csv"] = root / "meta.csv"
    d["meta_csv"].write_text("VoxCeleb2 ID,VGGFace2 ID,Gender,Set\nid00000,n0,m,dev\n")
    d["split_gz"] = root / "cut_split.txt.gz"
    d["split_gz"].write_bytes(gzip.compress(b"id00000/vid0/00000 1.0\n" * 200)[:60])
    import soundfile as sf
    (root / "vox" / "wav" / "id00000" / "vid").mkdir(parents=True)   # a one-clip VoxCeleb1 tree
    sf.write(root / "vox" / "wav" / "id00000" / "vid" / "00001.wav", np.zeros(8000, np.float32), 16000)
    d["vox"] = root / "vox"
    d["config"] = root / "cfg.json"
    d["config"].write_text(json.dumps({"epochs": 1}))
    for name, text in (("cfg_bad.json", "{epochs: 1"), ("cfg_list.json", "[1, 2]"),
                       ("cfg_type.json", '{"epochs": "ten"}'), ("cfg_key.json", '{"epochz": 1}')):
        d[name.replace(".", "_")] = root / name
        (root / name).write_text(text)
    d["cfg_latin1_json"] = root / "cfg_latin1.json"
    d["cfg_latin1_json"].write_bytes(b'{"split": "caf\xe9"}')
    d["head"] = train_head(d["cache"], root / "h.pt")
    d["head_nan"] = nan_head(d["head"], root / "nan.pt")
    crafted = {"cfg_nokey": patch_config(audio_dim=None), "cfg_list": set_json("config_json", [1, 2]),
               "meta_list": set_json("meta_json", [1]), "cfg_neg": patch_config(dim=-5),
               "cfg_huge": patch_config(audio_dim=10 ** 9), "cfg_params": patch_config(dim=60000, hidden=60000),
               "cfg_float": patch_config(dropout=float("nan")),
               "state_list": lambda b: b.__setitem__("state_dict", [1, 2]),
               "name_int": lambda b: b.__setitem__("name", 7),
               "cfg_json_bad": set_json("config_json", "{not json")}
    for name, edit in crafted.items():
        d[name] = edit_head(d["head"], root / f"{name}.pt", edit)
    import argparse
    d["pickle_obj"] = root / "pickle_obj.pt"
    torch.save({"format": "avfuse-head/1", "x": argparse.Namespace(a=1)}, d["pickle_obj"])
    d["garbage"] = root / "garbage.pt"
    d["garbage"].write_bytes(b"\x00not a checkpoint" * 20)
    # a cache whose ids were swapped in the store, and one whose array shape was edited
    d["swapped"] = root / "swapped.zarr"
    shutil.copytree(d["cache"], d["swapped"])
    ids = zarr.open_array(str(d["swapped"]), path="ids", mode="r+")
    a, b = ids[0], ids[1]
    ids[0], ids[1] = b, a
    import h5py
    d["swapped_h5"] = make_cache(root / "swapped.h5")           # the same damage in an HDF5 cache
    with h5py.File(d["swapped_h5"], "r+") as f:
        a, b = f["ids"][0], f["ids"][1]
        f["ids"][0], f["ids"][1] = b, a
    d["reshaped"] = root / "reshaped.zarr"
    shutil.copytree(d["cache"], d["reshaped"])
    meta = d["reshaped"] / "audio" / "clip" / "zarr.json"
    j = json.loads(meta.read_text())
    j["shape"] = [j["shape"][0], j["shape"][1] + 1]
    meta.write_text(json.dumps(j))
    d["ids_gone"] = root / "ids_gone.zarr"
    shutil.copytree(d["cache"], d["ids_gone"])
    shutil.rmtree(d["ids_gone"] / "ids" / "c")
    d["nan_cache"] = make_cache(root / "nan.zarr", nan_row=27)
    d["empty"] = root / "empty.txt"
    d["empty"].write_text("")
    ids_, spk, split = _ids()
    d["one_spk"] = make_cache(root / "one_spk.zarr", speakers=["id00000" if x == "train" else s
                                                                for s, x in zip(spk, split)])
    d["wide"] = make_cache(root / "wide.zarr", dim=16)
    d["other_trials"] = root / "other.txt"
    d["other_trials"].write_text("1 idX/a/1 idX/a/2\n0 idX/a/1 idY/b/3\n")
    d["scores"] = root / "s.tsv"
    from pipeline.cli.main import main
    try:
        main(["score", "--cache", str(d["cache"]), "--trials", str(d["trials"]), "--mode", "AxA", "-q",
              "--out", str(d["scores"])])
    except SystemExit as e:
        assert e.code == 0
    lines = d["scores"].read_text().splitlines()
    lines[3] = "\t".join(lines[3].split("\t")[:3] + ["nan"])
    d["scores_nan"] = root / "s_nan.tsv"
    d["scores_nan"].write_text("\n".join(lines) + "\n")
    d["scores_bom"] = root / "s_bom.tsv"
    d["scores_bom"].write_bytes(b"\xef\xbb\xbf" + d["scores"].read_bytes())
    d["link"] = root / "link.txt"
    d["link"].symlink_to(d["trials"].name)          # relative: the fixture can be copied
    d["fifo"] = root / "pipe.tsv"            # a device-like output (never /dev/full: old code replaced it)
    os.mkfifo(d["fifo"])
    d["hard"] = root / "hard.txt"
    os.link(d["trials"], d["hard"])
    return d


def file_hashes(root: str) -> dict[str, str]:
    """sha256 of every regular file under ``root`` (symlinks skipped: their targets are hashed)."""
    out = {}
    for base, _, files in os.walk(root):
        for f in files:
            p = os.path.join(base, f)
            if os.path.islink(p) or not os.path.isfile(p):   # links are followed once; a FIFO is never opened
                continue
            with open(p, "rb") as fh:
                out[p] = hashlib.sha256(fh.read()).hexdigest()
    return out


class LoudBackbone:
    """A tiny audio backbone whose embeddings (~1e5) exceed float16's range (65504), like an
    IResNet with unlucky weights: registered for the overflow test only."""

    @staticmethod
    def build():
        import torch

        class Loud(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(1, 4)

            def forward(self, wave, lengths):
                level = wave.abs().mean(dim=1, keepdim=True)
                return 1e5 * (1.0 + self.lin(level).abs())

        return Loud()


_LOUD: list = []


def register_loud_backbone() -> str:
    from extractors.registry import BackboneEntry, InputSpec, register_backbone
    if not _LOUD:   # one entry object per process: registering it again is not a duplicate
        _LOUD.append(BackboneEntry(name="loud_test_backbone", modality="audio", build=LoudBackbone.build,
                                   spec=InputSpec(modality="audio", embedding_dim=4, sample_rate=16000,
                                                  features="waveform"),
                                   load_state=lambda m, sd: m.load_state_dict(sd),
                                   description="test only: embeddings beyond float16's range"))
    register_backbone(_LOUD[0])
    return _LOUD[0].name
