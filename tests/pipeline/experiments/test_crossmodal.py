"""Cross-modal matching (pipeline.experiments.crossmodal): the vectorised 1:2 accuracy equals a triplet loop,
the learned projection finds a planted audio->face link and stays at chance without one, and the
real-cache entry point runs on the shared toy cache (raw backbones and a trained head)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.experiments.crossmodal import cosine_matrix, fit_projection, matching_accuracy, voice_face_matching


def _loop_accuracy(s, spk, vid):
    wins, n = 0.0, 0
    for i in range(len(s)):
        for j in range(len(s)):
            if spk[j] != spk[i] or vid[j] == vid[i]:
                continue
            for k in range(len(s)):
                if spk[k] == spk[i]:
                    continue
                n += 1
                wins += 1.0 if s[i, j] > s[i, k] else 0.5 if s[i, j] == s[i, k] else 0.0
    return wins / n, n


def test_matching_accuracy_equals_the_triplet_loop():
    rng = np.random.default_rng(0)
    spk = np.repeat(np.arange(7), 4)
    vid = np.tile([0, 0, 1, 1], 7) + 10 * spk
    s = np.round(rng.uniform(-1, 1, (28, 28)), 1)          # coarse values: many ties
    got = matching_accuracy(s, spk, vid)
    want, n = _loop_accuracy(s, spk, vid)
    assert got["n_triplets"] == n == 28 * 2 * 24
    assert got["accuracy"] == pytest.approx(want, abs=1e-12)
    assert got["n_voices"] == 28


def _speakers(rng, n_spk, per, da, dv, link):
    """Audio and face clip embeddings of n_spk speakers; the face identity is `link` of a
    linear image of the voice identity plus its own independent part."""
    va = rng.standard_normal((n_spk, da))
    own = rng.standard_normal((n_spk, dv))
    mix = rng.standard_normal((da, dv)) / np.sqrt(da)
    vf = link * va @ mix + np.sqrt(1 - link ** 2) * own
    spk = np.repeat(np.arange(n_spk), per)
    a = va[spk] + 0.5 * rng.standard_normal((len(spk), da))
    f = vf[spk] + 0.5 * rng.standard_normal((len(spk), dv))
    return a, f, spk, mix


@pytest.mark.parametrize("link", [0.0, 0.9])
def test_projection_learns_a_planted_link_and_nothing_else(link):
    rng = np.random.default_rng(1)
    a, f, spk, _ = _speakers(rng, 120, 4, 16, 24, link)
    tr = spk < 80
    proj = fit_projection(a[tr], f[tr], spk[tr])
    res = matching_accuracy(cosine_matrix(proj(a[~tr]), f[~tr]), spk[~tr], np.arange((~tr).sum()) // 2)
    if link == 0:
        assert abs(res["accuracy"] - 0.5) < 0.05, res
    else:
        assert res["accuracy"] > 0.8, res
    assert proj.ridge in (0.01, 0.1, 1.0, 10.0, 100.0)


def test_voice_face_matching_on_a_real_cache(tmp_path_factory):
    from fusion.trainer import TrainConfig
    from pipeline.cache.reader import open_cache
    from pipeline.train.run import train_head
    from tests.pipeline.experiments.toy_corpus import build_toy

    cache = open_cache(build_toy(tmp_path_factory.getbasetemp())["cache"])
    test_rows = cache.split_rows("test")
    raw = voice_face_matching(cache, ridge=1.0)
    n = len(test_rows)
    spk = np.asarray(cache.speakers)[test_rows]
    same = (spk[:, None] == spk[None, :]).sum(axis=1)
    assert raw["method"] == "projection" and 0.0 <= raw["accuracy"] <= 1.0
    assert raw["n_triplets"] == int(((same - 2) * (n - same)).sum())   # 2 clips per video: same-video excluded
    head, _ = train_head(cache, "mean", TrainConfig(epochs=2, batch_size=8, device="cpu"), progress=False)
    got = voice_face_matching(cache, head=head)
    assert got["method"] == "head" and got["n_triplets"] == raw["n_triplets"]
