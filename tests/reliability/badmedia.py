"""Bad and odd media mixed into a valid synthetic toy corpus, each with its expected outcome,
and the check of a cache against those expectations (``check_outcomes``). The running
side (CLI subprocesses, the fault corpus, cache comparison) is in ``harness.py``.

Everything is real: media are encoded with PyAV / soundfile / PIL, the toy corpus comes
from ``data_manifests.synth.synthesize``, extraction runs the real backbones (random
weights) into real Zarr stores.

Expected outcome of a clip (``Expect``)
---------------------------------------
* ``audio``/``face``: the ``has_audio``/``has_face`` flag the cache must hold; True means
  *handled*: finite, non-zero vectors;
* ``fails``: the exact set of ``(stage, modality)`` records ``<cache>.failures.jsonl``
  must hold for the clip (a failed modality has its flag False and all-zero vectors; a
  modality without any source is *missing*: flag False and no record);
* ``error``: a substring every failure message of the clip must contain.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from data_manifests import ClipRecord, read_manifest, write_manifest
from tests.reliability.media_writers import (  # noqa: F401 (re-exported for the report)
    SR,
    _resample,
    decode_mono16k,
    face_frames,
    write_image,
    write_m4a,
    write_mp4,
    write_wav,
)

REPO = Path(__file__).resolve().parents[2]
#: a folder name with spaces and non-ASCII characters: every bad file lives under it
MEDIA_DIR = "bad media ünïcödé 名前"
LONG_SECONDS = 600.0          # the 10-minute clips

# ============================================================================ expectations
@dataclass(frozen=True)
class Expect:
    audio: bool
    face: bool
    fails: frozenset = frozenset()
    error: str | None = None


@dataclass
class Case:
    """One bad or odd clip: ``name`` is unique (also its clip id's video part)."""
    name: str
    group: str              # a row of the report table
    what: str               # the input
    does: str               # what avfuse does with it
    record: ClipRecord
    expect: Expect
    checks: tuple = ()      # extra checks: "short", "long", "mixdown", "frames_valid", "same_as_toy"
    bug: str | None = None  # a bug found here: ``expect`` is the correct outcome, ``does`` what happened


DA, DF = ("decode", "audio"), ("decode", "face")


def _fails(*pairs) -> frozenset:
    return frozenset(pairs)


# ============================================================================ cases
def make_cases(media: Path, toy: Sequence[ClipRecord], *, long_seconds: float = LONG_SECONDS,
               seed: int = 0) -> list[Case]:
    """Write the bad/odd media under ``media`` and return one ``Case`` per clip.

    ``toy``: records of the valid toy corpus (resolved paths); its first clips donate the
    voices/videos that the odd files are made of. Records use paths relative to
    ``media.parent`` (the corpus root holding the manifest) unless a case is about paths.
    """
    rng = np.random.default_rng(seed)
    media.mkdir(parents=True, exist_ok=True)
    root = media.parent
    rel = lambda p: os.path.relpath(p, root)  # noqa: E731
    src = toy[0]
    m4a_bytes = Path(src.audio_path).read_bytes()
    mp4_bytes = Path(src.video_path).read_bytes()
    voice = decode_mono16k(src.audio_path)                  # ~1 s of a toy voice at 16 kHz
    voice3 = np.concatenate([decode_mono16k(r.audio_path) for r in toy[:3]])  # ~3 s, 3 clips
    frames = face_frames(25, seed=seed)
    ok_wav = rel(write_wav(media / "ok voice.wav", voice, SR))
    cases: list[Case] = []

    def add(name, group, what, does, expect, checks=(), bug=None, **paths):
        rec = ClipRecord(clip_id=f"idbad/{name}/00001", speaker="idbad", video=name, split="train",
                         dataset="bad", **paths)
        cases.append(Case(name, group, what, does, rec, expect, tuple(checks), bug))

    # ---- zero-byte files
    (media / "zero.m4a").write_bytes(b"")
    (media / "zero.mp4").write_bytes(b"")
    (media / "zero.wav").write_bytes(b"")
    add("zero_m4a", "zero-byte file", "0-byte .m4a as audio_path (valid mp4 for the face)",
        "audio logged `decode/audio` (\"empty (0 bytes)\"), face embedded",
        Expect(False, True, _fails(DA), "0 bytes"), audio_path=rel(media / "zero.m4a"), video_path=src.video_path)
    add("zero_mp4", "zero-byte file", "0-byte .mp4 as the only source",
        "both modalities logged (`decode/audio`, `decode/face`)",
        Expect(False, False, _fails(DA, DF), "0 bytes"), video_path=rel(media / "zero.mp4"))
    add("zero_wav", "zero-byte file", "0-byte .wav, no face source",
        "audio logged `decode/audio`; face *missing* (no record)",
        Expect(False, False, _fails(DA), "0 bytes"), audio_path=rel(media / "zero.wav"))

    # ---- truncated files, cut at 10 %, 50 %, 90 % of their bytes
    for pct in (10, 50, 90):
        (media / f"cut{pct}.m4a").write_bytes(m4a_bytes[: len(m4a_bytes) * pct // 100])
        (media / f"cut{pct}.mp4").write_bytes(mp4_bytes[: len(mp4_bytes) * pct // 100])
        add(f"trunc_m4a_{pct}", "truncated file", f".m4a cut at {pct}% of its bytes (index at the end)",
            "logged `decode/audio` (cannot open: the moov index is gone)",
            Expect(False, False, _fails(DA), f"cut{pct}.m4a"), audio_path=rel(media / f"cut{pct}.m4a"))
        add(f"trunc_mp4_{pct}", "truncated file", f".mp4 (H.264 + AAC) cut at {pct}% of its bytes",
            "logged `decode/audio` and `decode/face`",
            Expect(False, False, _fails(DA, DF), f"cut{pct}.mp4"), video_path=rel(media / f"cut{pct}.mp4"))
    # a file whose index comes first (faststart) still opens when cut: the decoder meets EOF
    fs = write_mp4(media / "faststart.mp4", frames, audio=voice3, faststart=True).read_bytes()
    (media / "faststart_cut50.mp4").write_bytes(fs[: len(fs) // 2])
    add("trunc_faststart_mp4_50", "truncated file",
        "faststart .mp4 (index first) cut at 50% of its bytes",
        "face logged `decode/face`; audio: BUG, the first part decodes without error and is embedded "
        "as if it were the whole clip (no record)",
        Expect(False, False, _fails(DA, DF), "faststart_cut50.mp4"),
        bug="audio of a truncated faststart mp4 is embedded from the part before the cut",
        video_path=rel(media / "faststart_cut50.mp4"))
    fa = write_mp4(media / "faststart.m4a", None, audio=voice3, faststart=True).read_bytes()
    (media / "faststart_cut50.m4a").write_bytes(fa[: len(fa) // 2])
    add("trunc_faststart_m4a_50", "truncated file",
        "faststart .m4a (index first) cut at 50% of its bytes",
        "logged `decode/audio` (decoder error at the cut)", Expect(False, False, _fails(DA), "faststart_cut50.m4a"),
        audio_path=rel(media / "faststart_cut50.m4a"))
    wav = write_wav(media / "whole.wav", voice3, SR).read_bytes()
    (media / "cut50.wav").write_bytes(wav[: len(wav) // 2])
    add("trunc_wav_50", "truncated file", ".wav cut at 50% (header declares more data)",
        "logged `decode/audio` (\"truncated\")", Expect(False, False, _fails(DA), "truncated"),
        audio_path=rel(media / "cut50.wav"))

    # ---- random bytes with a valid extension
    for ext in ("m4a", "wav", "flac"):
        (media / f"random.{ext}").write_bytes(rng.bytes(20000))
        add(f"random_{ext}", "random bytes, valid extension", f"20 kB of random bytes named .{ext}",
            "logged `decode/audio`", Expect(False, False, _fails(DA), f"random.{ext}"),
            audio_path=rel(media / f"random.{ext}"))
    (media / "random.mp4").write_bytes(rng.bytes(20000))
    add("random_mp4", "random bytes, valid extension", "20 kB of random bytes named .mp4",
        "logged `decode/audio` and `decode/face`", Expect(False, False, _fails(DA, DF), "random.mp4"),
        video_path=rel(media / "random.mp4"))
    for i in range(2):
        (media / "random jpgs" / f"{i + 1:04d}.jpg").parent.mkdir(exist_ok=True)
        (media / "random jpgs" / f"{i + 1:04d}.jpg").write_bytes(rng.bytes(5000))
    add("random_jpgs", "random bytes, valid extension", "frame folder of random bytes named .jpg",
        "face logged `decode/face` (no sampled frame decodes); audio embedded",
        Expect(True, False, _fails(DF), "none of the sampled frames"),
        audio_path=ok_wav, frames_dir=rel(media / "random jpgs"))

    # ---- missing streams
    add("mp4_no_audio", "missing stream", ".mp4 with a video track only, no audio_path",
        "audio logged `decode/audio` (\"no audio stream\"), face embedded",
        Expect(False, True, _fails(DA), "no audio stream"),
        video_path=rel(write_mp4(media / "video only.mp4", frames)))
    add("mp4_no_video", "missing stream", ".mp4 with an AAC track only",
        "face logged `decode/face` (\"no video stream\"), audio embedded",
        Expect(True, False, _fails(DF), "no video stream"),
        video_path=rel(write_mp4(media / "audio only.mp4", None, audio=voice3)))

    # ---- other rates and stereo: L = v + n, R = v - n, so only a true mix-down gives back v
    tone = (0.3 * np.sin(2 * np.pi * 1234.5 * np.arange(len(voice3)) / SR)).astype(np.float32)
    add("mono_16k_ref", "sample rate / channels", "reference: the same voice, mono 16 kHz wav",
        "embedded (the stereo files below must embed like it)", Expect(True, False), checks=("duration3",),
        audio_path=rel(write_wav(media / "mono 16k.wav", 0.7 * voice3, SR)))
    add("left_only_ctrl", "sample rate / channels", "control: the left channel alone (voice + tone), mono",
        "embedded (what a wrong mix-down would give)", Expect(True, False), checks=("duration3",),
        audio_path=rel(write_wav(media / "left only.wav", 0.7 * (voice3 + tone), SR)))
    for sr, ext in ((8000, "wav"), (44100, "m4a"), (48000, "m4a"), (48000, "flac")):
        v, n = _resample(voice3, SR, sr), _resample(tone, SR, sr)
        st = np.stack([v + n, v - n], axis=1) * 0.7
        p = media / f"stereo {sr // 1000 if sr % 1000 == 0 else sr / 1000:g}k.{ext}"
        if ext == "m4a":
            write_m4a(p, st, sr)
        else:
            import soundfile as sf
            sf.write(str(p), st, sr)
        add(f"stereo_{sr}_{ext}", "sample rate / channels", f"stereo {sr} Hz .{ext}",
            "resampled to 16 kHz and mixed down to mono; embedded", Expect(True, False),
            checks=("mixdown",) if sr != 8000 else ("duration3",), audio_path=rel(p))
    add("stereo_48k_mp4", "sample rate / channels", ".mp4 with video and a stereo 48 kHz AAC track",
        "audio resampled and mixed down; both embedded", Expect(True, True), checks=("mixdown",),
        video_path=rel(write_mp4(media / "stereo 48k.mp4", frames,
                                 audio=np.stack([_resample(voice3 + tone, SR, 48000),
                                                 _resample(voice3 - tone, SR, 48000)], 1) * 0.7,
                                 sr=48000)))

    # ---- lengths
    short = voice[: int(0.2 * SR)]
    add("short_0.2s", "clip length", "0.2 s wav (shorter than one 0.5 s segment)",
        "embedded; repeat-padded, all segments flagged invalid (`audio/segment_valid` False)",
        Expect(True, False), checks=("short",), audio_path=rel(write_wav(media / "short.wav", short, SR)))
    n_rep = int(np.ceil(long_seconds * SR / len(voice3)))
    long_audio = np.tile(voice3, n_rep)[: int(long_seconds * SR)]
    add("long_wav", "clip length", f"{long_seconds / 60:g}-minute wav",
        "embedded whole (one forward over the full utterance) and in 4 segments; bounded memory",
        Expect(True, False), checks=("long",), audio_path=rel(write_wav(media / "long.wav", long_audio, SR)))
    n_long = int(long_seconds * 25)
    tiny = face_frames(50, size=24, seed=seed + 1)
    long_frames = tiny[np.arange(n_long) % len(tiny)]
    add("long_mp4", "clip length", f"{long_seconds / 60:g}-minute 25 fps mp4 (24x24 video only) + a wav",
        "face frames sampled by seeking (no full decode); both embedded", Expect(True, True),
        audio_path=ok_wav, video_path=rel(write_mp4(media / "long.mp4", long_frames)))

    # ---- frame folders
    rgb = face_frames(2, size=80, seed=seed + 2)
    for kind, mode, fmt in (("gray", "L", "JPEG"), ("cmyk", "CMYK", "JPEG"), ("png_as_jpg", "RGB", "PNG")):
        d = media / f"frames {kind}"
        for i in range(2):
            write_image(d / f"{i + 1:04d}.jpg", rgb[i], mode, fmt)
        what = {"gray": "grayscale JPEG frames", "cmyk": "CMYK JPEG frames",
                "png_as_jpg": "PNG files named .jpg"}[kind]
        add(f"frames_{kind}", "frame folder", what, "decoded as RGB; every sampled frame valid",
            Expect(True, True), checks=("frames_valid",), audio_path=ok_wav, frames_dir=rel(d))
    d = media / "frames one corrupt"
    for i in range(4):
        write_image(d / f"{i + 1:04d}.jpg", face_frames(1, 80, seed + 10 + i)[0])
    (d / "0002.jpg").write_bytes(b"\xff\xd8\xff" + rng.bytes(3000))
    add("frames_one_corrupt", "frame folder", "4 jpgs, the sampled 0002.jpg corrupt",
        "the nearest readable frame of its sub-sequence is used; all slots valid",
        Expect(True, True), checks=("frames_valid",), audio_path=ok_wav, frames_dir=rel(d))
    (media / "frames empty").mkdir(exist_ok=True)
    add("frames_empty", "frame folder", "empty frame folder", "face logged `decode/face` (\"no .jpg\")",
        Expect(True, False, _fails(DF), "no .jpg"), audio_path=ok_wav, frames_dir=rel(media / "frames empty"))
    add("frames_missing", "frame folder", "frame folder that does not exist",
        "face logged `decode/face` (\"not found\")", Expect(True, False, _fails(DF), "not found"),
        audio_path=ok_wav, frames_dir=rel(media / "no such folder"))

    # ---- names: spaces and non-ASCII in folders, file names and the clip id
    d = media / "ça và 名字 with spaces"
    d.mkdir(exist_ok=True)
    shutil.copyfile(src.audio_path, d / "clip ü 1.m4a")
    shutil.copyfile(src.video_path, d / "clip ü 1.mp4")
    add("names_unicode", "paths", "m4a + mp4 under a folder and file name with spaces and non-ASCII",
        "embedded exactly as the original clip", Expect(True, True), checks=("same_as_toy",),
        audio_path=rel(d / "clip ü 1.m4a"), video_path=rel(d / "clip ü 1.mp4"))
    cases[-1].record.clip_id = "idbad/ünïcödé 名前 id/00001"
    return cases


# ============================================================================ corpora
@dataclass
class Corpus:
    root: Path
    manifest: Path
    toy: list[ClipRecord]                 # the valid toy clips (resolved paths)
    cases: list[Case] = field(default_factory=list)
    long_seconds: float = LONG_SECONDS

    @property
    def records(self) -> list[ClipRecord]:
        return read_manifest(self.manifest)

    def expect(self) -> dict[str, Expect]:
        out = {r.clip_id: Expect(True, True) for r in self.toy}
        out.update({c.record.clip_id: c.expect for c in self.cases})
        return out

    def case(self, clip_id: str) -> Case | None:
        return next((c for c in self.cases if c.record.clip_id == clip_id), None)


def toy_corpus(base: Path, seed: int = 0) -> Path:
    """The valid toy corpus (6 speakers x 2 videos x 1 clip, vox2 layout) in ``base``,
    written once per ``base`` (a complete corpus has its manifest). Returns its folder."""
    from data_manifests.synth import synthesize
    out = Path(base) / f"toy-{seed}"
    if not (out / "manifest.jsonl").exists():
        synthesize(out, layout="vox2", speakers=6, videos_per_speaker=2, clips_per_video=1, seed=seed,
                   progress=False, workers=1, overwrite=True)
    return out


def build_corpus(root: Path, toy_dir: Path, *, cases: str = "all", long_seconds: float = LONG_SECONDS,
                 seed: int = 0) -> Corpus:
    """``root/manifest.jsonl`` = the toy corpus's clips (paths relative to ``root``) with the
    bad cases interleaved (every third row, so every shard mixes good and bad clips).
    ``cases``: "all", "none", or "few" (two cheap failing clips: a 0-byte m4a and an mp4
    without audio, so that a failures file is never trivially empty)."""
    root.mkdir(parents=True, exist_ok=True)
    toy = read_manifest(Path(toy_dir) / "manifest.jsonl")
    all_cases = [] if cases == "none" else make_cases(root / MEDIA_DIR, toy, long_seconds=long_seconds, seed=seed) \
        if cases == "all" else _few_cases(root / MEDIA_DIR, toy)
    rel = lambda r: _relative(r, root)  # noqa: E731
    rows: list[ClipRecord] = []
    bad = list(all_cases)
    for i, r in enumerate(toy):
        rows.append(rel(r))
        if i % 2 == 1 and bad:
            rows.append(bad.pop(0).record)
    rows += [c.record for c in bad]
    write_manifest(root / "manifest.jsonl", rows)
    return Corpus(root=root, manifest=root / "manifest.jsonl", toy=toy, cases=all_cases,
                  long_seconds=long_seconds)


def _few_cases_expect(media: Path) -> list[Case]:
    """The ``Case`` objects of ``_few_cases`` without writing anything (media exist)."""
    return [Case(name, "", "", "", ClipRecord(clip_id=f"idbad/{name}/00001", speaker="idbad", video=name), e)
            for name, e in (("zero_m4a", Expect(False, True, _fails(DA), "0 bytes")),
                            ("mp4_no_audio", Expect(False, True, _fails(DA), "no audio stream")))]


def _few_cases(media: Path, toy: Sequence[ClipRecord]) -> list[Case]:
    media.mkdir(parents=True, exist_ok=True)
    (media / "zero.m4a").write_bytes(b"")
    frames = face_frames(20)
    out = []
    for name, expect, paths in (
            ("zero_m4a", Expect(False, True, _fails(DA), "0 bytes"),
             dict(audio_path=os.path.relpath(media / "zero.m4a", media.parent), video_path=toy[0].video_path)),
            ("mp4_no_audio", Expect(False, True, _fails(DA), "no audio stream"),
             dict(video_path=os.path.relpath(write_mp4(media / "video only.mp4", frames), media.parent)))):
        rec = ClipRecord(clip_id=f"idbad/{name}/00001", speaker="idbad", video=name, split="train",
                         dataset="bad", **paths)
        out.append(Case(name, "", "", "", rec, expect))
    return out


def _relative(r: ClipRecord, root: Path) -> ClipRecord:
    import dataclasses
    ch = {f: os.path.relpath(getattr(r, f), root) for f in ("audio_path", "video_path", "frames_dir")
          if getattr(r, f) is not None}
    return dataclasses.replace(r, **ch)
