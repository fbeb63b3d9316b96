"""Inference-only export of a training checkpoint (how the shipped models are made)."""

from __future__ import annotations

import pytest
import torch

from mrimsm.checkpoint import export_for_inference, load_checkpoint, save_checkpoint
from mrimsm.errors import MrimsmError


def test_export_keeps_ema_drops_optimizer(tmp_path):
    net = torch.nn.Linear(64, 64)
    ema = {k: v + 1.0 for k, v in net.state_dict().items()}
    opt = torch.optim.AdamW(net.parameters())
    net(torch.randn(2, 64)).sum().backward()
    opt.step()
    src = save_checkpoint(
        tmp_path / "last.pt", method="msm", step=7, config={"a": 1}, meta={"image_shape": [8, 8]},
        model=net.state_dict(), ema=ema, optimizer=opt.state_dict(), rng={"x": 1},
    )
    dst = export_for_inference(tmp_path, tmp_path / "slim.pt", {"note": "test"})
    slim = load_checkpoint(dst)
    assert "optimizer" not in slim and "rng" not in slim
    for k, v in ema.items():
        assert torch.equal(slim["model"][k], v) and torch.equal(slim["ema"][k], v)
    assert slim["step"] == 7 and slim["meta"]["export"] == {"source_step": 7, "inference_only": True, "note": "test"}
    assert dst.stat().st_size < 0.6 * src.stat().st_size
    with pytest.raises(MrimsmError):
        export_for_inference(src, src)
