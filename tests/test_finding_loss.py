"""`data.finding_loss`: an auxiliary head classifies the labeler's findings of each training report from the image
tokens, so the encoder learns what the report must name (the demo learns left from right with it)."""

import pytest
import torch

from r2gen import build
from r2gen.checkpoint import read_checkpoint
from r2gen.scoring.demo_labeler import label_report
from r2gen.scoring.policy import label_names


def parts(make_cfg, *overrides):
    cfg = make_cfg(*overrides)
    build.prepare_data(cfg.data)
    model = build.model(cfg)
    return cfg, model, build.datamodule(cfg, model)


def test_training_batches_carry_the_labelers_findings_and_the_loss_uses_them(make_cfg):
    cfg, model, dm = parts(make_cfg, "data.finding_loss=0.5")
    names = label_names("demo")
    assert model.finding_head.out_features == len(names) == 7
    b = next(iter(dm.train_dataloader()))
    want = [[float(label_report(r)[k]) for k in names] for r in b["reports"]]
    assert b["finding_labels"].tolist() == want  # the labeler's reading of each report, in label_names order
    assert "finding_labels" not in next(iter(dm.val_dataloader()))  # only training learns them
    model.train()
    losses = model.losses(b)
    assert torch.isclose(losses["loss"], losses["lm"] + 0.5 * losses["finding"])
    losses["loss"].backward()
    assert model.finding_head.weight.grad.abs().sum() > 0
    assert model.encoder.model.conv1[0].weight.grad is not None  # the encoder learns from it too (align=deep)
    assert any(k.startswith("finding_head.") for k in model.persistent_keys())  # saved with the checkpoint


def test_off_builds_no_head_and_needs_a_labeler_when_on(make_cfg):
    _, model, dm = parts(make_cfg, "data.finding_loss=0")
    assert model.finding_head is None and "finding_labels" not in next(iter(dm.train_dataloader()))
    with pytest.raises(ValueError, match="data.finding_loss=1.0 needs a finding labeler"):
        build.model(make_cfg("data.finding_loss=1.0", "data.labeler=null"))


def test_a_format_2_checkpoint_reads_as_without_the_head(demo_run, tmp_path):
    ck = torch.load(demo_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    del ck["r2gen"]["config"]["data"]["finding_loss"]  # written before the key existed
    del ck["hyper_parameters"]["cfg"]["data"]["finding_loss"]
    ck["state_dict"] = {k: v for k, v in ck["state_dict"].items() if not k.startswith("finding_head.")}
    ck["r2gen"] = {**ck["r2gen"], "format": 2}
    path = tmp_path / "format2.ckpt"
    torch.save(ck, path)
    migrated = read_checkpoint(path)
    assert migrated["r2gen"]["format"] == 6 and migrated["r2gen"]["config"]["data"]["finding_loss"] == 0.0
