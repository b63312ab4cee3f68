"""``torch.load(weights_only=True)`` with one-line refusals: the one checkpoint reader.

avfuse never unpickles code. Whatever ``torch.load`` refuses (a pickled module or
other object, a truncated or non-torch file) becomes the caller's typed error,
naming the file and saying what it is not, without PyTorch's advice to lower the
guard (``weights_only=False``).
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

from pipeline.core.errors import AvfuseError


def load_weights_only(path: str | Path, error: type[AvfuseError], *, what: str = "checkpoint",
                      hint: str, map_location: str = "cpu"):
    """The object ``torch.save`` wrote at ``path`` (tensors and plain containers only)."""
    import torch

    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        text = " ".join(str(e).split())
        glob = (re.search(r"Unsupported global: (GLOBAL \S+)", text)
                or re.search(r"unsupported (GLOBAL \S+)", text, re.IGNORECASE))
        if glob:
            raise error(f"not a safe {what}: not a plain state dict but a pickled object ({glob.group(1)}); "
                        "avfuse never unpickles code", path=path, hint=hint) from None
        why = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", text)
        raise error(f"cannot read {what}: not a torch.save file, or a damaged one "
                    f"({_scrub(why.group(1) if why else text)[:160]})", path=path, hint=hint) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError, TypeError,
            AttributeError, IndexError, MemoryError, OverflowError) as e:
        first = _scrub(str(e).splitlines()[0])[:200] if str(e) else "empty"
        raise error(f"cannot read {what} ({type(e).__name__}: {first})", path=path, hint=hint) from None


def _scrub(text: str) -> str:
    """``text`` without PyTorch's sentences that advise lowering the guard (``weights_only``)."""
    keep = [x for x in re.split(r"(?<=[.!?])\s+", text) if "weights_only" not in x and "unpickl" not in x.lower()]
    return " ".join(keep).strip() or "refused by the safe loader"
