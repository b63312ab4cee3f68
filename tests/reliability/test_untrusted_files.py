"""No file a user is handed may run code or reach outside where it belongs.

* a checkpoint that is a malicious pickle (its ``__reduce__`` would create a marker file),
  given to ``avfuse extract --audio-weights/--face-weights``, ``load_head`` and ``avfuse
  score --head``: refused by ``torch.load(weights_only=True)``, one-line error, the marker
  never appears (and the same file loaded *unsafely* does create its marker: the payload
  is real);
* a manifest whose media paths point outside the corpus (``../../etc/passwd``-style
  relative paths, absolute paths, devices, a FIFO, a symlink): each is a normal
  undecodable or missing media, logged in ``failures.jsonl``; non-regular files are
  never opened;
* a Zarr store whose ``zarr.json`` attributes hold odd JSON: every read path raises
  ``CacheError`` (probed in a subprocess under a 3 GiB address-space limit);
* a trial list with 10,000-character ids (and a cache holding such an id).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from data_manifests import ClipRecord, read_manifest, write_manifest
from tests.reliability.badmedia import REPO, toy_corpus
from tests.reliability.harness import avfuse_here, child_env, cli_flags, fault_corpus, one_line_error, run_avfuse

LONG_ID = "id00001/" + "x" * 10_000 + "/00001"


# ============================================================================ malicious pickles
class _Payload:
    """Pickles to ``os.system("touch MARKER")``: code that runs when the file is unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def make_evil_checkpoint(path: Path, marker: Path, *, legacy: bool = False) -> Path:
    """A torch checkpoint (zip, or the legacy pickle format) whose unpickling runs code."""
    import torch
    obj = {"state_dict": {"w": torch.zeros(2)}, "model_state": _Payload(marker)}
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def payload_is_live(work: Path) -> bool:
    """Control: the same kind of file, loaded with ``weights_only=False`` in a subprocess,
    does run its code (so the refusals below are real)."""
    work.mkdir(parents=True, exist_ok=True)
    marker = work / "control-marker"
    p = make_evil_checkpoint(work / "control.pt", marker)
    subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(p)!r}, weights_only=False)"],
                   cwd=REPO, env=child_env(), capture_output=True, timeout=300)
    return marker.exists()


def _error_text(stderr: str) -> list[str]:
    """The avfuse error message of ``stderr`` (from its ``avfuse: error:`` line to the end),
    as one string in a list (empty list when there is none)."""
    i = stderr.find("avfuse: error:")
    return [stderr[i:].strip()] if i >= 0 else []


def run_malicious_checkpoints(work: Path, base: Path) -> list[dict]:
    """Hand malicious checkpoints to every entry point that loads one. A row per attempt:
    ``{"entry", "rc", "error", "marker_written", "clean_error"}``."""
    work.mkdir(parents=True, exist_ok=True)
    corpus, ref = fault_corpus(base)
    toy_dir = toy_corpus(base)
    rows = []
    attempts = [
        ("avfuse extract --audio-weights (zip checkpoint)", "audio", False),
        ("avfuse extract --face-weights (legacy pickle format)", "face", True),
    ]
    for i, (entry, mod, legacy) in enumerate(attempts):
        marker = work / f"marker-extract-{i}"
        evil = make_evil_checkpoint(work / f"evil-{i}.pt", marker, legacy=legacy)
        flags = cli_flags(shard_size=4)
        j = flags.index(f"--{mod}-weights")
        flags[j + 1] = str(evil)
        cache = work / f"evil-{i}.zarr"
        proc = avfuse_here("extract", "-m", str(corpus.manifest), "-c", str(cache), *flags)
        rows.append({"entry": entry, "rc": proc.rc, "error": _error_text(proc.stderr),
                     "marker_written": marker.exists(), "clean_error": one_line_error(proc),
                     "cache_created": cache.exists()})
    # load_head in this process, and avfuse score --head in a subprocess
    from fusion import load_head
    from pipeline.core import HeadError
    marker = work / "marker-load-head"
    evil = make_evil_checkpoint(work / "evil-head.pt", marker)
    try:
        load_head(evil)
        err, ok = "loaded!", False
    except HeadError as e:
        err, ok = str(e), True
    rows.append({"entry": "fusion.registry.load_head", "rc": None, "error": [err], "marker_written": marker.exists(),
                 "clean_error": None if ok and "\n" not in err else ("no HeadError" if not ok else "multi-line message"),
                 "cache_created": False})
    marker = work / "marker-score"
    evil = make_evil_checkpoint(work / "evil-score.pt", marker, legacy=True)
    proc = avfuse_here("score", "--cache", str(ref), "--trials", str(toy_dir / "trials" / "dev.txt"), "--mode",
                      "AVxAV", "--head", str(evil), "--out", str(work / "scores.tsv"), "--quiet")
    rows.append({"entry": "avfuse score --head (legacy pickle)", "rc": proc.rc,
                 "error": _error_text(proc.stderr), "marker_written": marker.exists(),
                 "clean_error": one_line_error(proc), "cache_created": (work / "scores.tsv").exists()})
    return rows


@pytest.fixture(scope="module")
def malicious(tmp_path_factory, base):
    work = tmp_path_factory.mktemp("malicious")
    return SimpleNamespace(live=payload_is_live(work), rows=run_malicious_checkpoints(work, base))


def test_malicious_checkpoints_never_run(malicious):
    assert malicious.live, "control: the payload must run when unpickled unsafely"
    assert len(malicious.rows) == 4
    for r in malicious.rows:
        assert not r["marker_written"], r
        assert r["rc"] in (None, 2) and r["error"], r      # a typed avfuse error, not a crash
        assert "Traceback" not in r["error"][0], r
        assert not r["cache_created"], r                 # nothing was written before the refusal


def test_malicious_checkpoint_refusal_is_one_honest_line(malicious):
    """Regression test (found by this suite, fixed in fusion/registry.py ``load_head`` and
    extractors/registry.py ``read_checkpoint``): with torch 2.11 the refusal relayed torch's
    multi-line text, which tells the user that re-running with ``weights_only=False`` "will
    likely succeed", and ``read_checkpoint``'s regex missed torch's new wording, calling the
    file damaged without naming the refused global. It must be one line naming it."""
    for r in malicious.rows:
        msg = r["error"][0]
        assert r["clean_error"] is None, (r["entry"], r["clean_error"])
        assert "will likely succeed" not in msg, (r["entry"], msg[:300])
        assert "posix.system" in msg, (r["entry"], msg[:300])


# ============================================================================ paths outside the corpus
def outside_corpus(work: Path, base: Path) -> tuple[Path, dict[str, tuple]]:
    """A manifest of 3 valid toy clips (one under a 10,000-character clip id) and clips whose
    media paths point outside the corpus. Returns the manifest and, per clip id, the
    expected (has_audio, has_face, {(stage, modality)}, error substring)."""
    toy = read_manifest(toy_corpus(base) / "manifest.jsonl")
    root = work / "corpus"
    root.mkdir(parents=True)
    os.mkfifo(root / "fifo.wav")
    os.symlink("/etc/passwd", root / "link.m4a")
    depth = "../" * (len(root.resolve().parts) + 2)     # more ../ than the path is deep
    rec = lambda name, **kw: ClipRecord(clip_id=f"idout/{name}/00001", speaker="idout", video=name,  # noqa: E731
                                        split="train", **kw)
    DA, DF = ("decode", "audio"), ("decode", "face")
    rows = [
        (toy[0], (True, True, set(), None)),
        (ClipRecord(**{**toy[1].__dict__, "clip_id": LONG_ID}), (True, True, set(), None)),
        (rec("relative_etc_passwd", audio_path=depth + "etc/passwd"), (False, False, {DA}, "cannot open media")),
        (rec("absolute_etc_hostname", audio_path="/etc/hostname", video_path="/etc/passwd"),
         (False, False, {DA, DF}, "cannot open")),
        (rec("dev_zero", audio_path="/dev/zero", video_path="/dev/urandom"), (False, False, {DA, DF}, "not a regular file")),
        (rec("fifo", audio_path="fifo.wav"), (False, False, {DA}, "not a regular file")),
        (rec("proc_environ", audio_path="/proc/self/environ"), (False, False, {DA}, "empty")),
        (rec("symlink_to_passwd", audio_path="link.m4a"), (False, False, {DA}, "cannot open media")),
        (rec("frames_etc", audio_path=toy[2].audio_path, frames_dir=depth + "etc"), (True, False, {DF}, "no .jpg")),
        (rec("frames_root", audio_path=toy[2].audio_path, frames_dir="/"), (True, False, {DF}, "no .jpg")),
        (toy[2], (True, True, set(), None)),
    ]
    write_manifest(root / "manifest.jsonl", [r for r, _ in rows])
    return root / "manifest.jsonl", {r.clip_id: e for r, e in rows}


def run_outside_paths(work: Path, base: Path) -> SimpleNamespace:
    """Extract the outside-paths manifest with the CLI (a subprocess with a timeout: a FIFO
    opened by mistake would block). Returns the run and per-clip outcome vs expectation."""
    work.mkdir(parents=True, exist_ok=True)
    from pipeline.cache import open_cache
    manifest, expect = outside_corpus(work, base)
    cache = work / "outside.zarr"
    proc = run_avfuse("extract", "-m", str(manifest), "-c", str(cache), *cli_flags(shard_size=4),
                      "--max-failures", "1", timeout=300)
    rows, problems = [], []
    if proc.rc != 0:
        return SimpleNamespace(proc=proc, rows=rows, problems=[f"extract failed: {proc.stderr[-2000:]}"],
                               cache=cache, manifest=manifest)
    with open_cache(cache) as c:
        ids = c.ids.tolist()
        ha, hf = c.to_numpy("has_audio"), c.to_numpy("has_face")
        fails: dict[str, list] = {}
        for f in c.failures():
            fails.setdefault(f["clip_id"], []).append(f)
        problems += c.verify()
    for i, cid in enumerate(ids):
        a, v, pairs, err = expect[cid]
        got = {(f["stage"], f["modality"]) for f in fails.get(cid, [])}
        ok = (bool(ha[i]), bool(hf[i])) == (a, v) and got == pairs and \
            all(err in f["error"] for f in fails.get(cid, []))
        if not ok:
            problems.append(f"{cid[:60]}: has {bool(ha[i])}/{bool(hf[i])} fails {fails.get(cid)}")
        rows.append({"clip_id": cid, "has_audio": bool(ha[i]), "has_face": bool(hf[i]),
                     "errors": [f["error"] for f in fails.get(cid, [])]})
    return SimpleNamespace(proc=proc, rows=rows, problems=problems, cache=cache, manifest=manifest)


@pytest.fixture(scope="module")
def outside(tmp_path_factory, base):
    return run_outside_paths(tmp_path_factory.mktemp("outside"), base)


def test_paths_outside_the_corpus_are_plain_undecodable_media(outside):
    assert outside.proc.rc == 0, outside.proc.stderr[-2000:]
    assert outside.problems == []
    assert len(outside.rows) == 11


# ============================================================================ 10k-character ids
def run_long_ids(work: Path, cache: Path) -> SimpleNamespace:
    """Trial lists with 10,000-character ids against a cache that holds one: a labeled list
    naming it is scored; a list naming an unknown 10k-char id fails with one bounded line,
    or is scored with --skip-missing."""
    work.mkdir(parents=True, exist_ok=True)
    from data_manifests import read_trials
    from pipeline.cache import open_cache
    with open_cache(cache) as c:
        ids = [i for i in c.ids.tolist() if not i.startswith("idout/")]
    short = [i for i in ids if i != LONG_ID]
    good = work / "long_ids.txt"
    good.write_text(f"1 {LONG_ID}.wav {short[0]}.wav\n0 {short[1]}.wav {LONG_ID}.wav\n1 {short[0]}.wav {short[1]}.wav\n")
    tl = read_trials(good)
    unknown = work / "unknown_long_ids.txt"
    other = "id09999/" + "y" * 10_000 + "/00001"
    unknown.write_text(f"1 {other}.wav {short[0]}.wav\n0 {short[0]}.wav {short[1]}.wav\n")
    scored = avfuse_here("score", "--cache", str(cache), "--trials", str(good), "--mode", "AxA",
                        "--out", str(work / "s1.tsv"), "--quiet")
    missing = avfuse_here("score", "--cache", str(cache), "--trials", str(unknown), "--mode", "AxA",
                         "--out", str(work / "s2.tsv"), "--quiet")
    skipped = avfuse_here("score", "--cache", str(cache), "--trials", str(unknown), "--mode", "AxA",
                         "--skip-missing", "--out", str(work / "s3.tsv"), "--quiet")
    lines1 = (work / "s1.tsv").read_text().splitlines() if (work / "s1.tsv").exists() else []
    lines3 = (work / "s3.tsv").read_text().splitlines() if (work / "s3.tsv").exists() else []
    return SimpleNamespace(parsed=tl, scored=scored, lines1=lines1, missing=missing, skipped=skipped,
                           lines3=lines3)


@pytest.fixture(scope="module")
def long_ids(tmp_path_factory, outside):
    assert outside.proc.rc == 0, outside.proc.stderr[-2000:]
    return run_long_ids(tmp_path_factory.mktemp("long_ids"), outside.cache)


def test_trial_lists_with_10k_character_ids(long_ids):
    r = long_ids
    assert r.parsed.n_trials == 3 and LONG_ID in r.parsed.enrol.tolist()
    assert r.scored.rc == 0, r.scored.stderr[-1000:]
    assert len([x for x in r.lines1 if not x.startswith("label")]) == 3 and any(LONG_ID in x for x in r.lines1)
    assert one_line_error(r.missing) is None, r.missing.stderr[-1000:]
    assert "missing" in r.missing.stderr or "not in the cache" in r.missing.stderr
    assert r.skipped.rc == 0, r.skipped.stderr[-1000:]


def test_error_about_a_10k_character_id_stays_readable(long_ids):
    """Regression test (found by this suite, fixed in pipeline/scoring.py ``_preview``): the
    one-line error quoted an unknown 10,000-character id whole, burying message and hint."""
    r = long_ids
    line = next(x for x in r.missing.stderr.splitlines() if x.startswith("avfuse: error:"))
    assert len(line) < 2000, f"{len(line)} characters"


# ============================================================================ odd JSON in zarr.json
def odd_header_variants() -> dict[str, object]:
    """name -> a function editing the parsed zarr.json (dict) or the raw bytes to write."""
    def put(*keys, value):
        def f(d):
            x = d["attributes"]
            for k in keys[:-1]:
                x = x[k]
            x[keys[-1]] = value
        return f
    return {
        "avfuse is a string": put("avfuse", value="hello"),
        "avfuse is a list": put("avfuse", value=[1, 2]),
        "avfuse is null": put("avfuse", value=None),
        "no avfuse key": lambda d: d["attributes"].pop("avfuse"),
        "layout is a list": put("avfuse", "layout", value=[1]),
        "layout has an extra key": put("avfuse", "layout", "evil", value=1),
        "shard_size is a string": put("avfuse", "layout", "shard_size", value="abc"),
        "shard_size is 0": put("avfuse", "layout", "shard_size", value=0),
        "shard_size is negative": put("avfuse", "layout", "shard_size", value=-3),
        "shard_size is 1.5": put("avfuse", "layout", "shard_size", value=1.5),
        "shard_size is 1e30": put("avfuse", "layout", "shard_size", value=10 ** 30),
        "audio_dim is a string": put("avfuse", "layout", "audio_dim", value="x"),
        "audio_dim is negative": put("avfuse", "layout", "audio_dim", value=-1),
        "dtype is 'object'": put("avfuse", "layout", "dtype", value="object"),
        "dtype is a list": put("avfuse", "layout", "dtype", value=[1]),
        "segments is a string": put("avfuse", "layout", "segments", value="4"),
        "n_rows is a string": put("avfuse", "n_rows", value="abc"),
        "n_rows is negative": put("avfuse", "n_rows", value=-5),
        "n_rows is 10^12": put("avfuse", "n_rows", value=10 ** 12),
        "n_rows is 3.7": put("avfuse", "n_rows", value=3.7),
        "n_rows is null": put("avfuse", "n_rows", value=None),
        "format_version is a string": put("avfuse", "format_version", value="1"),
        "format_version is null": put("avfuse", "format_version", value=None),
        "format_version is 99": put("avfuse", "format_version", value=99),
        "provenance is a string": put("avfuse", "provenance", value="x"),
        "attributes is a list": lambda d: d.__setitem__("attributes", [1]),
        "n_rows is NaN": b'NaN',
        "n_rows is Infinity": b'Infinity',
        "not JSON": b"{not json",
        "empty file": b"",
        "binary bytes": bytes(range(256)),
        "nested 100,000 deep": b"[" * 100_000 + b"]" * 100_000,
    }


def _probe_headers(src: str, work: str) -> None:  # runs in a subprocess (see probe_odd_headers)
    import copy
    import traceback

    from pipeline.cache import open_cache
    from pipeline.core import CacheError
    base = json.loads((Path(src) / "zarr.json").read_text())
    out = {}
    for i, (name, edit) in enumerate(odd_header_variants().items()):
        dst = Path(work) / f"v{i}.zarr"
        shutil.copytree(src, dst)
        if isinstance(edit, bytes) and edit in (b"NaN", b"Infinity"):
            data = json.dumps(base).replace('"n_rows": ', f'"n_rows": {edit.decode()}, "_was": ').encode()
        elif isinstance(edit, bytes):
            data = edit
        else:
            d = copy.deepcopy(base)
            edit(d)
            data = json.dumps(d).encode()
        (dst / "zarr.json").write_bytes(data)
        try:
            c = open_cache(dst)
            c.to_numpy("audio/clip", rows=[0])
            c.info()
            problems = c.verify()
            out[name] = {"outcome": "opened", "verify": problems[:2]}
        except CacheError as e:
            out[name] = {"outcome": "CacheError", "error": str(e)[:300]}
        except BaseException as e:  # noqa: BLE001 - anything else is the finding
            tb = traceback.extract_tb(e.__traceback__)[-1]
            out[name] = {"outcome": type(e).__name__, "error": str(e)[:200],
                         "where": f"{Path(tb.filename).name}:{tb.lineno} {tb.name}"}
        shutil.rmtree(dst, ignore_errors=True)
    print(json.dumps(out))


def probe_odd_headers(ref: Path, work: Path, mem_gib: float = 3.0) -> dict[str, dict]:
    """Copy ``ref`` once per variant of ``odd_header_variants``, rewrite its zarr.json, and
    open, read, ``info`` and ``verify`` it, all in one subprocess limited to ``mem_gib`` of
    address space (a header claiming 10^12 rows must not take the machine's memory)."""
    import resource
    lim = int(mem_gib * 2 ** 30)
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from tests.reliability.test_untrusted_files import _probe_headers; "
                               "_probe_headers(sys.argv[1], sys.argv[2])", str(ref), str(work)],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (lim, lim)))
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_odd_json_in_store_attributes_is_a_cache_error(tmp_path, base):
    """An edited zarr.json must give CacheError (or, when the header is still well-formed,
    open and let ``verify`` report the edit) -- never another exception, never unbounded
    memory. BUG (pipeline/cache.py ``EmbeddingCache.__init__``, pipeline/cache_zarr.py
    ``read_header``): a header that is not an object, a non-int format_version, and layout or
    n_rows values of the wrong type or range escape as TypeError/ValueError/
    ZeroDivisionError/OverflowError, and n_rows = 10^12 makes ``verify`` allocate without
    bound (MemoryError here; the OOM killer without the limit). Fix: check the header is
    a dict, format_version an int, call ``CacheLayout.validate()``, require an int n_rows
    >= 1 equal to the length of the stored ``ids`` array, all inside the ``try`` that turns
    errors into ``CacheError("the cache header is damaged ...")``."""
    corpus, ref = fault_corpus(base)
    res = probe_odd_headers(ref, tmp_path)
    assert len(res) == len(odd_header_variants())
    escaped = {k: v for k, v in res.items() if v["outcome"] not in ("CacheError", "opened")}
    silently = {k: v for k, v in res.items() if v["outcome"] == "opened" and not v["verify"]}
    assert escaped == {} and silently == {}
