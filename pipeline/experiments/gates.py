"""DCA gate analysis: how often the conditional gate picks the cross-attended features.

For a gated head (``dca``) every valid step t of a clip's audio segments and face
frames has gate weights ``(g0, g1)`` (``fusion.heads.attention``: ``g1`` on the
cross-attended features, ``g0`` on the unattended ones), computed with both
modalities visible (``use=("A", "V")``, as in AVxAV scoring). A step *picks the
cross-attended features* when ``g1 > 0.5``. For a group of clips, per modality:

* ``cross_share`` = (steps with g1 > 0.5) / (valid steps), pooled over the group's clips;
* ``mean_gate``   = mean of g1 over the same steps (near 0/1 at low temperature).

Trial groups (target / non-target; correct / error at the EER threshold of the
head's AVxAV scores) pool the steps of both clips of each trial of the group (a
clip in three trials counts three times). Clip groups: every clip of the trial
list once; per-clip conditions of a synthetic corpus (``audio`` clean/noisy,
``face`` ok/occluded/absent; ``read_conditions``: a JSON file, e.g. the toy corpus's ``synth_info.json``) when given;
clips that lack a modality in the cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.core.errors import ConfigError


def clip_gates(head, view, rows: np.ndarray, batch_size: int = 2048) -> dict[str, np.ndarray]:
    """Per clip (``rows`` of ``view``): ``{m}_picks``, ``{m}_steps``, ``{m}_gsum`` for m in A, V."""
    import torch

    from pipeline.train.data import batch_from_cache

    out = {f"{m}_{k}": np.zeros(len(rows), dtype=np.float64) for m in "AV" for k in ("picks", "steps", "gsum")}
    with torch.no_grad():
        for a in range(0, len(rows), batch_size):
            b = batch_from_cache(view, rows[a:a + batch_size], True)
            g = head.gate_weights(b, use=("A", "V"))
            for m in "AV":
                g1 = g[m][..., 1].float()
                valid = g[f"{m}_valid"].bool()
                out[f"{m}_picks"][a:a + batch_size] = ((g1 > 0.5) & valid).sum(1).cpu().numpy()
                out[f"{m}_steps"][a:a + batch_size] = valid.sum(1).cpu().numpy()
                out[f"{m}_gsum"][a:a + batch_size] = (g1 * valid).sum(1).cpu().numpy()
    return out


def _row(system: str, group: str, value: str, n: int, sums: dict[str, float]) -> dict:
    def ratio(a, b):
        return float(a / b) if b > 0 else None
    return {"system": system, "group": group, "value": value, "n": int(n),
            "audio_cross_share": ratio(sums["A_picks"], sums["A_steps"]),
            "face_cross_share": ratio(sums["V_picks"], sums["V_steps"]),
            "audio_mean_gate": ratio(sums["A_gsum"], sums["A_steps"]),
            "face_mean_gate": ratio(sums["V_gsum"], sums["V_steps"]),
            "audio_steps": int(sums["A_steps"]), "face_steps": int(sums["V_steps"])}


def gate_stats(system, view, trials, *, conditions: dict | None = None) -> list[dict]:
    """Rows of the gate table for one gated ``System`` (see the module docstring)."""
    from pipeline.core.metrics import compute_metrics
    from pipeline.score.engine import score_from_cache

    utts, ei, ti = trials.index()
    vrows = view.rows(utts, missing="mask")        # -1: not in the cache (those trials are skipped)
    present = vrows >= 0
    got = clip_gates(system.head, view, vrows[present])
    per = {k: np.zeros(len(utts)) for k in got}
    for k, v in got.items():
        per[k][present] = v
    keys = list(per)
    rows = [_row(system.label, "all clips", "all", int(present.sum()), {k: per[k].sum() for k in keys})]

    labels = np.asarray(trials.labels)
    res = score_from_cache(view, trials, "AVxAV", head=system.head, skip_missing=True)
    thr = compute_metrics(res.scores, res.labels)["eer_threshold"]
    # scored trials back to positions in the list (same order; unscorable ones dropped)
    pos = {(e, t): i for i, (e, t) in enumerate(zip(utts[ei].tolist(), utts[ti].tolist()))}
    idx = np.array([pos[(e, t)] for e, t in zip(res.enrol.tolist(), res.test.tolist())], dtype=np.int64)
    correct = np.zeros(len(labels), dtype=bool)
    correct[idx] = (res.scores > thr) == (res.labels == 1)
    scored = np.zeros(len(labels), dtype=bool)
    scored[idx] = True

    def trial_group(group, value, mask):
        sums = {k: float(per[k][ei[mask]].sum() + per[k][ti[mask]].sum()) for k in keys}
        rows.append(_row(system.label, group, value, int(mask.sum()), sums))

    trial_group("trial type", "target", labels == 1)
    trial_group("trial type", "non-target", labels == 0)
    trial_group("decision at EER threshold", "correct", scored & correct)
    trial_group("decision at EER threshold", "error", scored & ~correct)

    def clip_group(group, value, mask):
        if mask.any():
            rows.append(_row(system.label, group, value, int(mask.sum()), {k: float(per[k][mask].sum())
                                                                           for k in keys}))
    if conditions:
        cond = [conditions.get(u, {}) for u in utts.tolist()]
        for mod in ("audio", "face"):
            vals = np.array([c.get(mod, "unknown") for c in cond])
            for v in sorted(set(vals[present].tolist())):
                clip_group(f"{mod} condition", v, (vals == v) & present)
    for flag, what in (("has_face", "face missing in cache"), ("has_audio", "audio missing in cache")):
        if view.has(flag):
            lacks = np.zeros(len(utts), dtype=bool)
            lacks[present] = ~view.to_numpy(flag, vrows[present], dtype=bool).astype(bool)
            clip_group("cache", what, lacks)
    return rows


def read_conditions(path: str | Path) -> dict[str, dict[str, str]]:
    """Per-clip conditions ``{clip_id: {"audio": clean|noisy, "face": ok|occluded|absent}}``.

    ``path``: a JSON file holding that mapping (top level or under ``"conditions"``), or
    a folder holding ``synth_info.json`` (what ``avfuse synth`` writes).
    """
    p = Path(path)
    if p.is_dir():
        p = p / "synth_info.json"
    if not p.is_file():
        raise ConfigError("no per-clip conditions file here", path=p,
                          hint="give --corpus the folder `avfuse synth` wrote, or a JSON file of conditions")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read the conditions file: {e}", path=p) from None
    cond = data.get("conditions", data) if isinstance(data, dict) else None
    if not isinstance(cond, dict) or not all(isinstance(v, dict) for v in cond.values()):
        raise ConfigError("not a conditions file: expected {clip_id: {audio: ..., face: ...}}", path=p)
    return cond
