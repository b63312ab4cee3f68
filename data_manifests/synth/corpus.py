"""The synthetic toy VoxCeleb corpus: identities, splits, real media in the real layouts,
the clip manifest and Vox1-format trial lists.

``synthesize(out_dir, layout="vox2", speakers=40, ...)`` writes

* Vox2 layout: ``dev/aac/idXXXXX/VIDEO/UTT.m4a`` (AAC, 16 kHz mono) and
  ``dev/mp4/idXXXXX/VIDEO/UTT.mp4`` (H.264 25 fps + AAC track) for train and dev
  identities, the same under ``test/`` for test identities (as VoxCeleb2 dev/test);
* Vox1 layout: ``wav/idXXXXX/VIDEO/UTT.wav`` (16-bit PCM, 16 kHz) plus either
  ``mp4/idXXXXX/VIDEO/UTT.mp4`` or jpg frame folders ``frames/idXXXXX/VIDEO/UTT/0001.jpg``;
* ``manifest.jsonl``: one :class:`ClipRecord` per clip (relative paths, ``split`` train /
  dev / test, ``dataset`` toy-vox2 / toy-vox1), sorted by clip id;
* ``trials/dev.txt`` and ``trials/test.txt``: ``label enrol test`` lines with ``.wav``
  ids, as the VoxCeleb1 lists;
* ``synth_info.json``: the config, per-clip conditions (noisy audio, occluded / absent
  face), counts and timings.

Ids: speakers ``id0NNNN`` (vox2) / ``id1NNNN`` (vox1) numbered from 1, videos 11-character
YouTube-like ids, utterances ``00001``... Identities are split by speaker into disjoint
train / dev / test sets: each speaker draws a key from its own generator and speakers are
ranked by it; the first ``round(f_train N)`` are train, then dev, then test (dev and test
get at least 2 speakers each, train at least 2).

Determinism: every random draw comes from ``numpy.random.default_rng(SeedSequence([seed,
kind, speaker, video, clip]))``, so a speaker's voice, face, video ids and clips depend
only on (seed, speaker number), never on how many speakers are generated (the split a
speaker lands in can). A speaker's voice and face come from independent generators; with
``av_correlation`` R > 0 shared latent traits (sex, age, size) then redraw part of both, so
that a voice predicts its face as in real people (``data_manifests.synth.traits``).
Trials: for a split, every pair of clips of one speaker from different videos is a target
trial (a random subset of ``max_trials // 2`` when set); each target ``(e, t)`` is paired
with one non-target ``(e, x)``, ``x`` drawn from other speakers of the split without
repeating an unordered pair, so lists are exactly balanced, duplicate-free and ordered by
enrolment id.

Difficulty (measured with the project's backbones, all cross-video pairs of the default
40 x 2 x 2 corpus: pretrained ``ge2e_lstm`` audio EER ~25 % (~19 % on clean clips),
random-init ``iresnet18`` face EER ~29 % (~19 % on unoccluded faces), concatenation ~18 %).
Knobs: ``VoiceVariation(identity_spread, channel, snr_db, noisy_snr_db, ...)``,
``FaceVariation(identity_spread, scene, max_blur, bg_colour)`` and the degradation shares;
for the random face network the per-video background and lighting are the main nuisances.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_manifests.manifest import ClipRecord, write_manifest
from data_manifests.synth.face import FaceVariation, render_clip, sample_face, sample_scene
from data_manifests.synth.info import INFO_NAME, info_config
from data_manifests.synth.traits import correlate
from data_manifests.synth.voice import VoiceVariation, sample_channel, sample_voice, synth_clip
from pipeline.core.config import to_dict
from pipeline.core.errors import ConfigError
from pipeline.core.fsio import atomic_write_json
from pipeline.core.progress import progress as progress_

# generator kinds (the second word of every seed sequence)
K_SPLIT, K_VOICE, K_FACE, K_VIDEO_ID, K_CHANNEL, K_SCENE, K_CLIP, K_CLIP_FACE, K_TRIALS, K_TRAITS = range(1, 11)
YOUTUBE_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
OWNED = ("dev", "test", "wav", "mp4", "frames", "trials", "manifest.jsonl", "synth_info.json")


@dataclass
class SynthConfig:
    """Everything that determines the corpus (recorded in ``synth_info.json``)."""

    layout: str = "vox2"                 # vox2 | vox1
    speakers: int = 40
    videos_per_speaker: int = 2
    clips_per_video: int = 2
    seed: int = 0
    clip_seconds: float = 1.0            # mean clip length
    clip_jitter: float = 0.25            # lengths uniform in clip_seconds * (1 +- jitter), whole frames
    frames_format: str = "mp4"           # vox1: mp4 | jpg (vox2: mp4)
    fps: int = 25
    sample_rate: int = 16000
    face_size: int = 128                 # frame side in pixels (VoxCeleb tracks: 224)
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)   # train, dev, test
    noisy_audio_share: float = 0.15      # clips with loud noise (SNR voice.noisy_snr_db)
    occluded_share: float = 0.10         # clips with the face heavily occluded
    absent_share: float = 0.05           # clips with no face (blank frames)
    max_trials: int | None = None        # per split; None: every cross-video target pair
    av_correlation: float = 0.0          # voice-face trait correlation R (0: independent; synth_traits)
    voice: VoiceVariation = field(default_factory=VoiceVariation)
    face: FaceVariation = field(default_factory=FaceVariation)

    @property
    def dataset(self) -> str:
        return f"toy-{self.layout}"

    def validate(self) -> None:
        """``ConfigError`` (with a hint) for any value the generator cannot honour."""
        def bad(msg: str, hint: str) -> ConfigError:
            return ConfigError(msg, hint=hint)
        if self.layout not in ("vox1", "vox2"):
            raise bad(f"unknown layout {self.layout!r}", "use --layout vox1 or --layout vox2")
        if self.frames_format not in ("mp4", "jpg"):
            raise bad(f"unknown frames format {self.frames_format!r}", "use --frames-format mp4 or jpg")
        if self.layout == "vox2" and self.frames_format != "mp4":
            raise bad("the vox2 layout stores faces as mp4 only", "use --frames-format jpg with --layout vox1")
        if not 6 <= self.speakers <= 9999:
            raise bad(f"--speakers must be between 6 and 9999, got {self.speakers}",
                      "train, dev and test need at least 2 speakers each")
        if self.videos_per_speaker < 2:
            raise bad(f"--videos-per-speaker must be >= 2, got {self.videos_per_speaker}",
                      "target trials pair clips from different videos of a speaker")
        if self.clips_per_video < 1:
            raise bad(f"--clips-per-video must be >= 1, got {self.clips_per_video}", "use 1 or more")
        if not 0.2 <= self.clip_seconds <= 60:
            raise bad(f"--clip-seconds must be in [0.2, 60], got {self.clip_seconds}", "VoxCeleb clips are 4-20 s")
        if not 0 <= self.clip_jitter < 1:
            raise bad(f"clip_jitter must be in [0, 1), got {self.clip_jitter}", "e.g. 0.25")
        if self.seed < 0:
            raise bad(f"--seed must be >= 0, got {self.seed}", "use a non-negative integer")
        if self.fps < 1 or self.sample_rate % self.fps:
            raise bad(f"sample rate {self.sample_rate} is not a multiple of fps {self.fps}",
                      "use fps 25 with 16 kHz audio")
        if self.face_size < 32 or self.face_size % 2:
            raise bad(f"face_size must be an even number >= 32, got {self.face_size}", "e.g. 112, 128 or 224")
        shares = (self.noisy_audio_share, self.occluded_share, self.absent_share)
        if any(not 0 <= s <= 1 for s in shares) or self.occluded_share + self.absent_share > 1:
            raise bad(f"degradation shares out of range: {shares}", "each in [0, 1], occluded + absent <= 1")
        fr = self.split_fractions
        if len(fr) != 3 or any(f < 0 for f in fr) or not abs(sum(fr) - 1) < 1e-6:
            raise bad(f"split fractions must be three non-negative numbers summing to 1, got {fr}",
                      "e.g. (0.6, 0.2, 0.2)")
        if not 0 <= self.av_correlation <= 1:
            raise bad(f"--av-correlation must be in [0, 1], got {self.av_correlation}", "0: independent, 1: shared")
        if self.max_trials is not None and self.max_trials < 2:
            raise bad(f"max_trials must be >= 2, got {self.max_trials}", "or None for all target pairs")


def _rng(seed: int, kind: int, spk: int = 0, vid: int = 0, clip: int = 0) -> np.random.Generator:
    """The generator of one (seed, kind, speaker, video, clip) cell; always five words."""
    return np.random.default_rng(np.random.SeedSequence([seed, kind, spk, vid, clip]))


def speaker_id(layout: str, index: int) -> str:
    """``id0NNNN`` (vox2) / ``id1NNNN`` (vox1) for speaker number ``index`` (0-based)."""
    return f"id{0 if layout == 'vox2' else 1}{index + 1:04d}"


def video_ids(seed: int, spk: int, count: int) -> list[str]:
    """``count`` distinct 11-character YouTube-like ids of speaker ``spk``'s videos."""
    out: list[str] = []
    vid = 0
    while len(out) < count:
        r = _rng(seed, K_VIDEO_ID, spk, vid)
        s = "".join(YOUTUBE_ALPHABET[i] for i in r.integers(0, 64, 11))
        if s not in out:
            out.append(s)
        vid += 1
    return out


def assign_splits(cfg: SynthConfig) -> list[str]:
    """Split name per speaker index (see module doc)."""
    n = cfg.speakers
    n_dev = max(2, int(round(n * cfg.split_fractions[1])))
    n_test = max(2, int(round(n * cfg.split_fractions[2])))
    n_train = n - n_dev - n_test
    if n_train < 2:
        raise ConfigError(f"{n} speakers leave {n_train} for training after {n_dev} dev and {n_test} test",
                          hint="use more --speakers or smaller dev/test fractions")
    keys = np.array([_rng(cfg.seed, K_SPLIT, i).random() for i in range(n)])
    order = np.argsort(keys, kind="stable")
    splits = [""] * n
    for rank, i in enumerate(order):
        splits[i] = "train" if rank < n_train else "dev" if rank < n_train + n_dev else "test"
    return splits


def _paths(cfg: SynthConfig, split: str, spk: str, vid: str, utt: str) -> dict[str, str | None]:
    if cfg.layout == "vox2":
        root = "test" if split == "test" else "dev"
        return {"audio_path": f"{root}/aac/{spk}/{vid}/{utt}.m4a", "video_path": f"{root}/mp4/{spk}/{vid}/{utt}.mp4",
                "frames_dir": None}
    if cfg.frames_format == "jpg":
        return {"audio_path": f"wav/{spk}/{vid}/{utt}.wav", "video_path": None, "frames_dir": f"frames/{spk}/{vid}/{utt}"}
    return {"audio_path": f"wav/{spk}/{vid}/{utt}.wav", "video_path": f"mp4/{spk}/{vid}/{utt}.mp4", "frames_dir": None}


def _make_video(args: tuple) -> list[tuple[dict, dict]]:
    """Worker: write every clip of one video; returns ``(record fields, conditions)`` per clip."""
    from data_manifests.synth import media

    cfg_dict, out_dir, spk_i, vid_i, spk, vid, split = args
    cfg = _config_from_dict(cfg_dict)
    s = cfg.seed
    voice, face = correlate(sample_voice(_rng(s, K_VOICE, spk_i), cfg.voice), sample_face(_rng(s, K_FACE, spk_i),
                            cfg.face), _rng(s, K_TRAITS, spk_i), cfg.av_correlation, cfg.voice, cfg.face)
    channel = sample_channel(_rng(s, K_CHANNEL, spk_i, vid_i), cfg.voice)
    scene = sample_scene(_rng(s, K_SCENE, spk_i, vid_i), cfg.face_size, cfg.face)
    spf = cfg.sample_rate // cfg.fps
    out = []
    for c in range(cfg.clips_per_video):
        r = _rng(s, K_CLIP, spk_i, vid_i, c)
        n_frames = max(5, int(round(cfg.clip_seconds * (1 + r.uniform(-cfg.clip_jitter, cfg.clip_jitter)) * cfg.fps)))
        noisy = bool(r.random() < cfg.noisy_audio_share)
        u = r.random()
        face_cond = "absent" if u < cfg.absent_share else "occluded" if u < cfg.absent_share + cfg.occluded_share else "ok"
        audio, mouth = synth_clip(voice, channel, n_frames * spf, r, noisy=noisy, var=cfg.voice, video_fps=cfg.fps)
        frames = render_clip(face, scene, mouth[:n_frames], _rng(s, K_CLIP_FACE, spk_i, vid_i, c),
                             condition=face_cond, fps=cfg.fps, size=cfg.face_size)
        utt = f"{c + 1:05d}"
        paths = _paths(cfg, split, spk, vid, utt)
        root = Path(out_dir)
        if cfg.layout == "vox2":
            media.write_m4a(root / paths["audio_path"], audio, cfg.sample_rate)
        else:
            media.write_wav(root / paths["audio_path"], audio, cfg.sample_rate)
        if paths["video_path"] is not None:
            media.write_mp4(root / paths["video_path"], frames, cfg.fps, audio, cfg.sample_rate)
        else:
            media.write_jpg_frames(root / paths["frames_dir"], frames)
        rec = dict(clip_id=f"{spk}/{vid}/{utt}", speaker=spk, video=vid, **paths,
                   duration=n_frames / cfg.fps, sample_rate=cfg.sample_rate, fps=float(cfg.fps),
                   num_frames=n_frames, split=split, dataset=cfg.dataset)
        out.append((rec, {"audio": "noisy" if noisy else "clean", "face": face_cond}))
    return out


def _config_from_dict(d: dict) -> SynthConfig:
    d = dict(d)
    d["voice"] = VoiceVariation(**{k: tuple(v) if isinstance(v, list) else v for k, v in d["voice"].items()})
    d["face"] = FaceVariation(**d["face"])
    d["split_fractions"] = tuple(d["split_fractions"])
    return SynthConfig(**d)


def make_trials(records: list[ClipRecord], split: str, seed: int,
                max_trials: int | None = None) -> tuple[list[int], list[str], list[str]]:
    """Balanced trials of one split: ``(labels, enrol, test)`` (see module doc)."""
    ids = sorted(r.clip_id for r in records if r.split == split)
    meta = {r.clip_id: (r.speaker, r.video) for r in records}
    targets = [(a, b) for i, a in enumerate(ids) for b in ids[i + 1:]
               if meta[a][0] == meta[b][0] and meta[a][1] != meta[b][1]]
    split_no = {"train": 0, "dev": 1, "test": 2}.get(split, 3)
    rng = _rng(seed, K_TRIALS, split_no)
    if max_trials is not None and len(targets) > max_trials // 2:
        keep = np.sort(rng.choice(len(targets), max_trials // 2, replace=False))
        targets = [targets[i] for i in keep]
    used = {frozenset(p) for p in targets}
    by_enrol: dict[str, list[str]] = {}
    trials: list[tuple[str, int, str]] = []
    for e, t in targets:
        cands = by_enrol.get(e)
        if cands is None:
            others = [x for x in ids if meta[x][0] != meta[e][0]]
            cands = by_enrol[e] = [others[i] for i in rng.permutation(len(others))]
        x = None
        while cands:
            c = cands.pop()
            if frozenset((e, c)) not in used:
                x = c
                break
        trials.append((e, 1, t))
        if x is None:            # this enrolment ran out of partners: any unused cross-speaker pair
            for _ in range(100 * len(ids)):
                a, b = ids[rng.integers(len(ids))], ids[rng.integers(len(ids))]
                if meta[a][0] != meta[b][0] and frozenset((a, b)) not in used:
                    e2, x = a, b
                    break
            else:
                raise ConfigError(f"cannot find enough distinct non-target pairs in split {split!r}",
                                  hint="use more speakers or clips")
            used.add(frozenset((e2, x)))
            trials.append((e2, 0, x))
        else:
            used.add(frozenset((e, x)))
            trials.append((e, 0, x))
    trials.sort(key=lambda z: (z[0], -z[1], z[2]))
    return [z[1] for z in trials], [z[0] for z in trials], [z[2] for z in trials]


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError("output path exists and is not a folder", path=out, hint="choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not (out / INFO_NAME).exists():   # never delete inside a folder we did not write
            raise ConfigError("output folder is not empty and is not a synthetic corpus", path=out,
                              hint="choose a new or empty --out folder")
        if not overwrite:
            raise ConfigError("a synthetic corpus already exists here", path=out,
                              hint="pass --overwrite to replace it, or choose another --out")
        for name in OWNED:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def synthesize(out_dir: str | Path, layout: str = "vox2", speakers: int = 40, videos_per_speaker: int = 2,
               clips_per_video: int = 2, seed: int = 0, *, clip_seconds: float = 1.0,
               frames_format: str = "mp4", workers: int = 2, overwrite: bool = False,
               progress: bool = True, **options) -> dict:
    """Write the toy corpus to ``out_dir`` and return a report dict.

    ``options`` sets any other :class:`SynthConfig` field (``voice=VoiceVariation(...)``,
    ``face=FaceVariation(...)``, ``noisy_audio_share``, ``max_trials`` ...). ``workers``
    processes render videos in parallel (1: in this process); the output does not depend
    on it. Report keys: ``out_dir, layout, dataset, seed, manifest, trials {dev, test},
    info, n_speakers, n_videos, n_clips, speakers_per_split, clips_per_split,
    n_trials {split: {n_trials, n_target, n_nontarget}}, total_seconds, degraded
    {noisy_audio, face_occluded, face_absent}, elapsed_s, workers``.
    """
    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(SynthConfig)})
    if unknown:
        raise ConfigError(f"unknown synth option(s): {', '.join(unknown)}",
                          hint=f"known: {', '.join(f.name for f in dataclasses.fields(SynthConfig))}")
    cfg = SynthConfig(layout=layout, speakers=speakers, videos_per_speaker=videos_per_speaker,
                      clips_per_video=clips_per_video, seed=seed, clip_seconds=clip_seconds,
                      frames_format=frames_format, **options)
    cfg.validate()
    t0 = time.perf_counter()
    out = Path(out_dir)
    _prepare_out(out, overwrite)
    splits = assign_splits(cfg)
    tasks = []
    for i in range(cfg.speakers):
        spk = speaker_id(cfg.layout, i)
        for v, vid in enumerate(video_ids(cfg.seed, i, cfg.videos_per_speaker)):
            tasks.append((to_dict(cfg), str(out), i, v, spk, vid, splits[i]))
    results = _run(tasks, workers, progress)
    records, conditions = [], {}
    for clip_list in results:
        for rec, cond in clip_list:
            records.append(ClipRecord(**rec))
            conditions[rec["clip_id"]] = cond
    records.sort(key=lambda r: r.clip_id)
    manifest = out / "manifest.jsonl"
    from data_manifests.trials import write_trials

    trial_paths, n_trials = {}, {}
    for split in ("dev", "test"):
        labels, enrol, test = make_trials(records, split, cfg.seed, cfg.max_trials)
        p = out / "trials" / f"{split}.txt"
        write_trials(p, labels, enrol, test, ext=".wav")
        trial_paths[split] = str(p)
        n_trials[split] = {"n_trials": len(labels), "n_target": int(sum(labels)),
                           "n_nontarget": len(labels) - int(sum(labels))}
    write_manifest(manifest, records)   # last: a corpus with a manifest is complete
    elapsed = time.perf_counter() - t0
    conds = list(conditions.values())
    report = {
        "out_dir": str(out), "layout": cfg.layout, "dataset": cfg.dataset, "seed": cfg.seed,
        "manifest": str(manifest), "trials": trial_paths, "info": str(out / INFO_NAME),
        "n_speakers": cfg.speakers, "n_videos": len(tasks), "n_clips": len(records),
        "speakers_per_split": {s: splits.count(s) for s in ("train", "dev", "test")},
        "clips_per_split": {s: sum(r.split == s for r in records) for s in ("train", "dev", "test")},
        "n_trials": n_trials, "total_seconds": round(sum(r.duration for r in records), 3),
        "degraded": {"noisy_audio": sum(c["audio"] == "noisy" for c in conds),
                     "face_occluded": sum(c["face"] == "occluded" for c in conds),
                     "face_absent": sum(c["face"] == "absent" for c in conds)},
        "elapsed_s": round(elapsed, 2), "workers": workers,
    }
    # the info file leaves out timings so that the whole corpus is reproducible byte for byte
    stable = {k: v for k, v in report.items() if k not in ("elapsed_s", "workers", "out_dir", "manifest",
                                                           "trials", "info")}
    atomic_write_json(out / INFO_NAME, {"config": info_config(to_dict(cfg)), "summary": stable,
                                        "conditions": dict(sorted(conditions.items()))})
    return report


def _run(tasks: list[tuple], workers: int, progress: bool) -> list:

    bar = progress_(total=len(tasks), desc="synth videos", unit="video", enabled=progress, leave=True)
    try:
        if workers <= 1 or len(tasks) < 4:
            out = []
            for t in tasks:
                out.append(_make_video(t))
                bar.update()
            return out
        # fork (POSIX): no re-import of the caller's __main__, so scripts need no main guard;
        # the workers only use numpy/scipy/PyAV (and torchvision's libjpeg encoder)
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as ex:
            out = []
            for res in ex.map(_make_video, tasks, chunksize=max(1, len(tasks) // (8 * workers))):
                out.append(res)
                bar.update()
            return out
    finally:
        bar.close()


__all__ = ["SynthConfig", "synthesize", "make_trials", "assign_splits", "speaker_id", "video_ids"]
