"""ge2e_lstm ``pretrained`` (with resemblyzer's silence trimming) against resemblyzer itself.

1. Makes speech files with pauses: espeak-ng sentences (several voices, speeds, pitches)
   joined by 0.5-2 s of digital silence or low noise, resampled to 16 kHz; and clips of the
   avfuse synthetic voice corpus (``avfuse synth``) with pauses inserted. 16-bit wav files.
2. Runs resemblyzer 0.1.4's own ``preprocess_wav(path)`` + ``VoiceEncoder("cpu").embed_utterance``
   in a throwaway environment (``--rz-python``; it must import resemblyzer, librosa and
   webrtcvad), capturing its VAD window mask (the output of its ``binary_dilation`` call), its
   trimmed wave, and its embedding without the trimming (``normalize_volume`` only).
3. Runs avfuse's extraction (``run_extract``, the code path of ``avfuse extract``) with
   ``--audio-weights pretrained`` and ``pretrained-novad`` (float32 cache) on the same files.

Prints per file: the cosine of avfuse ``pretrained`` to resemblyzer (target >= 0.999), the
cosine of ``pretrained-novad`` to resemblyzer (what the trimming changes), the VAD window
mask agreement and whether the trimmed waves are bit-equal; and the process CPU time of the
trimming per second of audio, avfuse's (vectorised) and resemblyzer's (struct.pack, lists).

The throwaway environment (never a dependency of avfuse):

    python3.11 -m venv /tmp/rzenv
    echo /work/main/.venv/lib/python3.11/site-packages > /tmp/rzenv/lib/python3.11/site-packages/avfuse.pth
    /tmp/rzenv/bin/pip install --no-deps resemblyzer==0.1.4
    /tmp/rzenv/bin/pip install librosa==0.11.0 webrtcvad-wheels==2.0.14.post1

    python benchmarks/ge2e_resemblyzer_check.py [--rz-python /tmp/rzenv/bin/python] [--json OUT]
Needs ``espeak-ng`` on the PATH (apt-get install espeak-ng).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import save_json, scratch_dir  # noqa: E402

SR = 16000
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore, and the shells she sells are surely seashells.",
    "A speaker verification system compares two recordings of a voice.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "The weather was cold and grey, so we stayed inside and read all afternoon.",
    "Numbers like four hundred and twenty seven are hard to say quickly.",
    "When the sunlight strikes raindrops in the air, they act as a prism and form a rainbow.",
    "Every morning the old man walked his dog along the river to the bridge and back.",
]
# espeak-ng voice, words per minute, pitch (0-99): different "speakers"
VOICES = [("en-us", 160, 50), ("en-gb", 140, 35), ("en-us+f3", 175, 60), ("en-gb-scotland", 150, 45),
          ("en-us+m3", 130, 30), ("en-gb+f2", 185, 70), ("en-us", 120, 20), ("en-gb", 170, 55)]

RZ_SCRIPT = r"""
import json, sys, time
import numpy as np
import torch
torch.set_num_threads(1)
import librosa
import resemblyzer.audio as ra
from resemblyzer import VoiceEncoder, preprocess_wav
masks = []
_dilate = ra.binary_dilation
def capture(mask, structure):
    out = _dilate(mask, structure)
    masks.append(np.asarray(out).copy())
    return out
ra.binary_dilation = capture
files, out = json.loads(sys.argv[1]), sys.argv[2]
enc = VoiceEncoder("cpu", verbose=False)
normalised = []
for name, path in files:
    masks.clear()
    wav = preprocess_wav(path)
    np.save(f"{out}/{name}.rz_trimmed.npy", wav)
    np.save(f"{out}/{name}.rz_mask.npy", masks[-1])
    np.save(f"{out}/{name}.rz_emb.npy", enc.embed_utterance(wav))
    raw, sr = librosa.load(path, sr=None)
    raw = ra.normalize_volume(raw, ra.audio_norm_target_dBFS, increase_only=True)
    normalised.append(raw)
    np.save(f"{out}/{name}.rz_emb_notrim.npy", enc.embed_utterance(raw))
ra.binary_dilation = _dilate
seconds = sum(len(w) for w in normalised) / 16000
best = float("inf")
for _ in range(5):
    t = time.process_time()
    for w in normalised:
        ra.trim_long_silences(w)
    best = min(best, time.process_time() - t)
print(json.dumps({"trim_cpu_ms_per_audio_s": 1000 * best / seconds,
                  "versions": {"librosa": librosa.__version__, "numpy": np.__version__}}))
"""


def espeak(text: str, voice: str, wpm: int, pitch: int, path: Path) -> np.ndarray:
    """One espeak-ng sentence as float32 at 16 kHz."""
    import soundfile as sf
    from scipy.signal import resample_poly
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-p", str(pitch), "-w", str(path), text],
                   check=True, capture_output=True)
    y, sr = sf.read(path, dtype="float32")
    if sr != SR:
        g = np.gcd(SR, sr)
        y = resample_poly(y, SR // g, sr // g).astype(np.float32)
    return y


def pause(seconds: float, kind: str, rng: np.random.Generator) -> np.ndarray:
    n = int(seconds * SR)
    if kind == "zeros":
        return np.zeros(n, np.float32)
    level = {"noise-60": 10 ** (-60 / 20), "noise-50": 10 ** (-50 / 20)}[kind]
    return (level * rng.standard_normal(n)).astype(np.float32)


def make_files(folder: Path) -> list[tuple[str, Path]]:
    """espeak-ng files (sentences + pauses) and synthetic-voice clips with inserted pauses."""
    import soundfile as sf

    from data_manifests.manifest import read_manifest
    from extractors.media.decode import load_audio
    rng = np.random.default_rng(0)
    files = []
    kinds = ["zeros", "noise-60", "noise-50"]
    for k, (voice, wpm, pitch) in enumerate(VOICES):
        parts = [pause(rng.uniform(0.0, 1.0), kinds[k % 3], rng)]
        for j in range(3):
            text = SENTENCES[(k + 3 * j) % len(SENTENCES)]
            parts.append(espeak(text, voice, wpm, pitch, folder / "tmp.wav"))
            parts.append(pause(rng.uniform(0.5, 2.0), kinds[(k + j) % 3], rng))
        path = folder / f"espeak{k}.wav"
        sf.write(path, np.clip(np.concatenate(parts), -1, 1), SR, subtype="PCM_16")
        files.append((f"espeak{k}", path))
    synth = folder / "synth"
    subprocess.run([sys.executable, "-m", "pipeline", "synth", "--out", str(synth), "--layout", "vox1",
                    "--speakers", "6", "--videos-per-speaker", "2", "--clips-per-video", "1", "--seed", "3"],
                   check=True, capture_output=True)
    for k, rec in enumerate(read_manifest(synth / "manifest.jsonl")[:4]):
        w = load_audio(rec.audio_path, SR)
        a, b = len(w) // 3, 2 * len(w) // 3
        y = np.concatenate([w[:a], pause(1.0 + 0.25 * k, kinds[k % 3], rng), w[a:b],
                            pause(2.0 - 0.25 * k, kinds[(k + 1) % 3], rng), w[b:]])
        path = folder / f"synth{k}.wav"
        sf.write(path, np.clip(y, -1, 1), SR, subtype="PCM_16")
        files.append((f"synth{k}", path))
    return files


def avfuse_embeddings(files: list[tuple[str, Path]], folder: Path, weights: str) -> np.ndarray:
    """audio/clip of ``avfuse extract --audio-weights WEIGHTS`` (float32 cache), in file order."""
    from data_manifests.manifest import ClipRecord, write_manifest
    from pipeline.cache import open_cache
    from pipeline.extract import ExtractConfig, run_extract
    ids = [f"id{10000 + k}/check/{k:05d}" for k in range(len(files))]
    manifest = folder / "check.jsonl"
    write_manifest(manifest, [ClipRecord(clip_id=i, speaker=i.split("/")[0], video="check", audio_path=str(p))
                              for i, (_, p) in zip(ids, files)])
    cache = folder / f"{weights}.zarr"
    cfg = ExtractConfig(audio_backbone="ge2e_lstm", audio_weights=weights, dtype="float32", num_workers=0)
    run_extract(manifest, cache, cfg, overwrite=True, progress=False, decode_backend="thread")
    c = open_cache(cache)
    return c.to_numpy("audio/clip", rows=c.rows(ids))


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rz-python", default="/tmp/rzenv/bin/python",
                    help="python of the throwaway environment with resemblyzer 0.1.4 (see the docstring)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng not found: apt-get install espeak-ng")
    import torch
    torch.set_num_threads(1)
    from extractors.audio.ge2e import ResemblyzerPreprocess, normalize_volume_np
    from extractors.audio.vad import DEFAULT, speech_mask
    from extractors.media.decode import load_audio
    with scratch_dir("ge2e_check_") as tmp:
        files = make_files(tmp)
        proc = subprocess.run([args.rz_python, "-c", RZ_SCRIPT, json.dumps([(n, str(p)) for n, p in files]),
                               str(tmp)], capture_output=True, text=True, check=False)
        if proc.returncode:
            sys.exit(f"resemblyzer side failed:\n{proc.stderr[-3000:]}")
        rz = json.loads(proc.stdout.strip().splitlines()[-1])
        with_vad = unit(avfuse_embeddings(files, tmp, "pretrained"))
        no_vad = unit(avfuse_embeddings(files, tmp, "pretrained-novad"))
        pre = ResemblyzerPreprocess()
        rows, waves = [], []
        for k, (name, path) in enumerate(files):
            wav = load_audio(path, SR)
            norm = normalize_volume_np(wav)
            waves.append(norm)
            ours = speech_mask(norm)[::DEFAULT.window]
            theirs = np.load(tmp / f"{name}.rz_mask.npy")
            ref, ref_notrim = unit(np.load(tmp / f"{name}.rz_emb.npy")), unit(np.load(tmp / f"{name}.rz_emb_notrim.npy"))
            rz_trimmed = np.load(tmp / f"{name}.rz_trimmed.npy")
            rows.append({"file": name, "seconds": round(len(wav) / SR, 2),
                         "kept": round(float(theirs.mean()), 3) if len(theirs) else 0.0,
                         "cos_pretrained": float(with_vad[k] @ ref), "cos_novad": float(no_vad[k] @ ref),
                         "cos_rz_notrim": float(ref_notrim @ ref), "cos_novad_rz_notrim": float(no_vad[k] @ ref_notrim),
                         "mask_agree": float((ours == theirs).mean()) if len(ours) == len(theirs) else 0.0,
                         "trimmed_equal": bool(np.array_equal(pre(wav), rz_trimmed))})
    seconds = sum(len(w) for w in waves) / SR
    best = float("inf")
    for _ in range(5):
        t = time.process_time()
        for w in waves:
            speech_mask(w)
        best = min(best, time.process_time() - t)
    ours_ms = 1000 * best / seconds
    print(f"{'file':9} {'s':>5} {'kept':>5} {'cos VAD':>9} {'cos noVAD':>9} {'mask':>6} {'bit-eq':>6}")
    for r in rows:
        print(f"{r['file']:9} {r['seconds']:5.2f} {r['kept']:5.2f} {r['cos_pretrained']:9.6f} {r['cos_novad']:9.6f} "
              f"{r['mask_agree']:6.3f} {r['trimmed_equal']!s:>6}")
    cos = np.array([r["cos_pretrained"] for r in rows])
    print(f"min cosine avfuse 'pretrained' vs resemblyzer: {cos.min():.6f} (target >= 0.999: "
          f"{'met' if cos.min() >= 0.999 else 'NOT met'}); 'pretrained-novad': "
          f"{min(r['cos_novad'] for r in rows):.6f}; novad vs resemblyzer without its trimming: "
          f"{min(r['cos_novad_rz_notrim'] for r in rows):.6f}")
    print(f"masks equal on {sum(r['mask_agree'] == 1.0 for r in rows)}/{len(rows)} files; trimmed waves bit-equal "
          f"on {sum(r['trimmed_equal'] for r in rows)}/{len(rows)}")
    print(f"trimming CPU per second of audio ({seconds:.1f} s): avfuse {ours_ms:.3f} ms, resemblyzer "
          f"{rz['trim_cpu_ms_per_audio_s']:.3f} ms (x{rz['trim_cpu_ms_per_audio_s'] / ours_ms:.2f})")
    save_json(args.json, {"files": rows, "min_cos_pretrained": float(cos.min()), "audio_seconds": seconds,
                          "trim_cpu_ms_per_audio_s": {"avfuse": ours_ms, "resemblyzer": rz["trim_cpu_ms_per_audio_s"]},
                          "rz_env": rz["versions"]})


if __name__ == "__main__":
    main()
