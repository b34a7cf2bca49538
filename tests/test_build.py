"""From config to parts: where the LM comes from, and data set checks that fail before training starts."""

import json
from pathlib import Path

import pytest
from omegaconf import open_dict

from r2gen import build
from r2gen.data.datamodule import ReportDataModule
from r2gen.models.tiny_lm import build_causal_lm


def test_tiny_lm_is_built_once_under_the_cache(make_cfg, cache_dir):
    cfg = make_cfg()
    build.prepare_data(cfg.data)
    path = Path(build.lm_path(cfg))
    assert path.parent == cache_dir / "lm" and path.name.startswith("tiny-llama-")
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()
    stamp = (path / "config.json").stat().st_mtime_ns
    assert Path(build.lm_path(cfg)) == path and (path / "config.json").stat().st_mtime_ns == stamp


def test_building_the_tiny_lm_leaves_the_run_s_random_stream_alone(make_cfg, tmp_path):
    """A first run (which builds the LM) initialises and shuffles exactly like every later run."""
    import torch

    cfg = make_cfg("lm.build.vocab_size=280")  # a recipe no other test built: this call builds it
    with open_dict(cfg):
        cfg.paths.cache_dir = str(tmp_path)
        cfg.lm.name_or_path = str(tmp_path / "lm" / "tiny-llama")
    build.prepare_data(cfg.data)
    torch.manual_seed(3)
    build.lm_path(cfg)  # builds
    after_build = torch.rand(4)
    torch.manual_seed(3)
    build.lm_path(cfg)  # finds it built
    assert torch.equal(torch.rand(4), after_build)


def test_name_or_path_outside_the_cache_is_loaded_as_given(make_cfg, tmp_path):
    own = build_causal_lm(tmp_path / "my-lm", ["a b c d"] * 20, vocab_size=100, hidden_size=16,
                          intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    cfg = make_cfg(f"lm.name_or_path={own}")
    assert build.lm_path(cfg) == str(own)
    assert build.lm_path(make_cfg("lm.name_or_path=org/some-hub-model")) == "org/some-hub-model"


def write_annotation(root: Path, n_missing: int = 0) -> None:
    from PIL import Image

    (root / "images").mkdir(parents=True)
    ann = {}
    for split in ("train", "val", "test"):
        ann[split] = []
        for i in range(3):
            sid = f"{split}{i}"
            paths = [f"{sid}/0.png", f"{sid}/1.png"]
            (root / "images" / sid).mkdir()
            for p in paths:
                Image.new("L", (16, 16)).save(root / "images" / p)
            ann[split].append({"id": sid, "report": "No effusion.", "image_path": paths})
    for e in ann["val"][:n_missing]:
        (root / "images" / e["image_path"][1]).unlink()
    (root / "annotation.json").write_text(json.dumps(ann))


def datamodule_for(make_cfg, root: Path) -> ReportDataModule:
    cfg = make_cfg()
    with open_dict(cfg):
        cfg.data.demo = None
        cfg.data.root = str(root)
    return ReportDataModule(cfg.data, 16, (0.5,) * 3, (0.5,) * 3, augment=False)


def test_missing_images_are_all_counted_at_setup(make_cfg, tmp_path):
    write_annotation(tmp_path / "ds", n_missing=2)
    dm = datamodule_for(make_cfg, tmp_path / "ds")
    with pytest.raises(FileNotFoundError, match=r"2 image\(s\) not found .*val id val0: .*val0/1.png"):
        dm.setup()


def test_good_tree_loads_batches(make_cfg, tmp_path):
    write_annotation(tmp_path / "ds")
    dm = datamodule_for(make_cfg, tmp_path / "ds")
    b = next(iter(dm.train_dataloader()))
    assert b["images"].shape[1:] == (2, 3, 16, 16) and b["view_mask"].all()
    assert b["reports"][0] == "no effusion ."  # cleaned the R2Gen way (data.clean=iu_xray)


def test_missing_annotation_names_the_key(make_cfg, tmp_path):
    dm = datamodule_for(make_cfg, tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="data.annotation"):
        dm.setup()
