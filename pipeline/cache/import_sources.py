"""Embeddings made elsewhere, read for ``avfuse cache import``: sources, ids, checks.

A source (``read_source``) is one of

* a Kaldi ``.scp`` (binary float vectors/matrices in arks; WeSpeaker, 3D-Speaker, Kaldi):
  read with ``pipeline.kaldi_ark``'s numpy gathers, or with ``kaldiio`` for what that
  fast path does not read (compressed matrices, text arks, pipes, ranges);
* a Kaldi ``.ark`` without scp (walked front to back, same fallback);
* a folder of per-utterance ``.npy`` files (SpeechBrain): the relative path without
  ``.npy`` is the utterance id; shapes ``(D,)``, ``(1, D)``, ``(1, 1, D)`` for clips,
  ``(S, D)`` / ``(1, S, D)`` for sequences;
* an ``.npz`` with an ``ids`` array beside the embedding array(s): ``FILE.npz:KEY``
  names the array, else the role's usual names (``audio/clip``, ``audio``, ``embeddings``
  ...) or the only embedding array. A ``has_audio``/``has_face`` (and ``done``) array in
  it keeps only the rows it flags (so an ``avfuse cache export`` npz imports back).

Ids are normalised to trial-list keys by ``normalize_ids`` (vectorised
``data_manifests.trials.normalize_id`` plus the Kaldi ``spk-video-utt`` form). Every
user error is a ``CacheError`` naming the file and the id: a dimension that differs
from the source's first row, NaN/Inf values, duplicate ids after normalisation, ids
matching no trial-list form, truncated arks and unreadable files.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_manifests.ids import MEDIA_EXTENSIONS, normalize_id
from pipeline.core.errors import CacheError
from pipeline.core.progress import progress as progress_

ROLES = {"audio": ("A", 1), "face": ("V", 1), "audio_segments": ("A", 2), "face_frames": ("V", 2)}
NPZ_KEYS = {"audio": ("audio/clip", "audio", "audio_clip", "embeddings", "embedding", "emb", "xvector"),
            "face": ("face/clip", "face", "face_clip", "embeddings", "embedding", "emb"),
            "audio_segments": ("audio/segments", "audio_segments", "segments", "embeddings"),
            "face_frames": ("face/frames", "face_frames", "frames", "embeddings")}
NPZ_META = {"ids", "speakers", "splits", "done", "has_audio", "has_face", "duration",
            "audio/segment_valid", "face/frame_valid"}
CHUNK = 65536


@dataclass
class Source:
    """One source read into memory: ``data`` float32 ``(N, D)`` (clips) or ``(N, S, D)``
    (sequences, ``valid`` (N, S) bool), ``ids`` normalised, ``raw_ids`` as in the file."""
    path: Path
    role: str
    format: str
    ids: np.ndarray
    raw_ids: np.ndarray
    data: np.ndarray
    valid: np.ndarray | None = None
    files: list[dict] = field(default_factory=list)    # {"path", "sha256"} of every file read
    parts: list["Source"] | None = None                  # the sources merged into this one
    sorted_ids: np.ndarray | None = None                 # ids sorted (set by the duplicate check)

    def where(self, i: int) -> Path:
        """The file holding row ``i`` (for error messages)."""
        return self.path / f"{self.raw_ids[i]}.npy" if self.format == "npy-folder" else self.path

    @property
    def modality(self) -> str:
        return "audio" if ROLES[self.role][0] == "A" else "face"

    def provenance(self) -> dict:
        return {"path": str(self.path), "role": self.role, "format": self.format, "rows": int(len(self.ids)),
                "shape": [int(x) for x in self.data.shape[1:]], "files": _resolved(self.files)}


# ----------------------------------------------------------------- ids
def normalize_ids(raw: np.ndarray) -> np.ndarray:
    """Trial-list clip ids of ``raw`` (vectorised): ``normalize_id`` (strip, one media
    extension off, ``\\``->``/``, ``./`` off) and the Kaldi form ``spk-video-utt`` ->
    ``spk/video/utt`` (first and last ``-``; YouTube video ids may contain ``-``)."""
    s = np.strings.strip(np.asarray(raw, dtype=str))
    if not len(s):
        return s
    odd = (np.strings.find(s, "\\") >= 0) | np.strings.startswith(s, "./")
    head, dot, ext = np.strings.rpartition(s, ".")
    exts = np.array([e[1:] for e in MEDIA_EXTENSIONS])
    strip = (dot == ".") & (np.strings.find(ext, "/") < 0) & np.isin(np.strings.lower(ext), exts)
    s = np.where(strip, head, s)
    if odd.any():  # rare forms: the definition itself, row by row
        s = s.astype(object)
        s[odd] = [normalize_id(x) for x in np.asarray(raw, dtype=str)[odd].tolist()]
        s = s.astype(str)
    kaldi = (np.strings.count(s, "/") == 0) & (np.strings.count(s, "-") >= 2)
    if kaldi.any():
        spk, _, rest = np.strings.partition(s[kaldi], "-")
        vid, _, utt = np.strings.rpartition(rest, "-")
        s = s.copy()
        s[kaldi] = np.strings.add(np.strings.add(np.strings.add(np.strings.add(spk, "/"), vid), "/"), utt)
    return s


def bad_id_forms(ids: np.ndarray) -> np.ndarray:
    """Bool per id: not ``speaker/video/utterance`` (three non-empty parts, no spaces)."""
    return ((np.strings.count(ids, "/") != 2) | np.strings.startswith(ids, "/") | np.strings.endswith(ids, "/")
            | (np.strings.find(ids, "//") >= 0) | (np.strings.find(ids, " ") >= 0)
            | (np.strings.find(ids, "\t") >= 0))


def check_ids(src: Source) -> None:
    bad = bad_id_forms(src.ids)
    if bad.any():
        i = int(np.argmax(bad))
        raise CacheError(f"id {str(src.raw_ids[i])!r} matches no trial-list form ({int(bad.sum())} such ids)",
                         path=src.where(i), hint="ids must read speaker/video/utterance (id10270/5r0dWxy17C8/00001"
                                             ", with or without .wav) or the Kaldi id10270-5r0dWxy17C8-00001")


def find_duplicates(sources: list[Source]) -> np.ndarray:
    """The sorted ids of ``sources``; ``CacheError`` for the first id (after normalisation)
    found twice."""
    ids = np.concatenate([s.ids for s in sources])
    if len(ids) < 2:
        return ids
    owner = np.concatenate([np.full(len(s.ids), i) for i, s in enumerate(sources)])
    local = np.concatenate([np.arange(len(s.ids)) for s in sources])
    order = np.argsort(ids, kind="stable")
    srt = ids[order]
    dup = np.flatnonzero(srt[1:] == srt[:-1])
    if len(dup):
        a, b = order[dup[0]], order[dup[0] + 1]
        sa, sb = sources[owner[a]], sources[owner[b]]
        where = "" if sa is sb else f" and in {sb.path}"
        raise CacheError(f"duplicate id {srt[dup[0]]} ({str(sa.raw_ids[local[a]])!r} and {str(sb.raw_ids[local[b]])!r}"
                         f"{where}; {len(dup)} duplicates in all)", path=sa.where(local[a]),
                         hint="each utterance may appear once per modality (ids are compared after "
                              "normalisation: .wav, slash and Kaldi forms are one id)")
    return srt


def check_finite(src: Source) -> None:
    """NaN/Inf anywhere, or an all-zero clip vector (all-zero sequence steps are padding)."""
    n = len(src.data)
    for a in range(0, n, CHUNK):
        part = src.data[a:a + CHUNK].reshape(min(CHUNK, n - a), -1)
        ok = np.isfinite(part).all(axis=1)
        if not ok.all():
            i = a + int(np.argmax(~ok))
            raise CacheError(f"id {src.raw_ids[i]} has NaN/Inf values", path=src.where(i),
                             hint="drop or recompute that embedding before importing")
        if src.valid is None:
            zero = ~part.any(axis=1)
            if zero.any():
                i = a + int(np.argmax(zero))
                raise CacheError(f"id {src.raw_ids[i]} is an all-zero vector (no direction to score)",
                                 path=src.where(i), hint="drop or recompute that embedding before importing")


def _dim_error(path, rid, got, want) -> CacheError:
    return CacheError(f"id {rid}: dimension mismatch: shape {tuple(got)}, expected {tuple(want)} "
                      f"(the first row's)", path=path,
                      hint="all embeddings of one modality must have the same size (one backbone)")


# ----------------------------------------------------------------- readers
_POOL = None


def sha256_of(path: Path):
    """A future of the file's sha256 (hashed in a thread, overlapping the parsing; hashlib
    releases the GIL); ``Source.provenance`` resolves it."""
    global _POOL
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.core.fsio import sha256_file
    if _POOL is None:
        _POOL = ThreadPoolExecutor(2, thread_name_prefix="avfuse-sha256")
    return _POOL.submit(sha256_file, path)


def _resolved(files: list[dict]) -> list[dict]:
    return [{k: (v.result() if hasattr(v, "result") else v) for k, v in f.items()} for f in files]


def _from_records(path: Path, role: str, fmt: str, rec, files: list[dict]) -> Source:
    from pipeline.cache.kaldi_ark import gather
    n = len(rec.keys)
    seq = ROLES[role][1] == 2
    if n == 0:
        raise CacheError("no embeddings in this source", path=path)
    if seq:
        c0 = int(rec.cols[0])
        bad = rec.cols != c0
        if bad.any():
            i = int(np.argmax(bad))
            raise _dim_error(path, rec.keys[i], (rec.rows[i], rec.cols[i]), ("S", c0))
        s_max = int(rec.rows.max())
        data = np.zeros((n, s_max, c0), np.float32)
        valid = np.arange(s_max) < rec.rows[:, None]
        for r in np.unique(rec.rows):
            sel = np.flatnonzero(rec.rows == r)
            block = np.zeros((len(sel), s_max * c0), np.float32)
            gather(rec, sel, int(r) * c0, block)
            data[sel] = block.reshape(len(sel), s_max, c0)
    else:
        d0 = int(rec.cols[0])
        bad = (rec.rows != 1) | (rec.cols != d0)
        if bad.any():
            i = int(np.argmax(bad))
            got = (rec.rows[i], rec.cols[i]) if rec.matrix[i] else (rec.cols[i],)
            raise _dim_error(path, rec.keys[i], got, (d0,))
        data = np.empty((n, d0), np.float32)
        gather(rec, np.arange(n), d0, data)
        valid = None
    return Source(path, role, fmt, normalize_ids(rec.keys), rec.keys, data, valid, files)


def _from_arrays(path: Path, role: str, fmt: str, keys: list[str], arrays: list[np.ndarray],
                 files: list[dict]) -> Source:
    """Rows given one array per utterance (kaldiio / npy): shape checks, stacking."""
    seq = ROLES[role][1] == 2
    at = (lambda k: path / f"{k}.npy") if fmt == "npy-folder" else (lambda k: path)
    if not arrays:
        raise CacheError("no embeddings in this source", path=path)
    shaped = []
    for k, a in zip(keys, arrays):
        a = np.asarray(a)
        while a.ndim > (2 if seq else 1) and a.shape[0] == 1:
            a = a[0]
        if a.ndim == 2 and not seq and a.shape[0] == 1:
            a = a[0]
        if a.ndim != (2 if seq else 1) or a.dtype.kind not in "fiu":
            raise CacheError(f"id {k}: expected a {'(S, D) matrix' if seq else '(D,) vector'} of floats, got shape "
                             f"{a.shape} {a.dtype}", path=at(k))
        shaped.append(a)
    d0 = shaped[0].shape[-1]
    for k, a in zip(keys, shaped):
        if a.shape[-1] != d0:
            raise _dim_error(at(k), k, a.shape, ("S", d0) if seq else (d0,))
    raw = np.array(keys, dtype=str)
    if seq:
        s_max = max(a.shape[0] for a in shaped)
        data = np.zeros((len(shaped), s_max, d0), np.float32)
        valid = np.zeros((len(shaped), s_max), bool)
        for i, a in enumerate(shaped):
            data[i, :len(a)] = a
            valid[i, :len(a)] = True
        return Source(path, role, fmt, normalize_ids(raw), raw, data, valid, files)
    return Source(path, role, fmt, normalize_ids(raw), raw, np.stack(shaped).astype(np.float32), None, files)


def _read_kaldiio(path: Path, role: str, kind: str, files: list[dict]) -> Source:
    import kaldiio
    keys, arrays = [], []
    try:
        it = kaldiio.load_scp_sequential(str(path)) if kind == "scp" else kaldiio.load_ark(str(path))
        for k, a in it:
            keys.append(k)
            arrays.append(np.asarray(a))
    except CacheError:
        raise
    except Exception as e:  # noqa: BLE001 - kaldiio raises plain exceptions on bad bytes
        after = f"after id {keys[-1]}" if keys else "at the first record"
        raise CacheError(f"unreadable or truncated {kind} {after} ({type(e).__name__}: {e})", path=path,
                         hint="rewrite the file (it was cut short or is not a Kaldi ark/scp)") from e
    return _from_arrays(path, role, f"kaldi-{kind} (kaldiio)", keys, arrays, files)


def read_kaldi(path: Path, role: str) -> Source:
    from pipeline.cache.kaldi_ark import Unsupported, records_from_scp, scan_ark
    kind = "scp" if path.suffix.lower() == ".scp" else "ark"
    own = [{"path": str(path), "sha256": sha256_of(path)}]
    try:
        rec = records_from_scp(path) if kind == "scp" else scan_ark(path)
    except Unsupported:
        return _read_kaldiio(path, role, kind, own)
    files = own if kind == "scp" else []
    files += [{"path": str(a), "sha256": sha256_of(a)} for a in rec.arks]
    return _from_records(path, role, f"kaldi-{kind}", rec, files)


def read_npy_folder(path: Path, role: str, progress: bool = False) -> Source:
    names = sorted(p.relative_to(path).as_posix() for p in path.rglob("*.npy"))
    if not names:
        raise CacheError("no .npy files in this folder", path=path,
                         hint="pass a folder of per-utterance SPEAKER/VIDEO/UTT.npy files")
    h = hashlib.sha256()
    keys, arrays = [], []
    for name in progress_(names, desc=f"read {path.name}", unit="file", enabled=progress):
        blob = (path / name).read_bytes()
        h.update(name.encode() + b"\0" + hashlib.sha256(blob).digest())
        try:
            a = np.load(io.BytesIO(blob), allow_pickle=False)
        except Exception as e:  # noqa: BLE001
            raise CacheError(f"id {name[:-4]}: unreadable .npy ({type(e).__name__}: {e})",
                             path=path / name, hint="rewrite or remove that file") from e
        keys.append(name[:-4])
        arrays.append(a)
    files = [{"path": str(path), "sha256": h.hexdigest(), "files": len(names),
              "sha256_of": "sha256 over (relative path, sha256 of the file) in sorted order"}]
    return _from_arrays(path, role, "npy-folder", keys, arrays, files)


def read_npz(path: Path, role: str, key: str | None) -> Source:
    try:
        z = np.load(path, allow_pickle=False)
        names = list(z.files)
    except Exception as e:  # noqa: BLE001
        raise CacheError(f"unreadable .npz ({type(e).__name__}: {e})", path=path) from e
    with z:
        if "ids" not in names:
            raise CacheError("the .npz has no 'ids' array", path=path,
                             hint="save the utterance ids beside the embeddings: np.savez(f, ids=ids, embeddings=X)")
        if key is None:
            key = next((k for k in NPZ_KEYS[role] if k in names), None)
            rest = [k for k in names if k not in NPZ_META]
            if key is None and len(rest) == 1:
                key = rest[0]
            if key is None:
                raise CacheError(f"cannot tell which array holds the {role} embeddings ({', '.join(rest)})",
                                 path=path, hint=f"name it: {path}:ARRAY")
        if key not in names:
            raise CacheError(f"the .npz has no array {key!r} (has {', '.join(names)})", path=path)
        try:
            raw, data = np.asarray(z["ids"]).astype(str), np.asarray(z[key])
            mod = ROLES[role][0]
            keep = np.ones(len(raw), bool)
            for flag in ("done", "has_audio" if mod == "A" else "has_face"):
                if flag in names:
                    keep &= np.asarray(z[flag]).astype(bool)
            vkey = {"audio_segments": "audio/segment_valid", "face_frames": "face/frame_valid"}.get(role)
            valid = np.asarray(z[vkey]).astype(bool) if vkey in names else None
        except Exception as e:  # noqa: BLE001 - a truncated member
            raise CacheError(f"unreadable .npz member ({type(e).__name__}: {e})", path=path) from e
    want = ROLES[role][1] + 1
    if data.ndim != want or len(data) != len(raw) or data.dtype.kind not in "fiu":
        raise CacheError(f"array {key!r} has shape {data.shape} {data.dtype}; expected {len(raw)} rows x "
                         f"{'S x D' if want == 3 else 'D'} floats (one row per id)", path=path)
    files = [{"path": str(path), "sha256": sha256_of(path), "array": key}]
    data = data[keep].astype(np.float32, copy=False)
    if want == 3:
        v = (valid[keep] if valid is not None and valid.shape == data.shape[:2]
             else np.ones(data.shape[:2], bool))
    else:
        v = None
    return Source(path, role, "npz", normalize_ids(raw[keep]), raw[keep], data, v, files)


def read_source(spec: str | Path, role: str, progress: bool = False) -> Source:
    """Read one source (see the module docstring) and check it on its own (ids, finite values)."""
    text = str(spec)
    key = None
    if ".npz:" in text:
        text, key = text.rsplit(":", 1)
    path = Path(text)
    if not path.exists():
        raise CacheError("no such embedding source", path=path,
                         hint="pass a Kaldi .scp/.ark, a folder of .npy files or an .npz")
    suffix = path.suffix.lower()
    if path.is_dir():
        src = read_npy_folder(path, role, progress)
    elif suffix in (".scp", ".ark"):
        src = read_kaldi(path, role)
    elif suffix == ".npz":
        src = read_npz(path, role, key)
    else:
        raise CacheError(f"unknown embedding source type {suffix!r}", path=path,
                         hint="pass a Kaldi .scp/.ark, a folder of .npy files or an .npz")
    if len(src.ids) == 0:
        raise CacheError("no embeddings in this source", path=path)
    check_ids(src)
    check_finite(src)
    if src.valid is not None:  # steps that are all zero are padding
        src.valid &= np.abs(src.data).max(axis=2) > 0
    return src
