"""Per-head training recipes: the defaults ``avfuse train`` uses for a head unless the user says otherwise.

A recipe fixes the ``TrainConfig`` fields in ``RECIPE_FIELDS``. Every such field of a
``TrainConfig`` defaults to ``None``, meaning "the head's recipe"; a value the user
gives (a flag, a ``--config`` JSON, a sweep) wins. ``fusion.trainer.resolve_config``
fills the ``None`` fields from the head's recipe; the checkpoint's meta records the
resolved recipe (``meta["recipe"]``) and which fields came from the user.

* ``CLIP_RECIPE`` (``mean``, ``mlp``, ``multiview``): AdamW, peak LR 2e-3, weight decay
  1e-4, 5 % linear warm-up then cosine decay, batch 256, 30 epochs, gradient-norm clip 5,
  modality masking p = 0.3 (2311.05071 trains with random modality masking; its LR,
  batch and epochs are not in the text we have: these are avfuse's, tuned on the toy corpus).
* ``DCA_RECIPE`` (``cross_attention``, ``jca``, ``dca``): the DCA authors' recipe
  (github.com/praveena2j/DCAforPersonVerification): Adam (coupled L2 weight decay
  2e-5, ``trainer.py:72``), LR 1e-3 multiplied by 0.65 after every epoch (``trainer.py:73``
  StepLR(step_size=test_step=1, gamma=lr_decay=0.65), ``run_train.sh:28-29,36``;
  ``main.py:17-20``), batch 100 (``main.py:11``), no warm-up, no gradient clipping, no
  modality masking (the loader always returns both, ``dataLoader.py:52-59``). Epochs: the
  authors set ``--max_epoch 200`` (``run_train.sh:37``) but the LR 1e-3 x 0.65^(e-1) falls
  below 1e-6 from epoch 17 on, so 20 epochs carry all the updates that matter.

See docs/FIDELITY.md for every difference and why.
"""

from __future__ import annotations

OPTIMIZERS = ("adamw", "adam")
SCHEDULES = ("cosine", "step")

# the TrainConfig fields a recipe fixes (None in a TrainConfig = the head's recipe)
RECIPE_FIELDS = ("optimizer", "lr", "weight_decay", "schedule", "lr_decay", "warmup", "grad_clip",
                 "batch_size", "epochs", "mask_prob")

CLIP_RECIPE = {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 1e-4, "schedule": "cosine", "lr_decay": 0.65,
               "warmup": 0.05, "grad_clip": 5.0, "batch_size": 256, "epochs": 30, "mask_prob": 0.3}

DCA_RECIPE = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 2e-5, "schedule": "step", "lr_decay": 0.65,
              "warmup": 0.0, "grad_clip": 0.0, "batch_size": 100, "epochs": 20, "mask_prob": 0.0}


def full_recipe(recipe: dict | None) -> dict:
    """``recipe`` completed with ``CLIP_RECIPE`` for the fields it does not set."""
    out = dict(CLIP_RECIPE)
    out.update(recipe or {})
    return {k: out[k] for k in RECIPE_FIELDS}


def describe(recipe: dict) -> str:
    """A short one-line form for the heads table, e.g. ``adam 1e-3 x0.65/ep wd 2e-5 b100 20ep``."""
    sched = f"x{recipe['lr_decay']:g}/ep" if recipe["schedule"] == "step" else "cos"
    mask = f" mask {recipe['mask_prob']:g}" if recipe["mask_prob"] else ""
    return (f"{recipe['optimizer']} {recipe['lr']:g} {sched} wd {recipe['weight_decay']:g} "
            f"b{recipe['batch_size']} {recipe['epochs']}ep{mask}")
