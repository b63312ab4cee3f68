"""Kaldi binary ark/scp of float vectors and matrices: a vectorised reader and writer.

Format (what Kaldi, WeSpeaker, 3D-Speaker and ``kaldiio`` write): an ``.ark`` is a
sequence of records ``KEY SPACE \\0B TOKEN SIZES DATA``, TOKEN ``FV `` / ``DV `` (a
float32 / float64 vector, ``\\x04 int32 dim``) or ``FM `` / ``DM `` (a matrix,
``\\x04 int32 rows \\x04 int32 cols``), data little-endian, row-major. An ``.scp`` maps
``KEY ARK_PATH:OFFSET`` with OFFSET the byte of ``\\0B``.

``read_scp_fast`` parses the scp as one byte string and reads every record's header
and data with numpy gathers from the memory-mapped arks (no Python loop per record);
``scan_ark`` walks an ark without scp (a small loop per record over the headers only,
then the same gathers). Equally spaced records (keys of one length, as VoxCeleb ids) are
copied as one strided view. Anything else Kaldi can hold (compressed ``CM`` matrices,
text arks, pipes, ``[range]`` specifiers) returns None / ``Unsupported`` so the caller
falls back to ``kaldiio``, the general reader. ``write_ark_scp`` is the vectorised
writer (records built in one uint8 buffer per chunk of rows).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.errors import CacheError

TOKENS = {b"FV ": ("<f4", False), b"DV ": ("<f8", False), b"FM ": ("<f4", True), b"DM ": ("<f8", True)}
GATHER_ROWS = 16384          # records per gather / write chunk (bounds the index arrays' memory)


class Unsupported(Exception):
    """A valid Kaldi input this fast path does not read (the caller uses kaldiio)."""


@dataclass
class ArkRecords:
    """Where each record's data lies: ``arks[ark_idx[i]]`` at byte ``data_off[i]``,
    ``rows[i] x cols[i]`` values of ``dtype[i]`` ("<f4"/"<f8"), ``matrix[i]`` False for vectors."""
    keys: np.ndarray          # str
    arks: list[Path]
    ark_idx: np.ndarray       # int64
    data_off: np.ndarray      # int64
    rows: np.ndarray          # int64 (1 for vectors)
    cols: np.ndarray          # int64
    wide: np.ndarray          # bool: float64 data
    matrix: np.ndarray        # bool


def _decode_keys(keys: np.ndarray) -> np.ndarray:
    try:
        return keys.astype(str)
    except UnicodeDecodeError:
        return np.array([k.decode("utf-8", "replace") for k in keys.tolist()], dtype=str)


def _resolve_ark(raw: str, scp: Path) -> Path:
    p = Path(raw)
    if p.is_absolute():
        return p
    beside = scp.parent / p        # Kaldi resolves against the working directory; try the scp's folder first
    return beside if beside.exists() else Path.cwd() / p


def parse_scp(scp: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(keys str, ark paths str, offsets int64)`` of a plain ``KEY PATH:OFFSET`` scp.

    ``Unsupported`` for pipes, ranges, ``ark:`` prefixes or lines with other field counts."""
    data = scp.read_bytes()
    toks = np.array(data.split(), dtype=bytes)
    lines = data.splitlines()
    n_lines = len(lines) - lines.count(b"")
    if len(toks) % 2 or len(toks) // 2 != n_lines:
        raise Unsupported("scp lines with other than two fields")
    keys, rx = toks[0::2], toks[1::2]
    if not len(rx):
        return np.zeros(0, dtype=str), np.zeros(0, dtype=str), np.zeros(0, dtype=np.int64)
    if (np.strings.endswith(rx, b"|") | np.strings.endswith(rx, b"]") | np.strings.startswith(rx, b"ark:")).any():
        raise Unsupported("pipes, ranges or ark: prefixes")
    path, colon, off = np.strings.rpartition(rx, b":")
    if (colon != b":").any() or not np.strings.isdigit(off).all():
        raise Unsupported("rxspecifiers without a byte offset")
    return _decode_keys(keys), _decode_keys(path), off.astype(np.int64)


def _headers(mm: np.ndarray, off: np.ndarray, keys: np.ndarray, ark: Path):
    """Token, rows, cols, data offset of the records at ``off`` (vectorised)."""
    size = len(mm)
    short = off + 10 > size
    if short.any():
        i = int(np.argmax(short))
        raise CacheError(f"truncated ark: the record of id {keys[i]} starts at byte {off[i]} but the file "
                         f"has {size} bytes", path=ark, hint="rewrite the ark (it was cut short)")
    h = mm[off[:, None] + np.arange(10)]
    if not ((h[:, 0] == 0) & (h[:, 1] == ord("B"))).all():
        i = int(np.argmax(~((h[:, 0] == 0) & (h[:, 1] == ord("B")))))
        if bytes(h[i, :2]) in (b"[ ", b" [") or h[i, 0] == ord("["):
            raise Unsupported("text ark")
        raise CacheError(f"id {keys[i]}: no binary Kaldi record at byte {off[i]} (found {bytes(h[i, :5])!r})",
                         path=ark, hint="the scp offset does not point into this ark: regenerate the scp")
    tok = h[:, 2:5].copy().view("S3").ravel()
    vec = (tok == b"FV ") | (tok == b"DV ")
    mat = (tok == b"FM ") | (tok == b"DM ")
    if not (vec | mat).all():
        raise Unsupported(f"record type {tok[np.argmax(~(vec | mat))]!r} (e.g. compressed CM)")
    first = h[:, 6:10].copy().view("<i4").ravel().astype(np.int64)
    rows = np.where(mat, first, 1)
    cols = first.copy()
    if mat.any():
        mo = off[mat]
        if (mo + 15 > size).any():
            i = int(np.flatnonzero(mat)[np.argmax(mo + 15 > size)])
            raise CacheError(f"truncated ark: the record of id {keys[i]} is cut short", path=ark,
                             hint="rewrite the ark (it was cut short)")
        cols[mat] = mm[mo[:, None] + np.arange(11, 15)].copy().view("<i4").ravel()
    wide = np.strings.startswith(tok, b"D")
    data_off = off + np.where(mat, 15, 10)
    end = data_off + rows * cols * np.where(wide, 8, 4)
    bad = (rows < 0) | (cols < 0) | (end > size)
    if bad.any():
        i = int(np.argmax(bad))
        raise CacheError(f"truncated ark: the record of id {keys[i]} needs bytes up to {end[i]} but the "
                         f"file has {size}", path=ark, hint="rewrite the ark (it was cut short)")
    return rows, cols, data_off, wide, mat


def records_from_scp(scp: Path) -> ArkRecords:
    """Locate every record of a plain binary scp (``Unsupported`` -> use kaldiio)."""
    keys, paths, offs = parse_scp(scp)
    if len(paths) and (paths == paths[0]).all():       # the usual case: one ark (no 1M-string unique)
        uniq, inv = paths[:1], np.zeros(len(paths), np.int64)
    else:
        uniq, inv = np.unique(paths, return_inverse=True)
    arks = [_resolve_ark(str(p), scp) for p in uniq]
    n = len(keys)
    rows, cols, data_off = (np.zeros(n, np.int64) for _ in range(3))
    wide, mat = np.zeros(n, bool), np.zeros(n, bool)
    for j, ark in enumerate(arks):
        if not ark.is_file():
            i = int(np.argmax(inv == j))
            raise CacheError(f"id {keys[i]}: its ark {ark} does not exist", path=scp,
                             hint="fix the paths in the scp (Kaldi resolves them against the working directory)")
        sel = np.flatnonzero(inv == j)
        mm = np.memmap(ark, dtype=np.uint8, mode="r") if ark.stat().st_size else np.zeros(0, np.uint8)
        r, c, d, w, m = _headers(mm, offs[sel], keys[sel], ark)
        rows[sel], cols[sel], data_off[sel], wide[sel], mat[sel] = r, c, d, w, m
    return ArkRecords(keys, arks, inv.astype(np.int64), data_off, rows, cols, wide, mat)


def scan_ark(ark: Path) -> ArkRecords:
    """Locate every record of an ark read front to back (no scp). A loop over the headers
    only; ``Unsupported`` for text or compressed records."""
    size = ark.stat().st_size
    mm = np.memmap(ark, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
    buf = memoryview(mm) if size else memoryview(b"")
    keys, offs = [], []
    pos = 0
    while pos < size:
        while pos < size and buf[pos] in (9, 10, 13, 32):
            pos += 1
        if pos >= size:
            break
        sp = bytes(buf[pos:pos + 4096]).find(b" ")
        if sp < 0:
            raise CacheError(f"truncated ark: no record after id {keys[-1] if keys else '(start)'} "
                             f"(a key without data at byte {pos})", path=ark, hint="rewrite the ark")
        key = bytes(buf[pos:pos + sp])
        start = pos + sp + 1
        head = bytes(buf[start:start + 15])
        if head[:2] != b"\0B":
            if head[:1] == b"[":
                raise Unsupported("text ark")
            raise CacheError(f"id {key.decode(errors='replace')}: no binary Kaldi record at byte {start}",
                             path=ark, hint="is this a Kaldi ark?")
        tok = head[2:5]
        if tok not in TOKENS:
            raise Unsupported(f"record type {tok!r}")
        if len(head) < (15 if TOKENS[tok][1] else 10):
            raise CacheError(f"truncated ark: the record of id {key.decode(errors='replace')} is cut short",
                             path=ark, hint="rewrite the ark (it was cut short)")
        item = 8 if tok[0:1] == b"D" else 4
        if TOKENS[tok][1]:
            n = int.from_bytes(head[6:10], "little", signed=True) * int.from_bytes(head[11:15], "little", signed=True)
            hl = 15
        else:
            n, hl = int.from_bytes(head[6:10], "little", signed=True), 10
        keys.append(key)
        offs.append(start)
        pos = start + hl + n * item
    k = _decode_keys(np.array(keys, dtype=bytes)) if keys else np.zeros(0, dtype=str)
    o = np.array(offs, dtype=np.int64)
    r, c, d, w, m = _headers(mm, o, k, ark) if len(o) else (np.zeros(0, np.int64),) * 3 + (np.zeros(0, bool),) * 2
    return ArkRecords(k, [ark], np.zeros(len(k), np.int64), d, r, c, w, m)


def gather(rec: ArkRecords, sel: np.ndarray, n_values: int, out: np.ndarray) -> None:
    """``out[j, :n_values] = record sel[j]'s first n_values values`` as float32 (vectorised:
    one gather per ark x byte alignment x dtype, in chunks of ``GATHER_ROWS`` records)."""
    cols = np.arange(n_values)
    for j, ark in enumerate(rec.arks):
        on_ark = rec.ark_idx[sel] == j
        if not on_ark.any():
            continue
        mm = np.memmap(ark, dtype=np.uint8, mode="r")
        for wide in (False, True):
            item = 8 if wide else 4
            part = on_ark & (rec.wide[sel] == wide)
            if _strided(mm, rec.data_off[sel[part]], np.flatnonzero(part), n_values, item, out):
                continue
            for r in range(item):
                pick = np.flatnonzero(part & (rec.data_off[sel] % item == r))
                if not len(pick):
                    continue
                usable = (len(mm) - r) // item
                flat = mm[r:r + usable * item].view("<f8" if wide else "<f4")
                start = (rec.data_off[sel[pick]] - r) // item
                for a in range(0, len(pick), GATHER_ROWS):
                    idx = start[a:a + GATHER_ROWS, None] + cols
                    out[pick[a:a + GATHER_ROWS], :n_values] = flat[idx]


def _strided(mm: np.ndarray, offs: np.ndarray, dst: np.ndarray, n_values: int, item: int,
             out: np.ndarray) -> bool:
    """Records at equally spaced offsets (keys of one length, one shape: e.g. VoxCeleb ids) are
    one strided view of the ark: copied in chunks without index arrays. False if not so."""
    if len(offs) < 2:
        return False
    step = np.diff(offs)
    if not (step == step[0]).all() or step[0] < n_values * item:
        return False
    width = n_values * item
    dt = "<f8" if item == 8 else "<f4"
    for a in range(0, len(offs), GATHER_ROWS):
        b = min(a + GATHER_ROWS, len(offs))
        start = int(offs[a])
        view = np.lib.stride_tricks.as_strided(mm[start:], shape=(b - a, width), strides=(int(step[0]), 1),
                                               writeable=False)
        out[dst[a:b], :n_values] = np.ascontiguousarray(view).view(dt)
    return True


# ------------------------------------------------------------------ writing
def _encode_keys(keys) -> tuple[np.ndarray, np.ndarray]:
    kb = np.char.encode(np.asarray(keys, dtype=str), "utf-8")
    if (np.strings.find(kb, b" ") >= 0).any() or (np.strings.str_len(kb) == 0).any():
        raise CacheError("Kaldi keys must be non-empty and contain no spaces")
    return kb, np.strings.str_len(kb).astype(np.int64)


def ark_bytes(keys, data: np.ndarray, nrows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(buffer uint8, offsets of each record's \\0B in the buffer)`` for float32 ``data``:
    ``(N, D)`` -> ``FV`` vectors; ``(N, R, C)`` -> ``FM`` matrices of the first ``nrows[i]``
    rows (all R when None)."""
    data = np.ascontiguousarray(data, dtype="<f4")
    kb, klen = _encode_keys(keys)
    n = len(kb)
    if data.ndim == 2:
        hl, width = 10, data.shape[1] * 4
        nbytes = np.full(n, width, np.int64)
        hdr = np.zeros((n, hl), np.uint8)
        hdr[:, :6] = np.frombuffer(b"\0BFV \x04", np.uint8)
        hdr[:, 6:10] = np.array([data.shape[1]], "<i4").view(np.uint8)
    else:
        r_all, c = data.shape[1], data.shape[2]
        nrows = np.full(n, r_all, np.int64) if nrows is None else np.asarray(nrows, np.int64)
        hl, width = 15, r_all * c * 4
        nbytes = nrows * c * 4
        hdr = np.zeros((n, hl), np.uint8)
        hdr[:, :6] = np.frombuffer(b"\0BFM \x04", np.uint8)
        hdr[:, 6:10] = nrows.astype("<i4")[:, None].view(np.uint8)
        hdr[:, 10] = 4
        hdr[:, 11:15] = np.array([c], "<i4").view(np.uint8)
    rec = klen + 1 + hl + nbytes
    starts = np.concatenate([[0], np.cumsum(rec)[:-1]]).astype(np.int64)
    buf = np.empty(int(rec.sum()), np.uint8)
    kmax = kb.dtype.itemsize
    kmat = np.ascontiguousarray(kb).view(np.uint8).reshape(n, kmax)
    kmask = np.arange(kmax) < klen[:, None]
    buf[(starts[:, None] + np.arange(kmax))[kmask]] = kmat[kmask]
    buf[starts + klen] = ord(" ")
    off = starts + klen + 1
    buf[off[:, None] + np.arange(hl)] = hdr
    pay = data.reshape(n, -1).view(np.uint8)
    dst = (off + hl)[:, None] + np.arange(width)
    if data.ndim == 2:
        buf[dst] = pay
    else:
        m = np.arange(width) < nbytes[:, None]
        buf[dst[m]] = pay[m]
    return buf, off


def write_ark_scp(ark: Path, scp: Path | None, keys, data: np.ndarray, nrows: np.ndarray | None = None,
                  *, scp_ark_name: str | None = None, progress=None) -> None:
    """Write ``data`` (see ``ark_bytes``) to ``ark`` (and the ``scp`` pointing into it),
    each to a temp name beside it, fsynced and renamed. ``scp_ark_name``: the ark path
    written in the scp (default: ``ark`` made absolute)."""
    from pipeline.core.fsio import atomic_write_text, writer_tag
    keys = np.asarray(keys, dtype=str)
    ark = Path(ark)
    tmp = ark.with_name(f".{ark.name}.{writer_tag()}.tmp")
    offsets = np.zeros(len(keys), np.int64)
    try:
        with open(tmp, "wb") as f:
            base = 0
            for a in range(0, len(keys), GATHER_ROWS):
                b = min(a + GATHER_ROWS, len(keys))
                buf, off = ark_bytes(keys[a:b], data[a:b], None if nrows is None else nrows[a:b])
                offsets[a:b] = base + off
                f.write(memoryview(buf))
                base += len(buf)
                if progress:
                    progress(b - a)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, ark)
    finally:
        tmp.unlink(missing_ok=True)
    if scp is not None:
        name = scp_ark_name or str(ark.resolve())
        lines = np.strings.add(np.strings.add(keys, f" {name}:"), offsets.astype(str))
        atomic_write_text(scp, "\n".join(lines.tolist()) + ("\n" if len(lines) else ""))
