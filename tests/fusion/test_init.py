"""The attention heads' ``init`` option: the DCA authors' xavier-uniform init (``dca_cam.py:56-78``) vs PyTorch's.

The authors call ``init_weights`` at the end of ``CAM.__init__``: every module of CAM whose class
name contains ``Linear`` or ``Conv`` gets a xavier-uniform weight (gain 1) and a zero bias; the
LSTMs (class ``LSTM``) keep PyTorch's init, and so do the attentive statistics pooling and the
Linear(1408, 512) that ``FusionModel`` (``trainer.py:38-50``) builds outside CAM.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from fusion.checkpoint import load_head
from fusion.registry import build_head
from pipeline.core.errors import HeadError

ATTENTION_HEADS = ("cross_attention", "jca", "dca")


def _cam_layers(head) -> list[tuple[str, nn.Module]]:
    """The Linear / Conv modules of what the authors' CAM holds: encoders, sublayers, gates."""
    parts = [("enc_a", head.enc_a), ("enc_v", head.enc_v), ("sublayers", head.sublayers)]
    if head.gate:
        parts += [("gate_a", head.gate_a), ("gate_v", head.gate_v)]
    out = []
    for prefix, part in parts:
        for name, m in part.named_modules():
            if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
                out.append((f"{prefix}.{name}".rstrip("."), m))
    return out


def _fans(w: torch.Tensor) -> tuple[int, int]:
    rf = w[0][0].numel() if w.dim() > 2 else 1
    return w.shape[1] * rf, w.shape[0] * rf


def _xavier_bound(w: torch.Tensor) -> float:
    fan_in, fan_out = _fans(w)
    return 1.0 * math.sqrt(6.0 / (fan_in + fan_out))


@pytest.mark.parametrize("name", ATTENTION_HEADS)
@pytest.mark.parametrize("options", [{"d_model": 64}, {"d_model": 32, "encoder": "conv", "formulation": "softmax",
                                                       "pooling": "separate"}])
def test_xavier_init_is_the_authors(name, options):
    torch.manual_seed(0)
    head = build_head(name, 40, 56, **options)
    assert head.config["init"] == "xavier"            # the default: the authors'
    layers = _cam_layers(head)
    assert len(layers) >= 8
    if options.get("encoder") == "conv":
        assert any(isinstance(m, nn.Conv1d) for _, m in layers)
    for lname, m in layers:
        w = m.weight.detach().double()
        bound = _xavier_bound(w)
        assert w.abs().max() <= bound + 1e-7, lname
        assert torch.count_nonzero(m.bias) == 0, lname
        if w.numel() >= 2000:                          # enough draws to read the distribution
            xavier_std = bound / math.sqrt(3.0)        # = sqrt(2 / (fan_in + fan_out))
            assert float(w.std()) == pytest.approx(xavier_std, rel=0.08), lname
            assert float(w.abs().max()) > 0.95 * bound, lname     # uniform up to the bound
    # outside the authors' CAM: pooling and the output layer keep PyTorch's init (biases not zero)
    pooled = [m for m in head.modules() if isinstance(m, nn.Linear) and all(m is not x for _, x in layers)]
    assert pooled and all(torch.count_nonzero(m.bias) > 0 for m in pooled)
    assert torch.count_nonzero(head.out.bias) > 0
    lstm = [m for m in head.modules() if isinstance(m, nn.LSTM)]
    assert all(torch.count_nonzero(b) > 0 for m in lstm for n, b in m.named_parameters() if n.startswith("bias"))


@pytest.mark.parametrize("name", ATTENTION_HEADS)
def test_torch_init_differs(name):
    torch.manual_seed(0)
    head = build_head(name, 40, 56, d_model=64, init="torch")
    assert head.config["init"] == "torch"
    layers = _cam_layers(head)
    assert all(torch.count_nonzero(m.bias) > 0 for _, m in layers)
    big = [(n, m) for n, m in layers if m.weight.numel() >= 2000]
    assert big
    for lname, m in big:
        w = m.weight.detach().double()
        fan_in, _ = _fans(w)
        torch_std = 1.0 / math.sqrt(3.0 * fan_in)     # kaiming_uniform(a=sqrt(5)): bound 1/sqrt(fan_in)
        xavier_std = _xavier_bound(w) / math.sqrt(3.0)
        assert float(w.std()) == pytest.approx(torch_std, rel=0.08), lname
        assert abs(float(w.std()) - xavier_std) > 0.2 * xavier_std, lname


def test_bad_init_is_a_head_error():
    with pytest.raises(HeadError, match="init must be one of"):
        build_head("dca", 40, 56, init="kaiming")


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    from tests.fusion.synthetic import make_arrays
    from tests.pipeline.train.test_train import write_cache
    arr = make_arrays(n_ids=6, clips_per_id=6, da=24, dv=32, seed=5, p_missing=0.0)
    return write_cache(tmp_path_factory.mktemp("init") / "emb.zarr", arr, np.array(["train"] * len(arr["ids"])))


@pytest.mark.parametrize("extra,want", [([], "xavier"), (["--option", "init=torch"], "torch")])
def test_checkpoint_records_the_init(small_cache, tmp_path, extra, want):
    from pipeline.cli.train import train_cmd
    out = tmp_path / "dca.pt"
    r = CliRunner().invoke(train_cmd, ["--cache", str(small_cache.path), "--out", str(out), "--epochs", "1",
                                       "--quiet", "--head", "dca", "--option", "d_model=16", "--option", "dim=32",
                                       *extra])
    assert r.exit_code == 0, r.output
    head, meta = load_head(out)
    assert head.config["init"] == want
    assert meta["train_config"]["head_options"].get("init", "xavier") == want


def test_a_checkpoint_from_before_the_option_loads_as_torch_init(tmp_path):
    from fusion.checkpoint import save_head
    torch.manual_seed(0)
    head = build_head("jca", 40, 56, d_model=16, dim=32, init="torch")
    del head.config["init"]                            # what a checkpoint written before `init` holds
    save_head(tmp_path / "old.pt", head, {})
    loaded, _ = load_head(tmp_path / "old.pt")
    assert loaded.config["init"] == "torch"
    for k, v in head.state_dict().items():             # the weights are the checkpoint's, whatever the init
        assert torch.equal(loaded.state_dict()[k], v), k
