"""Cross-modal matching: does a voice say something about a face?

Voice-to-face 1:2 matching (Nagrani et al., "Seeing voices and hearing faces", 2018): given
a voice clip and two faces, one of the same speaker (from another video) and one of another
speaker, pick the same speaker's face. Accuracy is over *every* such triplet of a split
(ties count one half); chance is 50 %.

Two ways to compare a voice with a face:

* ``projection``: the raw backbones live in unrelated spaces, so a linear map from audio
  to face embeddings is learned on the *train* speakers (:func:`fit_projection`: ridge
  least squares from each L2-normalised, centred audio embedding to its speaker's mean
  face embedding, the ridge chosen by leave-speakers-out cross-validation on train only);
  the score is the cosine between the mapped voice and the face;
* ``head``: a fusion head with a shared space (``score_kind == "cosine"``) scores
  ``cos(e_A(voice), e_V(face))`` directly (``head.embed`` with ``use=("A",)`` / ``("V",)``).

On the toy corpus with ``--av-correlation 0`` voice and face are independent per speaker,
so both must sit at chance for unseen speakers; with R > 0 shared traits make them rise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.experiments.stats import l2n, per_identity_mean

RIDGE_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)


@dataclass(frozen=True)
class Projection:
    """``y ~ (l2n(x) - x_mean) @ weight + y_mean`` (audio -> face space)."""

    weight: np.ndarray      # (Da, Dv)
    x_mean: np.ndarray      # (Da,)
    y_mean: np.ndarray      # (Dv,)
    ridge: float            # relative ridge: lambda = ridge * trace(X^T X) / Da

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (l2n(x) - self.x_mean) @ self.weight + self.y_mean


def _ridge(x: np.ndarray, y: np.ndarray, ridge: float) -> np.ndarray:
    g = x.T @ x
    lam = ridge * float(np.trace(g)) / max(1, g.shape[0])
    return np.linalg.solve(g + lam * np.eye(g.shape[0]), x.T @ y)


def _fit(x: np.ndarray, y: np.ndarray, speakers: np.ndarray, ridge: float) -> Projection:
    xn, yn = l2n(x), l2n(y)
    ids, means = per_identity_mean(yn, speakers)
    target = means[np.searchsorted(ids, speakers)]
    xm, ym = xn.mean(axis=0), target.mean(axis=0)
    return Projection(_ridge(xn - xm, target - ym, ridge), xm, ym, float(ridge))


def fit_projection(x: np.ndarray, y: np.ndarray, speakers: np.ndarray, ridge: float | None = None,
                   folds: int = 5, seed: int = 0) -> Projection:
    """Audio -> face map from train clips with both modalities (module doc). ``ridge=None``:
    the value of ``RIDGE_GRID`` with the best mean matching accuracy over ``folds``
    leave-speakers-out folds of these (train) speakers."""
    speakers = np.asarray(speakers)
    if ridge is not None:
        return _fit(x, y, speakers, ridge)
    uniq = np.unique(speakers)
    fold_of = dict(zip(uniq, np.random.default_rng(seed).permutation(len(uniq)) % folds))
    fold = np.array([fold_of[s] for s in speakers])
    videos = np.arange(len(speakers))               # held-out matching: any other clip of the speaker
    best, best_acc = RIDGE_GRID[0], -1.0
    for r in RIDGE_GRID:
        accs = []
        for k in range(folds):
            tr, te = fold != k, fold == k
            if len(np.unique(speakers[te])) < 2:
                continue
            p = _fit(x[tr], y[tr], speakers[tr], r)
            accs.append(matching_accuracy(cosine_matrix(p(x[te]), y[te]), speakers[te], videos[te])["accuracy"])
        acc = float(np.mean(accs)) if accs else 0.0
        if acc > best_acc:
            best, best_acc = r, acc
    return _fit(x, y, speakers, best)


def cosine_matrix(voices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(n_voices, n_faces) cosine similarities."""
    return l2n(voices) @ l2n(faces).T


def matching_accuracy(scores: np.ndarray, speakers: np.ndarray, videos: np.ndarray) -> dict:
    """1:2 matching accuracy over every triplet (voice i, face j of i's speaker from another
    video, face k of another speaker) of a square ``scores[i, j]`` (voice i vs face j, the
    same clips on both axes): ``{"accuracy", "n_triplets", "n_voices"}``. Vectorised: each
    row's negatives are offset by ``4 * row`` so one global sort serves every row."""
    s = np.asarray(scores, dtype=np.float64)
    spk, vid = np.asarray(speakers), np.asarray(videos)
    same = spk[:, None] == spk[None, :]
    pos = same & (vid[:, None] != vid[None, :])
    neg = ~same
    off = 4.0 * np.arange(len(s))[:, None]            # cosines lie in [-1, 1]: rows never overlap
    negs = np.sort((s + off)[neg])
    p = (s + off)[pos]
    below = np.searchsorted(negs, p, side="left")
    upto = np.searchsorted(negs, p, side="right")
    row_start = np.searchsorted(negs, np.broadcast_to(off, s.shape)[pos] - 2.0, side="left")
    wins = (below - row_start) + 0.5 * (upto - below)
    n_neg = neg.sum(axis=1)
    n_trip = int((pos.sum(axis=1) * n_neg).sum())
    acc = float(wins.sum() / n_trip) if n_trip else float("nan")
    return {"accuracy": acc, "n_triplets": n_trip, "n_voices": int((pos.any(axis=1) & (n_neg > 0)).sum())}


def _videos(ids: np.ndarray) -> np.ndarray:
    return np.array([str(i).split("/")[1] if str(i).count("/") >= 2 else str(i) for i in ids])


def _both_rows(cache, split: str) -> np.ndarray:
    rows = np.asarray(cache.split_rows(split), dtype=np.int64)
    ok = cache.to_numpy("has_audio", rows).astype(bool) & cache.to_numpy("has_face", rows).astype(bool)
    return rows[ok]


def voice_face_matching(cache, head=None, train_split: str = "train", test_split: str = "test",
                        ridge: float | None = None) -> dict:
    """Voice-to-face 1:2 matching accuracy on ``test_split`` clips with both modalities.

    ``head=None``: the raw backbones through a projection fitted on ``train_split``;
    else the head's own shared space. Returns ``{"method", "accuracy", "n_triplets",
    "n_voices", "ridge"}``."""
    from pipeline.core.errors import ConfigError

    test = _both_rows(cache, test_split)
    spk, vid = np.asarray(cache.speakers)[test], _videos(np.asarray(cache.ids)[test])
    if head is None:
        train = _both_rows(cache, train_split)
        if len(np.unique(np.asarray(cache.speakers)[train])) < 4:
            raise ConfigError(f"split '{train_split}' needs at least 4 speakers with audio and face to learn "
                              "the audio-to-face projection", path=cache.path, hint="pick another --train-split")
        proj = fit_projection(cache.to_numpy("audio/clip", train), cache.to_numpy("face/clip", train),
                              np.asarray(cache.speakers)[train], ridge=ridge)
        s = cosine_matrix(proj(cache.to_numpy("audio/clip", test)), cache.to_numpy("face/clip", test))
        return {"method": "projection", **matching_accuracy(s, spk, vid), "ridge": proj.ridge}
    if getattr(head, "score_kind", "cosine") != "cosine":
        raise ConfigError("this head has no shared audio/face space (score_kind is not cosine)",
                          hint="use a head such as mean, mlp or dca, or head=None for the projection")
    from pipeline.score.rows import embed_rows

    s = cosine_matrix(embed_rows(cache, test, head, ("A",)), embed_rows(cache, test, head, ("V",)))
    return {"method": "head", **matching_accuracy(s, spk, vid), "ridge": None}


__all__ = ["Projection", "fit_projection", "cosine_matrix", "matching_accuracy", "voice_face_matching"]
