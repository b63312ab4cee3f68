"""Score calibration and trained linear late fusion (BOSARIS/PYLLR-style logistic regression).

Model
-----
Features of a trial: the scores ``x_1..x_K`` of the same trial from ``K`` aligned score
files (K >= 2 is linear late fusion, e.g. an AxA and a VxV file), optionally followed by
quality measures ``q`` (as WeSpeaker's QMF; computed from the embedding cache by
``pipeline.score.quality``: durations, embedding norms, imposter-cohort mean scores).

The calibrated score is a natural-log likelihood ratio ``llr = w . f + b``.

Training (prior-weighted logistic regression, ``p`` = ``prior``, ``N_tar``/``N_non``
target/non-target counts of the dev trials) minimises, with ``z = w . f + b + logit(p)``::

    C(w, b) = p/N_tar sum_tar softplus(-z) + (1-p)/N_non sum_non softplus(z) + l2/2 |w|^2

so each class weighs as its effective prior (not its count) and the fitted ``w . f + b``
is an LLR (the ``logit(p)`` offset is the prior's log odds). ``C / log 2`` at the
optimum is the prior-weighted Cllr on dev. Solved by scipy L-BFGS-B with the analytic
gradient ``grad_z = a_i (sigmoid(z_i) - y_i)`` (``a_i`` = the class weight), on features
standardised to zero mean / unit variance (the weights are mapped back to raw features).

``CalibrationModel`` round-trips to JSON (``save``/``load``) with a fingerprint of the
parameters; ``apply`` maps aligned score files (+ quality) to LLRs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.core.errors import ConfigError, ScoringError
from pipeline.score.align import load_aligned
from pipeline.score.quality import quality_features, quality_names

FORMAT = "avfuse-calibration"


@dataclass
class CalibrationModel:
    """A linear LLR mapping: ``llr = sum(weights * features) + bias``.

    ``features`` names each input in order: ``score[k]`` for the ``k``-th scores file,
    then quality features (``log_dur_min``, ``log_dur_max``, ``norm_A_min``, ...).
    ``train`` records the dev data (files, counts, Cllr before/after).
    """

    weights: list[float]
    bias: float
    features: list[str]
    n_scores: int
    quality: list[str] = field(default_factory=list)
    quality_options: dict = field(default_factory=dict)
    prior: float = 0.5
    l2: float = 1e-6
    format: str = FORMAT
    version: int = 1
    train: dict = field(default_factory=dict)

    def params(self) -> dict:
        """What determines the mapping (fingerprinted)."""
        return {"weights": [float(w) for w in self.weights], "bias": float(self.bias),
                "features": list(self.features), "n_scores": int(self.n_scores),
                "quality": list(self.quality), "quality_options": dict(self.quality_options),
                "prior": float(self.prior), "l2": float(self.l2)}

    @property
    def fingerprint(self) -> str:
        from pipeline.core.config import fingerprint
        return fingerprint(self.params())

    def llr(self, features: np.ndarray) -> np.ndarray:
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or f.shape[1] != len(self.weights):
            raise ScoringError(f"calibration model takes {len(self.weights)} features "
                               f"({', '.join(self.features)}), got {f.shape[-1]}")
        return np.einsum("nd,d->n", f, np.asarray(self.weights, dtype=np.float64)) + float(self.bias)

    def save(self, path: str | Path) -> None:
        from pipeline.core.config import to_dict
        from pipeline.core.fsio import atomic_write_json
        atomic_write_json(path, {**to_dict(self), "fingerprint": self.fingerprint})

    @classmethod
    def load(cls, path: str | Path) -> "CalibrationModel":
        import json

        from pipeline.core.config import from_dict
        p = Path(path)
        if not p.is_file():
            raise ConfigError("calibration model not found", path=p,
                              hint="train one with `avfuse calibrate fit ... --out CAL.json`")
        try:
            data = json.loads(p.read_text())
        except ValueError as e:
            raise ConfigError(f"not a JSON calibration model ({e})", path=p) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ConfigError(f"not an avfuse calibration model (format is not {FORMAT!r})", path=p)
        fp = data.pop("fingerprint", None)
        try:
            model = from_dict(cls, data)
        except ConfigError as e:
            raise ConfigError(e.message, path=p, hint=e.hint) from None
        if len(model.weights) != len(model.features):
            raise ConfigError(f"{len(model.weights)} weights for {len(model.features)} features", path=p)
        if fp is not None and fp != model.fingerprint:
            raise ConfigError(f"fingerprint {fp} does not match the parameters ({model.fingerprint})", path=p,
                              hint="the file was edited; refit with `avfuse calibrate fit`")
        return model


# ---------------------------------------------------------------- training
class _Objective:
    """``C(theta)`` and its gradient (module docstring) on standardised features ``GT`` (d, n),
    vectorised with preallocated work arrays (no BLAS level-1 calls: on a loaded machine their
    threads cost more than the arithmetic). With ``x = z`` for non-targets and ``x = -z`` for
    targets: ``loss = softplus(x) = max(x, 0) + log(1 + e^-|x|)`` and
    ``dC/dz = sign * a * sigmoid(x)``, ``sigmoid(x) = e^min(x, 0) / (1 + e^-|x|)``."""

    def __init__(self, GT: np.ndarray, y: np.ndarray, a: np.ndarray, offset: float, l2: float):
        self.GT, self.a, self.offset, self.l2 = GT, a, offset, l2
        self.sign = np.where(y, -1.0, 1.0)
        self.sa = self.sign * a
        self.buf = np.empty((3, GT.shape[1]))

    def __call__(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        x, e, t = self.buf
        w, b = theta[:-1], theta[-1]
        x.fill(b + self.offset)
        for k in range(len(w)):
            x += self.GT[k] * w[k]
        x *= self.sign
        np.abs(x, out=e)
        np.negative(e, out=e)
        np.exp(e, out=e)
        e += 1.0                                       # 1 + e^-|x|
        np.log(e, out=t)
        f = float(np.einsum("i,i->", self.a, t))
        np.maximum(x, 0.0, out=t)
        f += float(np.einsum("i,i->", self.a, t))
        np.minimum(x, 0.0, out=t)
        np.exp(t, out=t)
        t /= e
        t *= self.sa                                   # dC/dz
        grad = np.empty_like(theta)
        grad[:-1] = np.einsum("kn,n->k", self.GT, t) + self.l2 * w
        grad[-1] = t.sum()
        return f + 0.5 * self.l2 * float(w @ w), grad


def _objective(theta, F, y, a, offset, l2):
    """``(C, grad)`` of ``theta = (w, b)`` on features ``F`` (n, d) (one-shot ``_Objective``)."""
    return _Objective(np.ascontiguousarray(np.asarray(F, dtype=np.float64).T), np.asarray(y) == 1,
                      np.asarray(a, dtype=np.float64), offset, l2)(np.asarray(theta, dtype=np.float64))


def train_logreg(F: np.ndarray, labels: np.ndarray, prior: float = 0.5, l2: float = 1e-6,
                 max_iter: int = 500) -> tuple[np.ndarray, float, dict]:
    """``(w, b, info)`` of the prior-weighted logistic regression (module docstring) on
    features ``F`` (n, d) and labels 1/0."""
    from scipy.optimize import minimize

    if not 0.0 < prior < 1.0:
        raise ConfigError(f"--prior must be in (0, 1), got {prior}")
    y = np.asarray(labels) == 1
    n_tar = int(y.sum())
    n_non = len(y) - n_tar
    if n_tar == 0 or n_non == 0:
        raise ScoringError(f"need both target and non-target trials (got {n_tar} targets, {n_non} non-targets)")
    F = np.asarray(F, dtype=np.float64)
    mu = F.mean(axis=0)
    sd = F.std(axis=0)
    sd[sd < 1e-12] = 1.0                     # a constant feature: its weight stays ~0 (l2)
    GT = np.ascontiguousarray(((F - mu) / sd).T)      # (d, n): one contiguous row per feature
    a = np.where(y, prior / n_tar, (1.0 - prior) / n_non)
    offset = math.log(prior / (1.0 - prior))
    theta0 = np.zeros(GT.shape[0] + 1)
    res = minimize(_Objective(GT, y, a, offset, l2), theta0, jac=True,
                   method="L-BFGS-B", options={"maxiter": max_iter, "gtol": 1e-9, "ftol": 1e-12})
    ws, bs = res.x[:-1], res.x[-1]
    w = ws / sd
    b = float(bs - np.dot(w, mu))
    info = {"iterations": int(res.nit), "converged": bool(res.success), "objective_bits": float(res.fun / math.log(2)),
            "n_target": n_tar, "n_nontarget": n_non}
    return w, b, info


def fit(score_paths: Sequence[str | Path], *, quality: Sequence[str] = (), cache=None, prior: float = 0.5,
        l2: float = 1e-6, cohort: str | None = None, top_k: int = 300) -> CalibrationModel:
    """Fit a ``CalibrationModel`` on labeled, aligned dev score files (+ quality from ``cache``;
    ``cohort``/``top_k`` for the ``cohort`` measure, see ``pipeline.score.quality``)."""
    from pipeline.core.fsio import sha256_file
    from pipeline.core.llr_metrics import cllr, min_cllr

    ref = load_aligned(score_paths, need_labels=True)
    X = ref.X
    options = {"cohort": cohort, "top_k": int(top_k)} if "cohort" in quality else {}
    Q = quality_features(cache, *ref.ids(), quality, **options) if quality else np.zeros((len(ref), 0))
    F = np.hstack([X, Q])
    w, b, info = train_logreg(F, ref.labels, prior=prior, l2=l2)
    features = [f"score[{k}]" for k in range(X.shape[1])] + quality_names(quality, cache)
    model = CalibrationModel(weights=[float(v) for v in w], bias=b, features=features, n_scores=X.shape[1],
                             quality=list(quality), quality_options=options, prior=float(prior), l2=float(l2))
    llr = model.llr(F)
    info.update(
        files=[{"path": str(Path(p).resolve()), "sha256": sha256_file(p)} for p in score_paths],
        cache=None if cache is None else {"path": str(cache.path), "fingerprint": cache.fingerprint},
        cllr_raw=[cllr(X[:, k], ref.labels) for k in range(X.shape[1])],
        min_cllr_raw=[min_cllr(X[:, k], ref.labels) for k in range(X.shape[1])],
        cllr=cllr(llr, ref.labels), min_cllr=min_cllr(llr, ref.labels))
    model.train = info
    return model


def apply(model: CalibrationModel, score_paths: Sequence[str | Path], *, cache=None):
    """``Scores`` whose scores are the model's LLRs for aligned score files (same order as at fit)."""
    from pipeline.score.files import Scores

    if len(score_paths) != model.n_scores:
        raise ConfigError(f"the model fuses {model.n_scores} scores file(s), got {len(score_paths)} --scores",
                          hint="pass the score files of the same systems, in the order used at fit")
    ref = load_aligned(score_paths)
    enrol, test = ref.ids()
    Q = quality_features(cache, enrol, test, model.quality, **model.quality_options)
    F = np.hstack([ref.X, Q])
    if F.shape[1] != len(model.weights):
        raise ConfigError(f"the model takes {len(model.weights)} features ({', '.join(model.features)}) "
                          f"but this cache gives {F.shape[1]}", hint="use the cache the model was fitted with")
    llr = model.llr(F).astype(np.float32)
    return Scores(labels=ref.labels, enrol=enrol, test=test, scores=llr)
