"""Trial lists: the real VoxCeleb1 lists, round trips, and every error path."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from data_manifests import TrialList, normalize_id, read_trials, write_trials
from pipeline.cli.trials import trials_group
from pipeline.core import TrialListError

REPO = Path(__file__).resolve().parents[2]


def independent_counts(path: Path) -> dict:
    """Counts by the simplest possible pass (no code shared with data_manifests.trials)."""
    opener = gzip.open if path.suffix == ".gz" else open
    n = tgt = 0
    utts, spks = set(), set()
    with opener(path, "rt") as f:
        for line in f:
            lab, a, b = line.split()
            n += 1
            tgt += lab == "1"
            for u in (a, b):
                assert u.endswith(".wav")
                utts.add(u[:-4])
                spks.add(u.split("/")[0])
    return {"n_trials": n, "n_target": tgt, "n_nontarget": n - tgt, "n_utterances": len(utts),
            "n_speakers": len(spks)}


def test_vox1_o_cleaned_counts(voxceleb_dir):
    tl = read_trials(voxceleb_dir / "veri_test2.txt")
    assert tl.labeled and tl.n_trials == 37_611 and tl.n_target == 18_802 and tl.n_nontarget == 18_809
    assert len(tl.utterances()) == 4_708 and len(tl.speakers()) == 40
    assert tl.enrol[0] == "id10270/x6uYqmx31kE/00001" and tl.test[1] == "id10300/ize_eiCFEg0/00003"
    assert tl.labels.dtype == np.int8 and tl.labels[:3].tolist() == [1, 0, 1]


@pytest.mark.parametrize("name,n_trials", [("veri_test.txt", 37_720), ("list_test_all.txt.gz", 581_480),
                                           ("list_test_hard.txt.gz", 552_536), ("veri_test2.txt", 37_611)])
def test_real_lists_match_an_independent_count(voxceleb_dir, name, n_trials):
    path = voxceleb_dir / name
    expected = independent_counts(path)
    assert expected["n_trials"] == n_trials
    tl = read_trials(path)
    got = tl.summary()
    assert {k: got[k] for k in expected} == expected
    utts, ei, ti = tl.index()
    assert ei.dtype == np.int64 and np.array_equal(utts[ei], tl.enrol) and np.array_equal(utts[ti], tl.test)
    assert list(utts) == sorted(utts)


def test_index_of_a_constructed_list():
    tl = TrialList(path="mem", labels=[1, 0, -1], enrol=["b", "a", "b"], test=["c", "b", "a"], labeled=True)
    utts, ei, ti = tl.index()
    assert utts.tolist() == ["a", "b", "c"] and ei.tolist() == [1, 0, 1] and ti.tolist() == [2, 1, 0]
    with pytest.raises(TrialListError, match="lengths differ"):
        TrialList(path="mem", labels=[1], enrol=["a", "b"], test=["a", "b"], labeled=True)


@pytest.mark.parametrize("raw,clip", [
    ("id10270/x6uYqmx31kE/00001.wav", "id10270/x6uYqmx31kE/00001"),
    ("id00012/21Uxsk56VDQ/00001.m4a", "id00012/21Uxsk56VDQ/00001"),
    ("./id1/v.x/00001.MP4 ", "id1/v.x/00001"),
    ("id1\\v\\00002.flac", "id1/v/00002"),
    ("id1/v.wav/00003", "id1/v.wav/00003"),          # a dot in a folder is not an extension
    ("id1/v/00004.txt", "id1/v/00004.txt"),          # unknown extensions are kept
])
def test_normalize_id(raw, clip):
    assert normalize_id(raw) == clip


@pytest.mark.parametrize("suffix", [".txt", ".txt.gz"])
def test_write_read_round_trip(tmp_path, suffix):
    enrol = ["id1/a/00001", "id1/a/00001", "id2/b/00003"]
    test = ["id1/c/00002", "id2/b/00003", "id3/d/00004"]
    p = tmp_path / f"l{suffix}"
    assert write_trials(p, [1, 0, 0], enrol, test, ext=".wav") == 3
    if suffix.endswith(".gz"):
        assert gzip.open(p, "rt").readline() == "1 id1/a/00001.wav id1/c/00002.wav\n"
    else:
        assert p.read_text().splitlines()[0] == "1 id1/a/00001.wav id1/c/00002.wav"
    tl = read_trials(p)
    assert tl.labels.tolist() == [1, 0, 0] and tl.enrol.tolist() == enrol and tl.test.tolist() == test
    q = tmp_path / f"u{suffix}"
    write_trials(q, None, enrol, test)
    u = read_trials(q)
    assert not u.labeled and u.labels.tolist() == [-1, -1, -1] and u.n_target is None
    assert u.summary()["n_utterances"] == 4 and u.summary()["n_speakers"] == 3


def test_messy_whitespace_parses_like_the_clean_file(tmp_path, voxceleb_dir):
    clean = read_trials(voxceleb_dir / "veri_test2.txt")
    lines = (voxceleb_dir / "veri_test2.txt").read_text().splitlines()
    messy = tmp_path / "messy.txt"
    messy.write_bytes(("\ufeff" + "\r\n".join(lines[:5]) + "\r\n\r\n" + "\n".join(
        l.replace(" ", "\t", 1) for l in lines[5:]) + "\n\n").encode("utf-8"))
    tl = read_trials(messy)
    assert np.array_equal(tl.labels, clean.labels) and np.array_equal(tl.enrol, clean.enrol)
    assert np.array_equal(tl.test, clean.test)


@pytest.mark.parametrize("text,line,match", [
    ("1 a b\n0 c d\n1 e\n", 3, "got 2 fields, but the list is labeled"),
    ("a b\nc d\n1 e f\n", 3, "got 3 fields, but the list is unlabeled"),
    ("1 a b\n2 c d\n", 2, "label must be 0 or 1, got '2'"),
    ("\n\n1 a b c\n", 3, "got 4"),
    ("1 a b\n1 a b x\n0 c d\n", 2, "got 4 fields"),
    ("1 a b\n\n0 c\td\nx y z\n", 4, "label must be 0 or 1, got 'x'"),
    ("1 a b\n0 c \xff\n", 2, "not UTF-8"),
])
def test_malformed_line_names_file_and_line(tmp_path, text, line, match):
    p = tmp_path / "bad.txt"
    p.write_bytes(text.encode("latin-1"))
    with pytest.raises(TrialListError, match=match) as e:
        read_trials(p)
    assert e.value.line == line and e.value.path == str(p)
    assert str(e.value).startswith(f"{p}:{line}: ")


def test_unreadable_files(tmp_path):
    with pytest.raises(TrialListError, match="not found"):
        read_trials(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(TrialListError, match="empty trial list"):
        read_trials(tmp_path / "empty.txt")
    (tmp_path / "trunc.txt.gz").write_bytes(gzip.compress(b"1 a b\n" * 100)[:30])
    with pytest.raises(TrialListError, match="cannot read"):
        read_trials(tmp_path / "trunc.txt.gz")


def test_write_rejects_bad_input(tmp_path):
    with pytest.raises(TrialListError, match="0 or 1"):
        write_trials(tmp_path / "x.txt", [1, 2], ["a", "b"], ["c", "d"])
    with pytest.raises(TrialListError, match="whitespace"):
        write_trials(tmp_path / "x.txt", [1], ["a b"], ["c"])
    assert not (tmp_path / "x.txt").exists()


def test_cli_info_text_and_json(voxceleb_dir):
    r = CliRunner().invoke(trials_group, ["info", str(voxceleb_dir / "veri_test2.txt")])
    assert r.exit_code == 0
    rows = dict(line.split(None, 1) for line in r.output.splitlines())
    assert rows["n_trials"] == "37611" and rows["n_target"] == "18802" and rows["n_utterances"] == "4708"
    assert rows["format"].startswith("labeled")
    r = CliRunner().invoke(trials_group, ["info", "--json", str(voxceleb_dir / "veri_test2.txt")])
    d = json.loads(r.output)
    assert (d["n_trials"], d["n_target"], d["n_nontarget"], d["n_utterances"], d["n_speakers"]) == \
        (37611, 18802, 18809, 4708, 40)


def test_cli_unlabeled_prints_na(tmp_path):
    p = tmp_path / "blind.txt"
    write_trials(p, None, ["a/v/1", "b/v/2"], ["b/v/2", "c/v/3"])
    r = CliRunner().invoke(trials_group, ["info", str(p)])
    assert r.exit_code == 0 and "n_target      NA" in r.output and "unlabeled" in r.output


def test_subprocess_bad_file_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("1 a/v/1.wav b/v/2.wav\n1 a/v/1.wav\n")
    p = subprocess.run([sys.executable, "-m", "pipeline", "trials", "info", str(bad), "--json"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert p.returncode == 2 and p.stdout == ""
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"avfuse: error: {bad}:2: got 2 fields")
    assert "Traceback" not in p.stderr


def _random_clean_list(rng: np.random.Generator, n: int, labeled: bool) -> bytes:
    """A clean ASCII list with ids of varied lengths, extensions (any case), ``./`` and
    backslash prefixes, dots in folders, and the same clip written in several ways."""
    exts = ["", ".wav", ".WAV", ".flac", ".m4a", ".Mp4", ".opus", ".txt", ".wav.wav"]
    base = [f"id{rng.integers(0, 30):05d}/{'v.x' if rng.random() < 0.2 else 'vid'}{rng.integers(0, 9)}"
            f"/{rng.integers(0, 10 ** rng.integers(1, 9)):05d}" for _ in range(60)]

    def tok() -> str:
        t = base[rng.integers(0, len(base))] + exts[rng.integers(0, len(exts))]
        r = rng.random()
        return "./" + t if r < 0.05 else t.replace("/", "\\") if r < 0.1 else t

    lines = [(f"{rng.integers(0, 2)} " if labeled else "") + f"{tok()} {tok()}" for _ in range(n)]
    return ("\n".join(lines) + ("\n" if rng.random() < 0.5 else "")).encode()


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_parse_equals_the_line_by_line_definition(seed):
    from data_manifests import trials_parse as T
    rng = np.random.default_rng(seed)
    data = _random_clean_list(rng, int(rng.integers(1, 400)), labeled=seed % 2 == 0)
    fast = T._vector_parse(data)
    assert fast is not None  # a clean file takes the vectorised path
    labels, keys, ei, ti, labeled = T._slow_parse(data, Path("mem"))
    norm = np.array([normalize_id(k) for k in keys], dtype=str)
    assert labeled == fast[4] and np.array_equal(labels, fast[0])
    utts, e, t = fast[1], fast[2], fast[3]
    assert np.array_equal(utts[e], norm[ei]) and np.array_equal(utts[t], norm[ti])
    assert utts.tolist() == sorted(set(norm.tolist()))
    assert e.dtype == np.int64 and t.dtype == np.int64


def test_hash_collisions_fall_back_to_the_exact_path(monkeypatch, tmp_path):
    """With a degenerate hash (only the last 8 bytes count) distinct ids collide; the byte
    comparison must catch it and the slow path must give the right answer."""
    from data_manifests import trials_parse as T
    data = b"1 aaaaaaaa00000001.wav bbbbbbbb00000001.wav\n0 aaaaaaaa00000001.wav cccccccc00000002.wav\n"
    monkeypatch.setattr(T, "_HASH_MUL", np.uint64(0))
    assert T._vector_parse(data) is None
    p = tmp_path / "collide.txt"
    p.write_bytes(data)
    tl = read_trials(p)
    assert tl.enrol.tolist() == ["aaaaaaaa00000001"] * 2
    assert tl.test.tolist() == ["bbbbbbbb00000001", "cccccccc00000002"]


def test_real_list_takes_the_vectorised_path(voxceleb_dir):
    from data_manifests import trials as T
    from data_manifests import trials_parse as P
    data = T._read_bytes(voxceleb_dir / "list_test_all.txt.gz")
    assert P._vector_parse(data) is not None
