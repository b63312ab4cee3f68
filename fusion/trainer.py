"""Train a fusion head on embeddings already in memory (tensors in, no paths).

``pipeline.train`` loads a cache split into one ``EmbeddingBatch`` (on the GPU when
there is one) and calls ``fit_head``; each epoch permutes the row indices and slices mini-batches straight
out of those tensors: no per-item ``Dataset``/``DataLoader`` on the hot path.

Per step: gather rows, cast to float32, randomly mask one modality of a sample with
probability ``mask_prob`` (only samples that have both; the masked modality becomes
*absent*, exactly like a missing one), embed each of the head's training views,
AAM-softmax (or softmax) loss averaged over the views, AdamW or Adam, linear warm-up then
cosine decay of the learning rate (or a step decay x ``lr_decay`` per epoch), gradient-norm
clipping. bfloat16 autocast on CUDA. A fixed ``seed`` gives the same head (same device,
same thread count).

Recipe: the optimiser, LR, weight decay, schedule, warm-up, clipping, batch size, epochs
and masking probability default to ``None`` in ``TrainConfig``, i.e. to the head's own
recipe (``fusion.recipes``: the attention heads train with the DCA authors' recipe, the
clip heads with avfuse's); ``resolve_config`` fills them, values the user set win.

``score_avg`` is not trained: it is calibrated on the dev trials (or, without
them, on balanced random pairs of the training split).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from fusion.batch import FLOAT_FIELDS, EmbeddingBatch, resolve_device
from fusion.evaluation import DevSet, dev_eer, pseudo_dev_set
from fusion.losses import LOSSES, make_loss
from fusion.recipes import OPTIMIZERS, RECIPE_FIELDS, SCHEDULES
from fusion.registry import get_head
from pipeline.core.errors import ConfigError, HeadError, TrainingError
from pipeline.core.progress import progress as progress_


@dataclass
class TrainConfig:
    """Training options (JSON round-trip: ``pipeline.core.config.to_dict``/``from_dict``).

    ``margin``/``scale`` None: the head's AAM defaults (dca/jca/cross_attention
    0.4/64; mean/mlp/multiview 0.2/30, see ``fusion.losses``). ``temperature`` None:
    the head's default (0.1 for dca); only gate heads accept it. The recipe fields
    (``fusion.recipes.RECIPE_FIELDS``) None: the head's recipe (``resolve_config``).
    """

    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    warmup: float | None = None       # fraction of all steps with linear LR warm-up
    grad_clip: float | None = None    # max gradient norm (0: off)
    mask_prob: float | None = None    # P(mask audio or face of a sample), never both
    optimizer: str | None = None      # "adamw" | "adam" (coupled L2 weight decay, the DCA authors')
    schedule: str | None = None       # "cosine" (after warm-up) | "step" (x lr_decay after every epoch)
    lr_decay: float | None = None     # per-epoch LR factor of the "step" schedule
    loss: str = "aam"                 # "aam" | "softmax"
    margin: float | None = None
    scale: float | None = None
    temperature: float | None = None
    head_options: dict = field(default_factory=dict)
    seed: int = 0
    split: str = "train"
    device: str = "auto"              # "auto": cuda when available
    amp: bool = True                  # bfloat16 autocast on CUDA
    patience: int = 5                 # early stopping (epochs without dev improvement; 0: off)
    drop_bad_rows: bool = False
    dev_mode: str = "AVxAV"           # which mode's dev EER drives early stopping

    def validate(self) -> None:
        def ok_or_none(v, test) -> bool:
            return v is None or test(v)

        checks = [
            (ok_or_none(self.epochs, lambda v: v >= 1), "epochs must be >= 1"),
            (ok_or_none(self.batch_size, lambda v: v >= 2), "batch size must be >= 2"),
            (ok_or_none(self.lr, lambda v: v > 0 and math.isfinite(v)), "learning rate must be positive and finite"),
            (ok_or_none(self.weight_decay, lambda v: v >= 0), "weight decay must be >= 0"),
            (ok_or_none(self.grad_clip, lambda v: v >= 0), "grad clip must be >= 0 (0: off)"),
            (ok_or_none(self.mask_prob, lambda v: 0.0 <= v < 1.0), "mask probability must be in [0, 1)"),
            (ok_or_none(self.warmup, lambda v: 0.0 <= v < 1.0), "warmup must be a fraction in [0, 1)"),
            (ok_or_none(self.optimizer, lambda v: v in OPTIMIZERS), f"optimizer must be one of {OPTIMIZERS}"),
            (ok_or_none(self.schedule, lambda v: v in SCHEDULES), f"schedule must be one of {SCHEDULES}"),
            (ok_or_none(self.lr_decay, lambda v: 0.0 < v <= 1.0), "lr_decay must be in (0, 1]"),
            (self.loss in LOSSES, f"loss must be one of {', '.join(LOSSES)}"),
            (self.temperature is None or self.temperature > 0, "temperature must be positive"),
            (self.patience >= 0, "patience must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg, hint="see `avfuse train --help`")


def resolve_config(cfg: TrainConfig, head_name: str) -> TrainConfig:
    """A copy of ``cfg`` with every recipe field that is None taken from the head's recipe."""
    recipe = get_head(head_name).train_recipe()
    out = dataclasses.replace(cfg, head_options=dict(cfg.head_options))
    for k in RECIPE_FIELDS:
        if getattr(out, k) is None:
            setattr(out, k, recipe[k])
    out.validate()
    return out


def recipe_record(cfg: TrainConfig, head_name: str) -> dict:
    """``{"values": resolved recipe, "from_user": [fields the user set], "head_recipe": the head's}``."""
    res = resolve_config(cfg, head_name)
    return {"values": {k: getattr(res, k) for k in RECIPE_FIELDS},
            "from_user": [k for k in RECIPE_FIELDS if getattr(cfg, k) is not None],
            "head_recipe": get_head(head_name).train_recipe()}


def _dims(batch: EmbeddingBatch) -> tuple[int, int]:
    a = batch.audio_clip if batch.audio_clip is not None else batch.audio_seq
    v = batch.face_clip if batch.face_clip is not None else batch.face_seq
    if a is None or v is None:
        raise TrainingError("fusion heads need both audio and face embeddings in the batch")
    return int(a.shape[-1]), int(v.shape[-1])


def _lr_factor(step: int, total: int, warmup: float) -> float:
    w = max(1, int(round(warmup * total)))
    if step < w:
        return (step + 1) / w
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - w) / max(1, total - w))))


def _lr_at(cfg: TrainConfig, step: int, total: int, epoch: int) -> float:
    """The LR of ``step`` (0-based) in ``epoch`` (1-based) of a resolved config."""
    if cfg.schedule == "step":   # the DCA authors': lr x lr_decay^(epoch-1), optional linear warm-up
        w = int(round(cfg.warmup * total))
        ramp = (step + 1) / w if step < w else 1.0
        return cfg.lr * ramp * cfg.lr_decay ** (epoch - 1)
    return cfg.lr * _lr_factor(step, total, cfg.warmup)


def _mask_modalities(batch: EmbeddingBatch, p: float, gen: torch.Generator) -> EmbeddingBatch:
    """With probability ``p`` per sample (that has both), drop audio or face (50/50)."""
    both = batch.has_audio & batch.has_face
    r = torch.rand(len(batch), generator=gen, device=batch.device)
    which = torch.rand(len(batch), generator=gen, device=batch.device) < 0.5
    drop = (r < p) & both
    return batch.masked(drop & which, drop & ~which)


def _views_loss(views, y: torch.Tensor, loss_fn, correct: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """The step's loss: the mean over the views with a present row of each view's loss over its present
    rows; the first view's hits and rows are added to ``correct``/``seen``. Rows are weighed, not
    indexed, and an empty view is left out by weight, not by a branch: nothing here waits for a GPU
    (``benchmarks/train_step_speed.py`` counts the waits per step: 0 for the clip heads)."""
    losses, used = [], []
    for vi, (_view, emb, rows) in enumerate(views):
        w = rows.float()
        loss_v, logits = loss_fn(emb, y, w)
        losses.append(loss_v)
        used.append((w.sum() > 0).float())
        if vi == 0:
            correct += ((logits.argmax(1) == y) & rows).sum()
            seen += rows.sum()
    used_t = torch.stack(used)
    return (torch.stack(losses) * used_t).sum() / used_t.sum().clamp_min(1.0)


def check_finite(loss_sum: torch.Tensor, params, epoch: int, lr: float) -> None:
    """Stop with a ``TrainingError`` when the loss or any weight went NaN/inf (once per epoch:
    a NaN loss makes every later sum NaN, so nothing is missed)."""
    bad_loss = not bool(torch.isfinite(loss_sum))
    bad_w = [p for p in params if not bool(torch.isfinite(p).all())]
    if bad_loss or bad_w:
        parts = (["the loss"] if bad_loss else []) + ([f"{len(bad_w)} weight tensor(s)"] if bad_w else [])
        what = " and ".join(parts)
        raise TrainingError(f"training diverged in epoch {epoch}: {what} became NaN/inf; nothing was written",
                            hint=f"lower --lr (now {lr:g}), e.g. --lr {min(lr / 10, 2e-3):g}")


def build_for_training(head_name: str, cfg: TrainConfig, audio_dim: int, face_dim: int,
                       steps: int | None = None):
    """The head with ``cfg``'s options; ``steps`` (the batch's steps per clip) fills a head's
    ``steps`` option when the user did not set it (the attention heads' time-axis projection)."""
    entry = get_head(head_name)
    options = dict(cfg.head_options)
    if steps is not None and "steps" in entry.options() and "steps" not in options:
        options["steps"] = int(steps)
    if cfg.temperature is not None:
        options["temperature"] = cfg.temperature
    return entry.build(audio_dim, face_dim, **options)


def check_training_data(batch: EmbeddingBatch, labels, need_sequences: bool) -> None:
    """Refuse what no head can train on: wrong types, missing sequences, one identity."""
    if not isinstance(batch, EmbeddingBatch):
        raise TypeError("training data must be an EmbeddingBatch and its labels")
    if need_sequences and not batch.has_sequences:
        raise HeadError("this head needs per-step sequences (audio_seq, face_seq) in the batch",
                        hint="re-extract the cache with --segments/--frames")
    n_ids = int(torch.unique(torch.as_tensor(labels)).numel())
    if n_ids < 2:
        raise TrainingError(f"training needs at least 2 identities, got {n_ids}")
    # every row goes through the head (absent modalities weighed 0, not indexed out): a NaN anywhere
    # would reach the gradients, so it is refused here, once, in chunks
    bad = [f for f in FLOAT_FIELDS if (t := getattr(batch, f)) is not None
           and not all(bool(torch.isfinite(t[s:s + 65536]).all()) for s in range(0, len(t), 65536))]
    if bad:
        raise TrainingError(f"the training embeddings hold NaN/inf values ({', '.join(bad)})",
                            hint="drop those rows first (avfuse train does: --drop-bad-rows)")


def fit_head(batch: EmbeddingBatch, labels, head_name: str, cfg: TrainConfig | None = None,
             dev: DevSet | None = None, *, progress: bool | None = None) -> tuple[Any, list[dict]]:
    """Train (or, for ``score_avg``, calibrate) head ``head_name``; returns ``(head in eval mode, history)``.

    ``batch``/``labels``: the training split (labels: int identity per row).
    ``dev``: None or a ``DevSet``; with one, the dev EER (``cfg.dev_mode``) is computed
    after every epoch, the best epoch's weights are kept, and training stops after
    ``cfg.patience`` epochs without improvement. ``history``: one dict per epoch
    (``epoch, loss, acc, seconds, clips_per_s, lr`` and ``dev_eer``), or for
    ``score_avg`` one calibration dict. ``progress``: tqdm bar on stderr (None: only on a TTY).
    """
    cfg = resolve_config(cfg or TrainConfig(), head_name)
    entry = get_head(head_name)
    device = resolve_device(cfg.device)
    check_training_data(batch, labels, entry.needs_sequences)
    batch, labels = batch.to(device), torch.as_tensor(labels).long().to(device)
    dev = None if dev is None else dev.to(device)
    audio_dim, face_dim = _dims(batch)

    torch.manual_seed(cfg.seed)
    steps = (max(batch.audio_seq.shape[1], batch.face_seq.shape[1]) if entry.needs_sequences
             and batch.audio_seq is not None and batch.face_seq is not None else None)
    head = build_for_training(head_name, cfg, audio_dim, face_dim, steps).to(device)
    if not entry.trainable:
        cal = dev if dev is not None else pseudo_dev_set(batch, labels, seed=cfg.seed)
        info = head.calibrate(cal.batch.float(), cal.enrol_idx, cal.test_idx, cal.labels)
        info["calibrated_on"] = "dev trials" if dev is not None else "random pairs of the training split"
        return head.eval(), [info]

    head.fit_inputs(batch)
    n, n_classes = len(batch), int(labels.max()) + 1
    margin = head.default_margin if cfg.margin is None else cfg.margin
    scale = head.default_scale if cfg.scale is None else cfg.scale
    loss_fn = make_loss(cfg.loss, head.embedding_dim, n_classes, margin, scale).to(device)
    params = list(head.parameters()) + list(loss_fn.parameters())
    opt_cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    opt = opt_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed)
    bs = min(cfg.batch_size, n)
    steps_per_epoch = math.ceil(n / bs)
    total = steps_per_epoch * cfg.epochs
    use_amp = cfg.amp and device.type == "cuda"

    history: list[dict] = []
    best = (math.inf, None, -1)
    bad_epochs, step = 0, 0
    bar = progress_(total=total, desc=f"train {head_name}", unit="batch", enabled=progress)
    try:
        for epoch in range(1, cfg.epochs + 1):
            head.train(); loss_fn.train()
            t0 = time.perf_counter()
            perm = torch.randperm(n, generator=gen, device=device)
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device)
            seen = torch.zeros((), device=device)
            for s in range(0, n, bs):
                idx = perm[s:s + bs]
                if idx.numel() < 2:
                    continue
                mb = batch[idx].float()
                y = labels.index_select(0, idx)
                if cfg.mask_prob > 0:
                    mb = _mask_modalities(mb, cfg.mask_prob, gen)
                for g in opt.param_groups:
                    g["lr"] = _lr_at(cfg, step, total, epoch)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    loss = _views_loss(head.train_views(mb), y, loss_fn, correct, seen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                loss_sum += loss.detach() * idx.numel()
                step += 1
                bar.update(1)
                if step % 20 == 0 or s + bs >= n:
                    el = time.perf_counter() - t0
                    bar.set_postfix(epoch=epoch, loss=f"{float(loss_sum) / max(1, s + idx.numel()):.3f}",
                                    acc=f"{float(correct) / max(1.0, float(seen)):.3f}",
                                    clips_s=f"{(s + idx.numel()) / max(el, 1e-9):.0f}")
            if device.type == "cuda":
                torch.cuda.synchronize()
            check_finite(loss_sum, params, epoch, cfg.lr)
            secs = time.perf_counter() - t0
            rec = {"epoch": epoch, "loss": float(loss_sum) / n, "acc": float(correct) / max(1.0, float(seen)),
                   "seconds": secs, "clips_per_s": n / max(secs, 1e-9), "lr": opt.param_groups[0]["lr"],
                   "updates": step}
            if dev is not None:
                rec["dev_eer"] = dev_eer(head, dev, cfg.dev_mode)
                if rec["dev_eer"] < best[0]:
                    best = (rec["dev_eer"], copy.deepcopy(head.state_dict()), epoch)
                    bad_epochs = 0
                else:
                    bad_epochs += 1
            history.append(rec)
            if dev is not None and cfg.patience and bad_epochs >= cfg.patience:
                break
    finally:
        bar.close()
    if best[1] is not None:
        head.load_state_dict(best[1])
        history[-1]["best_epoch"] = best[2]
    return head.eval(), history


