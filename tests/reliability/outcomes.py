"""What an extraction over the bad-media corpus did to each case (``check_outcomes``):
flags, failures and the case's own checks against its ``Expect``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.reliability.badmedia import Corpus
from tests.reliability.media_writers import SR, decode_mono16k


@dataclass
class Outcome:
    """What a cache holds for a corpus: ``rows`` (one per clip: ``clip_id, case, has_audio,
    has_face, fails, problems``), ``problems`` (everything not as expected, known bugs left
    out), ``bug_problems`` (the same for the cases marked as known bugs)."""
    rows: list[dict]
    problems: list[str]
    bug_problems: list[str]


def check_outcomes(cache_path: Path, corpus: Corpus) -> Outcome:
    """Compare a complete cache of ``corpus`` with the expectations: per clip the flags, the
    exact failure records (stage, modality, message), finite non-zero vectors for every
    present modality (all segments, every valid frame), all-zero ones for an absent one,
    and the cases' extra checks; for the cache: complete, ``verify`` clean, ids unique
    and equal to the manifest's."""
    from pipeline.cache import open_cache
    expect = corpus.expect()
    with open_cache(cache_path) as c:
        ids = c.ids.tolist()
        A = {n: c.to_numpy(n) for n in c.names}
        lines = [json.loads(x) for x in Path(c.failures_path).read_text().splitlines()]
        problems = [] if c.is_complete else [f"cache incomplete: {len(c.done_shards())}/{c.n_shards}"]
        problems += [f"verify: {p}" for p in c.verify()]
    got: dict[str, list[dict]] = {}
    for f in lines:
        got.setdefault(f["clip_id"], []).append(f)
    if len(ids) != len(set(ids)):
        problems.append("duplicate ids in the cache")
    if set(ids) != set(expect):
        problems.append(f"ids missing: {sorted(set(expect) - set(ids))[:3]}, "
                        f"extra: {sorted(set(ids) - set(expect))[:3]}")
    if ids != [r.clip_id for r in corpus.records]:
        problems.append("cache rows are not in manifest order")
    rows, bug_problems = [], []
    for i, cid in enumerate(ids):
        e = expect.get(cid)
        if e is None:
            continue
        case = corpus.case(cid)
        mine: list[str] = []
        fails = got.get(cid, [])
        pairs = {(f["stage"], f["modality"]) for f in fails}
        ha, hf = bool(A["has_audio"][i]), bool(A["has_face"][i])
        if (ha, hf) != (e.audio, e.face):
            mine.append(f"{cid}: has_audio/has_face {ha}/{hf}, expected {e.audio}/{e.face}")
        if pairs != set(e.fails):
            mine.append(f"{cid}: failures {sorted(pairs)}, expected {sorted(e.fails)}")
        if len(fails) != len(pairs):
            mine.append(f"{cid}: {len(fails)} failure lines for {len(pairs)} (stage, modality) pairs")
        for f in fails:
            if e.error and e.error not in f["error"]:
                mine.append(f"{cid}: error {f['error']!r} does not mention {e.error!r}")
            if "Traceback" in f["error"] or "\n" in f["error"]:
                mine.append(f"{cid}: error is not one line: {f['error'][:200]!r}")
        for flag, names in ((ha, ("audio/clip", "audio/segments")), (hf, ("face/clip", "face/frames"))):
            for n in names:
                v = A[n][i]
                if not np.isfinite(v).all():
                    mine.append(f"{cid}: {n} not finite")
                elif flag:
                    norms = np.linalg.norm(v.reshape(-1, v.shape[-1]), axis=1)
                    valid = A["face/frame_valid"][i] if n == "face/frames" else np.ones(len(norms), bool)
                    if not (norms[valid] > 0).all():
                        mine.append(f"{cid}: {n} has zero-norm vectors")
                elif np.any(v):
                    mine.append(f"{cid}: {n} not all zero though the modality is absent")
        dur, sv, fv = float(A["duration"][i]), A["audio/segment_valid"][i], A["face/frame_valid"][i]
        for chk in (case.checks if case else ()):
            if chk == "short" and not (abs(dur - 0.2) < 1e-3 and not sv.any()):
                mine.append(f"{cid}: 0.2 s clip: duration {dur}, segment_valid {sv.tolist()}")
            if chk == "long" and not (abs(dur - corpus.long_seconds) < 0.01 and sv.all()):
                mine.append(f"{cid}: long clip: duration {dur}, segment_valid {sv.tolist()}")
            if chk == "frames_valid" and not fv.all():
                mine.append(f"{cid}: frame_valid {fv.tolist()}, expected all True")
            if chk in ("mixdown", "duration3") and not abs(dur - 3 * _toy_seconds(corpus)) < 0.1:
                mine.append(f"{cid}: duration {dur:.3f} s, expected {3 * _toy_seconds(corpus):.3f} s")
            if chk == "same_as_toy":
                j = ids.index(corpus.toy[0].clip_id)
                for n in ("audio/clip", "face/clip"):
                    if not np.allclose(A[n][i], A[n][j], atol=1e-3):
                        mine.append(f"{cid}: {n} differs from the same media under an ASCII path")
        (bug_problems if case is not None and case.bug else problems).extend(mine)
        rows.append({"clip_id": cid, "case": case.name if case else "toy", "has_audio": ha, "has_face": hf,
                     "duration": round(dur, 3), "fails": sorted(f"{s}/{m}" for s, m in pairs),
                     "problems": mine})
    return Outcome(rows, problems, bug_problems)


def _toy_seconds(corpus: Corpus) -> float:
    """Mean decoded length of the first three toy clips (the voice the odd files are made of)."""
    if not hasattr(corpus, "_toy3"):
        corpus._toy3 = sum(len(decode_mono16k(r.audio_path)) for r in corpus.toy[:3]) / SR / 3
    return corpus._toy3
