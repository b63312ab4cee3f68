"""`avfuse cache import` / `export --format kaldi` on real Kaldi arks (kaldiio), .npy folders,
.npz files and real Zarr/HDF5 caches; the imported cache scored, trained on, ablated."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import kaldiio
import numpy as np
import pytest
from click.testing import CliRunner

from data_manifests.ids import normalize_id
from data_manifests.manifest import ClipRecord, write_manifest
from data_manifests.trials import read_trials, write_trials
from pipeline.cache.import_sources import normalize_ids, read_source
from pipeline.cache.importer import ImportConfig, import_cache
from pipeline.cache.kaldi_ark import write_ark_scp
from pipeline.cache.reader import open_cache
from pipeline.cli.main import cli
from pipeline.core.errors import CacheError
from pipeline.score.engine import score_from_cache

SPEAKERS = ["id10270", "id10271", "id10300", "id10301"]
IDS = [f"{s}/{v}/{u:05d}" for s in SPEAKERS for v in ("5r0dWxy17C8", "GWXujl-xAVM") for u in (1, 2, 3)]
F32 = ImportConfig(dtype="float32", shard_size=5)


def embeddings(dim: int, seed: int) -> np.ndarray:
    """Speaker centroid + noise per id, float32."""
    rng = np.random.default_rng(seed)
    centre = {s: rng.standard_normal(dim) for s in SPEAKERS}
    return np.stack([centre[i.split("/")[0]] + 0.5 * rng.standard_normal(dim) for i in IDS]).astype(np.float32)


AUDIO, FACE = embeddings(12, 0), embeddings(7, 1)
A_ROWS, F_ROWS = list(range(0, 18)), list(range(6, 24))      # audio and face overlap on 12 ids


def kaldi_key(i: int) -> str:
    """Mixed id forms, as other toolkits write them."""
    return (IDS[i] + ".wav", IDS[i], IDS[i].replace("/", "-"))[i % 3]


def write_source(kind: str, folder: Path, rows: list[int], data: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if kind in ("scp", "ark"):
        with kaldiio.WriteHelper(f"ark,scp:{folder / 'e.ark'},{folder / 'e.scp'}") as w:
            for i in rows:
                w(kaldi_key(i), data[i])
        return folder / f"e.{kind}"
    if kind == "npy":
        for i in rows:
            p = folder / "npy" / (IDS[i] + ".npy")
            p.parent.mkdir(parents=True, exist_ok=True)
            np.save(p, data[i][None])                     # SpeechBrain's (1, D)
        return folder / "npy"
    np.savez(folder / "e.npz", ids=np.array([kaldi_key(i) for i in rows]), embeddings=data[rows])
    return folder / "e.npz"


def test_id_forms_map_to_one_trial_key():
    forms = ["id10270/5r0dWxy17C8/00001.wav", "id10270/5r0dWxy17C8/00001", "id10270-5r0dWxy17C8-00001",
             " ./id10270/5r0dWxy17C8/00001.WAV ", "id10270\\5r0dWxy17C8\\00001.m4a"]
    assert normalize_ids(np.array(forms)).tolist() == ["id10270/5r0dWxy17C8/00001"] * 5
    # YouTube ids may hold '-': the Kaldi form splits at the first and last '-'
    assert normalize_ids(np.array(["id10270-GWXujl-xAVM-00017"])).tolist() == ["id10270/GWXujl-xAVM/00017"]
    plain = ["a/b/c.wav", "a/b.x/c", "a/b/c.npy", "a/b/c.flac", "./a/b/c"]
    assert normalize_ids(np.array(plain)).tolist() == [normalize_id(s) for s in plain]


@pytest.mark.parametrize("kind,suffix", [("scp", ".zarr"), ("ark", ".zarr"), ("npy", ".zarr"), ("npz", ".zarr"),
                                         ("scp", ".h5"), ("npy", ".h5")])
def test_import_union_values_provenance(tmp_path, kind, suffix):
    a = write_source(kind, tmp_path / "a", A_ROWS, AUDIO)
    f = write_source("npz", tmp_path / "f", F_ROWS, FACE)
    out = tmp_path / f"c{suffix}"
    s = import_cache(out, audio=[a], face=[f], cfg=F32, progress=False)
    assert (s.rows, s.audio_rows, s.face_rows, s.both_rows) == (24, 18, 18, 12)
    c = open_cache(out)
    assert c.ids.tolist() == sorted(IDS) and c.is_complete and c.verify() == []
    rows = c.rows(IDS)
    assert c.to_numpy("has_audio")[rows].tolist() == [i in A_ROWS for i in range(24)]
    assert c.to_numpy("has_face")[rows].tolist() == [i in F_ROWS for i in range(24)]
    np.testing.assert_array_equal(c.to_numpy("audio/clip", rows[A_ROWS]), AUDIO[A_ROWS])
    np.testing.assert_array_equal(c.to_numpy("face/clip", rows[F_ROWS]), FACE[F_ROWS])
    assert not c.to_numpy("audio/clip", rows[18:]).any()              # absent: zeros
    # no sequence source: the clip is a one-step sequence
    np.testing.assert_array_equal(c.to_numpy("audio/segments", rows[A_ROWS])[:, 0], AUDIO[A_ROWS])
    assert c.to_numpy("audio/segment_valid", rows).ravel().tolist() == [i in A_ROWS for i in range(24)]
    assert c.speakers[rows].tolist() == [i.split("/")[0] for i in IDS] and set(c.splits) == {"train"}
    prov = c.provenance["audio_backbone"]
    assert prov["name"] == "imported" and prov["embedding_dim"] == 12
    files = prov["sources"][0]["files"]
    if kind != "npy":
        for entry in files:
            assert entry["sha256"] == hashlib.sha256(Path(entry["path"]).read_bytes()).hexdigest()
        assert {Path(e["path"]).suffix for e in files} >= {"." + kind}
    assert c.provenance["face_backbone"]["sources"][0]["path"] == str(f)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a", "f", out.name, out.name + ".failures.jsonl"])


def test_fast_reader_equals_kaldiio_and_falls_back(tmp_path):
    rng = np.random.default_rng(3)
    d = {f"id1/v{i}/{i:05d}": rng.standard_normal(9).astype(np.float64 if i % 4 == 0 else np.float32)
         for i in range(40)}
    with kaldiio.WriteHelper(f"ark,scp:{tmp_path / 'm.ark'},{tmp_path / 'm.scp'}") as w:
        for k, v in d.items():
            w(k, v)
    src = read_source(tmp_path / "m.scp", "audio")
    assert src.format == "kaldi-scp"
    ref = kaldiio.load_scp(str(tmp_path / "m.scp"))
    np.testing.assert_array_equal(src.data, np.stack([ref[k] for k in src.raw_ids]).astype(np.float32))
    # keys of one length (VoxCeleb ids): equally spaced records, read as one strided view
    x = rng.standard_normal((len(IDS), 5)).astype(np.float32)
    write_ark_scp(tmp_path / "s.ark", tmp_path / "s.scp", IDS, x)
    ref = kaldiio.load_scp(str(tmp_path / "s.scp"))
    np.testing.assert_array_equal(read_source(tmp_path / "s.scp", "audio").data, np.stack([ref[k] for k in IDS]))
    with kaldiio.WriteHelper(f"ark,scp:{tmp_path / 'c.ark'},{tmp_path / 'c.scp'}", compression_method=2) as w:
        for k, v in d.items():
            w(k, v.astype(np.float32)[None])                   # compressed matrices: kaldiio reads them
    comp = read_source(tmp_path / "c.scp", "audio")
    assert comp.format == "kaldi-scp (kaldiio)" and comp.data.shape == (40, 9)


def test_sequences_pad_and_derive_clip(tmp_path):
    rng = np.random.default_rng(4)
    seqs = rng.standard_normal((7, 3, 12)).astype(np.float32)
    seqs[6] = 0                                                         # only padding: no audio
    n = np.array([3, 2, 1, 3, 3, 2, 3])
    write_ark_scp(tmp_path / "s.ark", tmp_path / "s.scp", [IDS[i] for i in range(7)], seqs, n)
    a = write_source("npz", tmp_path / "a", [0, 1, 2, 20], AUDIO)       # 3..5 only as sequences
    import_cache(tmp_path / "c.zarr", audio=[a], audio_segments=[tmp_path / "s.scp"], cfg=F32, progress=False)
    c = open_cache(tmp_path / "c.zarr")
    rows = c.rows([IDS[i] for i in (0, 1, 2, 3, 4, 5, 20)])
    assert c.n_rows == 8 and c.layout.segments == 3 and c.verify() == []
    assert c.to_numpy("has_audio").sum() == 7 and not c.to_numpy("has_audio", c.rows(IDS[6]))[0]
    valid = c.to_numpy("audio/segment_valid", rows)
    assert valid[:6].sum(1).tolist() == n[:6].tolist() and valid[6].tolist() == [True, False, False]
    clip = c.to_numpy("audio/clip", rows)
    np.testing.assert_array_equal(clip[:3], AUDIO[:3])                  # given clips are kept
    np.testing.assert_allclose(clip[4], seqs[4].mean(0), rtol=1e-6)     # derived: mean of valid steps
    np.testing.assert_allclose(clip[5], seqs[5, :2].mean(0), rtol=1e-6)
    np.testing.assert_array_equal(c.to_numpy("audio/segments", rows)[6, 0], AUDIO[20])


@pytest.fixture
def imported(tmp_path):
    """Audio (Kaldi scp) + face (.npy folder), splits from a manifest: train = 3 speakers, test = 1."""
    a = write_source("scp", tmp_path / "a", A_ROWS + [18, 19], AUDIO)
    f = write_source("npy", tmp_path / "f", F_ROWS + [0, 1, 2, 3], FACE)
    man = tmp_path / "m.jsonl"
    write_manifest(man, [ClipRecord(clip_id=i, speaker=i.split("/")[0], video=i.split("/")[1], duration=4.0,
                                    split="test" if i.startswith("id10301") else "train") for i in IDS])
    out = tmp_path / "c.zarr"
    r = CliRunner().invoke(cli, ["cache", "import", "--out", str(out), "--audio", str(a), "--face", str(f),
                                 "--manifest", str(man), "--dtype", "float32", "--shard-size", "7", "-q"])
    assert r.exit_code == 0, r.output
    assert "imported 24 rows" in r.output and "splits test: 6, train: 18" in r.output
    return out


def test_score_matches_numpy(imported, tmp_path):
    c = open_cache(imported)
    assert c.provenance["manifest_fingerprint"] and c.to_numpy("duration").tolist() == [4.0] * 24
    rng = np.random.default_rng(5)
    both = [i for i in range(24) if i in range(6, 20)]
    pairs = [(IDS[a], IDS[b]) for a, b in rng.choice(both, size=(40, 2))]
    labels = [int(a.split("/")[0] == b.split("/")[0]) for a, b in pairs]
    trials = tmp_path / "trials.txt"
    write_trials(trials, labels, [p[0] + ".wav" for p in pairs], [p[1] + ".wav" for p in pairs])
    cos = {}
    for m, data in (("A", AUDIO), ("V", FACE)):
        u = data / np.linalg.norm(data, axis=1, keepdims=True)
        cos[m] = np.array([u[IDS.index(a)] @ u[IDS.index(b)] for a, b in pairs])
    for mode, want in (("AxA", cos["A"]), ("VxV", cos["V"]), ("AVxAV", (cos["A"] + cos["V"]) / 2)):
        got = score_from_cache(c, read_trials(trials), mode)
        np.testing.assert_allclose(got.scores, want, atol=1e-5)
        out = tmp_path / f"{mode}.tsv"
        r = CliRunner().invoke(cli, ["score", "--cache", str(imported), "--trials", str(trials), "--mode", mode,
                                     "--out", str(out), "--quiet"])
        assert r.exit_code == 0, r.output
        lines = out.read_text().splitlines()[1:]
        np.testing.assert_allclose([float(x.split("\t")[3]) for x in lines], want, atol=1e-5)


def test_train_score_ablate_analyze_run_unchanged(imported, tmp_path):
    trials = tmp_path / "t.txt"
    test_ids = [i for i in IDS if i.startswith("id10301")] + [IDS[6], IDS[9]]
    pairs = [(a, b) for a in test_ids for b in test_ids if a < b]
    write_trials(trials, [int(a[:7] == b[:7]) for a, b in pairs], [a for a, _ in pairs], [b for _, b in pairs])
    run = CliRunner().invoke
    r = run(cli, ["train", "--cache", str(imported), "--head", "mean", "--out", str(tmp_path / "mean.pt"),
                  "--epochs", "2", "--batch-size", "8", "--device", "cpu", "-q"])
    assert r.exit_code == 0, r.output
    assert "attends over" not in r.output
    assert "avfuse: note: 6 optimiser updates in all (adamw 0.002 cos" in r.output    # 2 epochs x 3 steps of 8
    r = run(cli, ["train", "--cache", str(imported), "--head", "mean", "--out", str(tmp_path / "mean2.pt"),
                  "--epochs", "30", "--batch-size", "2", "--device", "cpu", "-q"])
    assert r.exit_code == 0 and "optimiser updates" not in r.output                  # 30 x 9 steps: enough
    r = run(cli, ["train", "--cache", str(imported), "--head", "dca", "--out", str(tmp_path / "dca.pt"),
                  "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--option", "d_model=16", "-q"])
    assert r.exit_code == 0, r.output     # trains, but says that one step is not what the head is made for
    assert "'dca' attends over audio segments and face frames, but this cache has 1 segment(s)" in r.output
    r = run(cli, ["score", "--cache", str(imported), "--trials", str(trials), "--mode", "AVxA", "--head",
                  str(tmp_path / "mean.pt"), "--out", str(tmp_path / "s.tsv"), "--skip-missing", "--quiet"])
    assert r.exit_code == 0, r.output
    lines = (tmp_path / "s.tsv").read_text().splitlines()[1:]
    assert len(lines) >= 5 and all(np.isfinite(float(x.split("\t")[3])) for x in lines)
    r = run(cli, ["ablate", "--cache", str(imported), "--trials", str(trials), "--out", str(tmp_path / "abl"),
                  "--heads", "none,mean", "--modes", "AxA,AVxAV", "--runs", str(tmp_path), "--missing", "0,0.5",
                  "--lengths", "1", "--quiet"])
    assert r.exit_code == 0, r.output
    r = run(cli, ["analyze", "--cache", str(imported), "--out", str(tmp_path / "an"), "--split", "train",
                  "--trials", str(trials), "--quiet"])
    assert r.exit_code == 0, r.output


def test_a_head_trained_on_one_import_scores_another_of_the_same_named_model(tmp_path):
    """Two corpora's embeddings from one model (train on "vox2", score "vox1"): imported with the same
    --audio-model/--face-model they are one embedding space; without names only the same files are,
    and the refusal says how to name them. Real imports, the real train and score."""
    run = CliRunner().invoke
    train_rows, test_rows = list(range(0, 18)), list(range(18, 24))
    trials = tmp_path / "t.txt"
    pairs = [(IDS[a], IDS[b]) for a in test_rows for b in test_rows if a < b]
    write_trials(trials, [int(a[:7] == b[:7]) for a, b in pairs], [a for a, _ in pairs], [b for _, b in pairs])

    def make(name: str, rows: list[int], named: bool) -> Path:
        a = write_source("npz", tmp_path / name / "a", rows, AUDIO)
        f = write_source("npz", tmp_path / name / "f", rows, FACE)
        out = tmp_path / f"{name}.zarr"
        names = ["--audio-model", "wespeaker_r34", "--face-model", "arcface_r100"] if named else []
        r = run(cli, ["cache", "import", "--out", str(out), "--audio", str(a), "--face", str(f), "-q", *names])
        assert r.exit_code == 0, r.output
        return out

    for named in (True, False):
        tag = "named" if named else "bare"
        vox2, vox1 = make(f"vox2_{tag}", train_rows, named), make(f"vox1_{tag}", test_rows, named)
        assert open_cache(vox2).provenance["audio_backbone"].get("model") == ("wespeaker_r34" if named else None)
        head = tmp_path / f"{tag}.pt"
        r = run(cli, ["train", "--cache", str(vox2), "--head", "mlp", "--out", str(head), "--epochs", "1",
                      "--batch-size", "8", "--device", "cpu", "-q"])
        assert r.exit_code == 0, r.output
        r = run(cli, ["score", "--cache", str(vox1), "--trials", str(trials), "--mode", "AVxAV", "--head",
                      str(head), "--out", str(tmp_path / f"{tag}.tsv"), "--quiet"])
        if named:
            assert r.exit_code == 0, r.output
        else:
            assert r.exit_code != 0 and "another embedding space" in str(r.exception)
            assert "--audio-model" in str(r.exception)                 # the hint: how to make them one space


def test_export_kaldi_round_trip(imported, tmp_path):
    c = open_cache(imported)
    r = CliRunner().invoke(cli, ["cache", "export", str(imported), "--format", "kaldi", "--out",
                                 str(tmp_path / "k"), "-q"])
    assert r.exit_code == 0, r.output
    d = kaldiio.load_scp(str(tmp_path / "k" / "audio_clip.scp"))
    assert IDS[0] + ".wav" in d and len(d) == 20
    np.testing.assert_array_equal(d[IDS[5] + ".wav"], AUDIO[5])
    assert kaldiio.load_scp(str(tmp_path / "k" / "face_frames.scp"))[IDS[7] + ".wav"].shape == (1, 7)
    import_cache(tmp_path / "back.h5", audio=[tmp_path / "k" / "audio_clip.scp"],
                 face=[tmp_path / "k" / "face_clip.scp"], cfg=F32, progress=False)
    b = open_cache(tmp_path / "back.h5")
    assert b.ids.tolist() == c.ids.tolist()
    for name in ("audio/clip", "face/clip", "has_audio", "has_face"):
        np.testing.assert_array_equal(b.to_numpy(name), c.to_numpy(name))
    # today's npz export imports back too (has_audio / has_face pick the rows)
    r = CliRunner().invoke(cli, ["cache", "export", str(imported), "--out", str(tmp_path / "e.npz"), "-q"])
    assert r.exit_code == 0, r.output
    npz = tmp_path / "e.npz"
    import_cache(tmp_path / "npz.zarr", audio=[npz], face=[npz], face_frames=[f"{npz}:face/frames"], cfg=F32,
                 progress=False)
    z = open_cache(tmp_path / "npz.zarr")
    for name in ("audio/clip", "face/clip", "face/frames", "face/frame_valid", "has_audio", "has_face"):
        np.testing.assert_array_equal(z.to_numpy(name), c.to_numpy(name))


# ------------------------------------------------------------------ bad input
def _npy_bad_dim(d: Path) -> tuple[list[str], str, str]:
    src = write_source("npy", d, [0, 1, 2], AUDIO)
    np.save(src / (IDS[1] + ".npy"), AUDIO[1, :7])
    return ["--audio", str(src)], IDS[1] + ".npy", "dimension mismatch"


def _ark_bad_dim(d: Path):
    with kaldiio.WriteHelper(f"ark,scp:{d / 'e.ark'},{d / 'e.scp'}") as w:
        w(IDS[0], AUDIO[0])
        w(IDS[1], AUDIO[1, :7])
    return ["--audio", str(d / "e.scp")], "e.scp", f"id {IDS[1]}: dimension mismatch"


def _two_sources_bad_dim(d: Path):
    a = write_source("npz", d / "a", [0, 1], AUDIO)
    np.savez(d / "b.npz", ids=np.array([IDS[2]]), embeddings=AUDIO[2:3, :5])
    return ["--audio", str(a), "--audio", str(d / "b.npz")], "b.npz", f"id {IDS[2]}: dimension mismatch"


def _nan_npz(d: Path):
    x = AUDIO[:3].copy()
    x[2, 4] = np.nan
    np.savez(d / "e.npz", ids=np.array(IDS[:3]), embeddings=x)
    return ["--face", str(d / "e.npz")], "e.npz", f"id {IDS[2]} has NaN/Inf"


def _inf_ark(d: Path):
    x = AUDIO[:3].copy()
    x[1, 0] = np.inf
    write_ark_scp(d / "e.ark", d / "e.scp", IDS[:3], x)
    return ["--audio", str(d / "e.scp")], "e.scp", f"id {IDS[1]} has NaN/Inf"


def _zero_npy(d: Path):
    src = write_source("npy", d, [0, 1, 2], AUDIO)
    np.save(src / (IDS[2] + ".npy"), np.zeros(12, np.float32))
    return ["--audio", str(src)], IDS[2] + ".npy", "all-zero vector"


def _duplicate_forms(d: Path):
    write_ark_scp(d / "e.ark", d / "e.scp", [IDS[0] + ".wav", IDS[1], IDS[0].replace("/", "-")], AUDIO[:3])
    return ["--audio", str(d / "e.scp")], "e.scp", f"duplicate id {IDS[0]}"


def _duplicate_across(d: Path):
    a = write_source("npz", d / "a", [0, 1], AUDIO)
    write_ark_scp(d / "e.ark", d / "e.scp", [IDS[1]], AUDIO[1:2])
    return ["--audio", str(a), "--audio", str(d / "e.scp")], "e.npz", f"duplicate id {IDS[1]}"


def _bad_id(d: Path):
    np.savez(d / "e.npz", ids=np.array([IDS[0], "utt_17"]), embeddings=AUDIO[:2])
    return ["--audio", str(d / "e.npz")], "e.npz", "id 'utt_17' matches no trial-list form"


def _truncated_scp(d: Path):
    write_ark_scp(d / "e.ark", d / "e.scp", IDS[:4], AUDIO[:4])
    (d / "e.ark").write_bytes((d / "e.ark").read_bytes()[:-10])
    return ["--audio", str(d / "e.scp")], "e.ark", f"truncated ark: the record of id {IDS[3]}"


def _truncated_ark(d: Path):
    write_ark_scp(d / "e.ark", None, IDS[:4], AUDIO[:4])
    (d / "e.ark").write_bytes((d / "e.ark").read_bytes()[:-10])
    return ["--audio", str(d / "e.ark")], "e.ark", f"truncated ark: the record of id {IDS[3]}"


def _missing_ark(d: Path):
    (d / "e.scp").write_text(f"{IDS[0]} {d / 'gone.ark'}:12\n")
    return ["--audio", str(d / "e.scp")], "e.scp", f"id {IDS[0]}: its ark"


BAD = [_npy_bad_dim, _ark_bad_dim, _two_sources_bad_dim, _nan_npz, _inf_ark, _zero_npy, _duplicate_forms,
       _duplicate_across, _bad_id, _truncated_scp, _truncated_ark, _missing_ark]


@pytest.mark.parametrize("make", BAD, ids=[f.__name__[1:] for f in BAD])
@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_bad_input_one_line_error_nothing_written(tmp_path, make, suffix, capfd):
    src = tmp_path / "src"
    src.mkdir()
    args, file_part, message = make(src)
    out = tmp_path / "out" / f"c{suffix}"
    out.parent.mkdir()
    from pipeline.cli.main import main
    with pytest.raises(SystemExit) as e:
        main(["cache", "import", "--out", str(out), *args, "-q"])
    err = capfd.readouterr().err.strip()
    assert e.value.code == 2
    assert len(err.splitlines()) == 1 and err.startswith("avfuse: error: "), err
    assert file_part in err and message in err, err
    assert list(out.parent.iterdir()) == []                  # nothing written, no temp left


def test_existing_output_refused_then_overwritten(tmp_path):
    a = write_source("npz", tmp_path / "a", A_ROWS, AUDIO)
    import_cache(tmp_path / "c.zarr", audio=[a], cfg=F32, progress=False)
    with pytest.raises(CacheError, match="already exists"):
        import_cache(tmp_path / "c.zarr", audio=[a], cfg=F32, progress=False)
    f = write_source("npz", tmp_path / "f", F_ROWS, FACE)
    import_cache(tmp_path / "c.zarr", face=[f], cfg=F32, progress=False, overwrite=True)
    c = open_cache(tmp_path / "c.zarr")
    assert c.n_rows == 18 and not c.has("audio/clip")
    assert json.loads(json.dumps(c.provenance))["audio_backbone"] is None


def test_temp_of_a_killed_import_is_swept(tmp_path):
    import subprocess
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".c.zarr.importing-{dead.pid}-deadbeef.zarr"
    (stale / "audio").mkdir(parents=True)
    a = write_source("npz", tmp_path / "a", A_ROWS, AUDIO)
    import_cache(tmp_path / "c.zarr", audio=[a], cfg=F32, progress=False)
    assert not stale.exists() and open_cache(tmp_path / "c.zarr").n_rows == 18


def test_import_config_round_trips_and_checks():
    from pipeline.core.config import fingerprint, from_dict, to_dict
    from pipeline.core.errors import ConfigError
    cfg = ImportConfig(split="dev", dtype="float32", shard_size=99)
    assert from_dict(ImportConfig, json.loads(json.dumps(to_dict(cfg)))) == cfg
    assert fingerprint(cfg) != fingerprint(ImportConfig())
    with pytest.raises(ConfigError, match="--dtype"):
        import_cache("x.zarr", audio=["a.npz"], cfg=ImportConfig(dtype="int8"), progress=False)
