"""Quality gates on the toy corpus (real media -> real backbones -> real cache -> heads -> scoring).

Deterministic: fixed seeds, one torch thread, CPU. Corpus: ``toy_cache``
(tests/fusion/conftest.py: 150 synthetic speakers, 2 videos x 2 clips each, split
90 train / 15 dev / 45 test speakers; ge2e_lstm pretrained + iresnet18 random-init).

* Trained heads: the train split, every head with the clip heads' recipe
  (``fusion.recipes.CLIP_RECIPE``: AdamW 2e-3, cosine, masking 0.3) except 30 epochs, batch
  64 and, for the three attention heads, ``d_model=64`` (native widths are sized for
  VoxCeleb2's 5,994 identities; on 60 toy identities they overfit). The attention heads'
  own default, the DCA authors' recipe (Adam 1e-3 x0.65 per epoch, ``DCA_RECIPE``), is
  made for epochs of ~1,400 steps; a toy epoch is 6 steps, so after ~50 updates the LR is
  gone (measured, dca 3-seed AVxAV 26.8 with it vs 17.1 with the clip recipe, both without
  masking; docs/FIDELITY.md). The gates test the architectures, not that schedule at a
  scale it was not made for. No dev data, no early stopping. ``score_avg`` is calibrated
  on the corpus's dev trials. The attention heads keep their AAM defaults m=0.4, s=64.
* Each trained head is trained with seeds 0, 1, 2 and its EER in a mode is the mean
  over the three: on a few hundred training clips single-seed EERs spread by 1-3
  points, more than some of the differences the gates test.
* Test trials: every pair of test-split clips that is either a target from two
  *different* videos of one speaker (the rule of the synth's ``trials/test.txt``) or
  a non-target, i.e. the list without its one-non-target-per-target subsampling
  (all the non-targets instead of one per target), for a less noisy EER.
* Scores: ``pipeline.score.score_from_cache`` (what ``avfuse score`` runs); EER:
  ``pipeline.core.metrics.eer``.
* The masking gate runs on ``toy_cache_correlated`` (the same corpus with voice and face
  linked by shared traits, ``av_correlation=1``); see the comment above MASKING_XFAIL.
* "The better single modality" is read strictly: an AVxAV EER must be at or below
  the head's own AxA and VxV EERs *and* the raw backbone embeddings' cosine AxA and
  VxV EERs.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from data_manifests import read_trials, write_trials
from fusion import TrainConfig, load_head, save_head
from fusion.recipes import CLIP_RECIPE
from pipeline.core import eer
from pipeline.score import score_from_cache
from pipeline.train import checkpoint_meta, train_head

TRAINED = ("mean", "mlp", "multiview", "cross_attention", "jca", "dca")
MUST_REACH_SCORE_AVG = ("mean", "mlp", "dca")
MASKING_HEADS = ("mean", "mlp", "dca")
MODES = ("AxA", "VxV", "AVxAV", "AVxA", "AVxV")
SEEDS = (0, 1, 2)
TOY_OPTIONS = {"cross_attention": {"d_model": 64}, "jca": {"d_model": 64}, "dca": {"d_model": 64}}


def recipe(name: str, seed: int, **changes) -> TrainConfig:
    fields = {**CLIP_RECIPE, "epochs": 30, "batch_size": 64, **changes}
    return TrainConfig(seed=seed, device="cpu", head_options=dict(TOY_OPTIONS.get(name, {})), **fields)


def all_pairs_test_list(cache, path):
    rows = cache.split_rows("test")
    ids, spk = cache.ids[rows], cache.speakers[rows]
    video = np.array([i.split("/")[1] for i in ids])
    e, t = np.triu_indices(len(rows), 1)
    target = (spk[e] == spk[t]) & (video[e] != video[t])
    keep = target | (spk[e] != spk[t])
    write_trials(path, target[keep].astype(int), ids[e][keep], ids[t][keep])
    return read_trials(path)


def eer_of(cache, trials, mode, head=None) -> float:
    s = score_from_cache(cache, trials, mode, head=head)
    return 100.0 * eer(s.scores, s.labels)


def mean_eers(cache, trials, heads) -> dict[str, float]:
    return {m: float(np.mean([eer_of(cache, trials, m, h) for h in heads])) for m in MODES}


@pytest.fixture(scope="module")
def toy(toy_cache, tmp_path_factory):
    cache = toy_cache.open()
    trials = all_pairs_test_list(cache, tmp_path_factory.mktemp("q") / "test_all_pairs.txt")
    return cache, trials, toy_cache


@pytest.fixture(scope="module")
def heads(toy):
    """name -> list of heads (one per seed; score_avg: one calibration)."""
    cache, _, tc = toy
    out = {"score_avg": [train_head(cache, "score_avg", recipe("score_avg", 0), dev_trials=str(tc.dev_trials),
                                    progress=False)[0]]}
    for name in TRAINED:
        out[name] = [train_head(cache, name, recipe(name, s), progress=False)[0] for s in SEEDS]
    return out


@pytest.fixture(scope="module")
def table(toy, heads):
    """Mean EER (%) per system and mode on the all-pairs test trials; printed with ``pytest -s``."""
    cache, trials, _ = toy
    t = {"raw": {m: eer_of(cache, trials, m) for m in ("AxA", "VxV", "AVxAV")}}
    per_seed = {}
    for name, hs in heads.items():
        t[name] = mean_eers(cache, trials, hs)
        per_seed[name] = [eer_of(cache, trials, "AVxAV", h) for h in hs]
    print(f"\nEER % (mean of seeds {SEEDS}) on {trials.n_target} target / {trials.n_nontarget} "
          "non-target toy test trials")
    for name, row in t.items():
        seeds = " ".join(f"{x:.1f}" for x in per_seed.get(name, []))
        print(f"  {name:<16}" + "  ".join(f"{m} {v:5.1f}" for m, v in row.items())
              + (f"   AVxAV per seed: {seeds}" if seeds else ""))
    return t


@pytest.mark.parametrize("name", TRAINED)
def test_trained_head_fuses_at_or_below_the_better_single_modality(name, table):
    row = table[name]
    own_best = min(row["AxA"], row["VxV"])
    raw_best = min(table["raw"]["AxA"], table["raw"]["VxV"])
    assert row["AVxAV"] <= own_best, f"{name}: AVxAV {row['AVxAV']:.2f} > its own single modality {own_best:.2f}"
    assert row["AVxAV"] <= raw_best, f"{name}: AVxAV {row['AVxAV']:.2f} > raw backbone single {raw_best:.2f}"


@pytest.mark.parametrize("name", MUST_REACH_SCORE_AVG)
def test_head_reaches_score_avg(name, table):
    floor = table["score_avg"]["AVxAV"]
    assert table[name]["AVxAV"] <= floor, f"{name}: AVxAV {table[name]['AVxAV']:.2f} > score_avg {floor:.2f}"


# The masking gate runs on the correlated corpus (``toy_cache_correlated``: the same 150 speakers with
# ``av_correlation=1``, a speaker's voice and face driven by shared latent sex, age and size,
# data_manifests/synth/traits.py), where a cross-modal term could carry identity.
# Measured there (3-seed means, all-pairs test list, masked (mask_prob 0.3) vs unmasked):
#   mean AVxA 25.2 vs 24.4  AVxV 26.1 vs 25.5   mlp AVxA 27.2 vs 24.9  AVxV 27.5 vs 26.9
#   dca  AVxA 27.9 vs 30.2  AVxV 25.6 vs 25.6   (ge2e_lstm with resemblyzer's silence trimming and the
#        authors' xavier init, the defaults, rerun 2026-12-03; before the trimming mean 25.6 vs 24.7 /
#        26.5 vs 25.4, mlp 27.8 vs 25.5 / 27.2 vs 26.5, dca 27.7 vs 29.3 / 25.1 vs 24.4; dca with PyTorch's
#        init, `init=torch`, before the trimming: AVxA 32.1 vs 29.0  AVxV 27.7 vs 27.3)
# and voice-to-face 1:2 matching on the test speakers (pipeline/experiments/crossmodal.py) near
# chance: 49.6 % through an audio->face ridge projection learned on the train speakers (51.3 % before the
# trimming; the figures from here on are from before it: 48.6 % on the independent corpus), 50.0 %
# (masked) / 47.6 % (unmasked) in the mean head's shared space. Why so little reaches the heads:
# linear probes fitted on train, read on test (this corpus) find age in both embeddings (ge2e_lstm
# audio/clip r 0.59: voice quality; random-init iresnet18 face/clip r 0.56: grey hair) and sex in both
# (75 % / 69 %), but a probe is fitted on the traits themselves; learned from 90 train identities without
# them, the shared part is a few noisy directions among hundreds, and for unseen speakers the cross term
# cos(e_V, e_A') of an AV-enrolment vs audio-test score stays mostly noise. Masking (which trains e_A and
# e_V alone against one class vector, pulling the modalities into one space) makes that noise larger, as
# on the independent corpus (there, mask_prob 0 / 0.3 / 0.5 / 0.7 gave mean AVxA 22.2 / 23.1 / 23.7 /
# 24.4, mlp 25.3 / 26.5 / 27.8 / 29.5, dca 23.6 / 25.3 / 26.6 / 27.3). What masking fixes in 2311.05071
# (a network that has only seen both inputs, fed a zeroed one) does not arise here either: every head
# handles an absent modality structurally. The assertion is kept as written, as a strict xfail; it can
# turn green with many more training identities, trained backbones, or stronger shared cues; then the
# xfail must go.
MASKING_XFAIL = pytest.mark.xfail(strict=True, reason=(
    "measured on the voice-face correlated toy corpus (av_correlation=1): masking still makes AVxA worse "
    "(mean 25.2 vs 24.4, mlp 27.2 vs 24.9) and does not improve dca's AVxV (25.6 vs 25.6; its AVxA 27.9 vs 30.2 "
    "improves); voice-to-face matching is near chance (50 %), "
    "so cross-modal terms stay mostly noise for unseen speakers; see the comment above MASKING_XFAIL"))


@pytest.fixture(scope="module")
def masking(toy_cache_correlated, tmp_path_factory):
    """``{(name, "masked"|"unmasked"): mean EERs}`` of the masking heads on the correlated corpus."""
    from pipeline.experiments.crossmodal import voice_face_matching

    cache = toy_cache_correlated.open()
    trials = all_pairs_test_list(cache, tmp_path_factory.mktemp("qc") / "test_all_pairs.txt")
    print(f"\ncorrelated corpus: voice-to-face 1:2 matching (raw, projection) "
          f"{100 * voice_face_matching(cache)['accuracy']:.1f} %")
    out = {}
    for name in MASKING_HEADS:
        for label, changes in (("masked", {}), ("unmasked", {"mask_prob": 0.0})):
            hs = [train_head(cache, name, recipe(name, s, **changes), progress=False)[0] for s in SEEDS]
            out[(name, label)] = mean_eers(cache, trials, hs)
            print(f"  {name} {label}: " + "  ".join(f"{m} {v:5.1f}" for m, v in out[(name, label)].items()))
    return out


# The masking gate needs a second 600-clip corpus (about 4 minutes on 2 idle cores, 7 under load, plus
# 18 trainings): `make test-quality` runs it (AVFUSE_SLOW_GATES=1); `make test` skips it to stay within
# the CI budget, since its outcome is the measured strict xfail above.
SLOW_GATES = pytest.mark.skipif(os.environ.get("AVFUSE_SLOW_GATES") != "1", reason=(
    "the masking gate builds a second toy corpus (voice-face correlated): run `make test-quality`"))


@SLOW_GATES
@pytest.mark.parametrize("name", [pytest.param(n, marks=MASKING_XFAIL) for n in MASKING_HEADS])
def test_masking_improves_cross_modal_modes(name, masking):
    masked, unmasked = masking[(name, "masked")], masking[(name, "unmasked")]
    for mode in ("AVxA", "AVxV"):
        assert masked[mode] < unmasked[mode], (
            f"{name} {mode}: masked {masked[mode]:.2f} >= unmasked {unmasked[mode]:.2f}")


def test_save_load_score_identical(toy, heads, tmp_path):
    cache, trials, _ = toy
    for name, hs in heads.items():
        head = hs[0]
        path = tmp_path / f"{name}.pt"
        save_head(path, head, checkpoint_meta(recipe(name, 0), cache))
        loaded, meta = load_head(path)
        assert meta["cache_fingerprint"] == cache.fingerprint
        for mode in ("AVxAV", "AVxA"):
            a = score_from_cache(cache, trials, mode, head=head).scores
            b = score_from_cache(cache, trials, mode, head=loaded, head_meta=meta).scores
            assert np.array_equal(a, b), f"{name} {mode}: scores changed after save/load"
