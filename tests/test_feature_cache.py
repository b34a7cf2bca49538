"""The frozen-feature cache: same loss as encoding images, built once and reused, invalidated by any change to the
images, encoder or transform, never used when the encoder trains, and rebuilt when its file is damaged."""

import json

import numpy as np
import pytest
import torch

from r2gen import build
from r2gen.models.encoder import ImageEncoder
from r2gen.train import train

from .helpers.models import shallow


@pytest.fixture
def count_encoder(monkeypatch):
    """Counts images that go through any ImageEncoder's timm model."""
    calls = {"images": 0}
    tokens = ImageEncoder.tokens

    def counting(self, x):
        calls["images"] += len(x)
        return tokens(self, x)

    monkeypatch.setattr(ImageEncoder, "tokens", counting)
    return calls


def test_cached_and_uncached_training_compute_the_same_loss(make_cfg):
    cfg, model, dm = shallow(make_cfg)
    assert dm.features is not None  # auto: shallow and no augmentation
    base = dm.splits["train"]
    cached = dm.features.dataset("train", base)
    idx = range(cfg.data.batch_size)
    with_images = dm.collator([base[i] for i in idx])  # as the training loader batches them
    with_features = dm.collator([cached[i] for i in idx])
    assert "images" not in with_features and with_features["features"].shape[:2] == with_images["images"].shape[:2]
    model.train()
    losses, grads = [], []
    for batch in (with_images, with_features):
        model.zero_grad()
        loss = model(batch)
        loss.backward()
        losses.append(loss.detach())
        grads.append(model.lm_proj.weight.grad.clone())
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    model.eval()  # and generation reads the same tokens
    assert model.generate(with_images["images"], with_images["view_mask"]) == \
        model.generate(None, with_features["view_mask"], with_features["features"])


def test_training_reads_features_and_a_second_run_reuses_them(make_cfg, count_encoder, tmp_path):
    cfg = make_cfg("align=shallow", "test_after_fit=false", "seed=7")
    build.prepare_data(cfg.data)
    build.lm_path(cfg)  # built beforehand: building it draws random numbers, and the encoder's init must not differ
    folder = build.feature_cache_dir(cfg, "frozen", False)
    before = set(folder.glob("*.npy"))
    first = train(cfg)
    n_images = count_encoder["images"]
    # every image of train and val encoded exactly once: training and validation then read features only
    ann = json.loads(open(cfg.data.annotation).read())
    expected = sum(min(len(e["image_path"]), cfg.data.num_views) for s in ("train", "val") for e in ann[s])
    assert n_images == expected
    assert len(set(folder.glob("*.npy")) - before) == 2  # train and val
    count_encoder["images"] = 0
    second_cfg = make_cfg("align=shallow", "test_after_fit=false", "seed=7")  # same seed: same random encoder
    second_cfg.paths.output_dir = str(tmp_path / "second")  # a new run folder: the first run's checkpoints stay
    second = train(second_cfg)
    assert count_encoder["images"] == 0
    assert second["train/loss"] == pytest.approx(first["train/loss"], rel=1e-5)


def test_loader_without_cache_serves_images_when_the_encoder_trains(make_cfg):
    for align in ("deep", "delta"):
        cfg = make_cfg(f"align={align}")
        assert build.feature_cache_dir(cfg, "full" if align == "deep" else "lora", False) is None
        with pytest.raises(ValueError, match="data.feature_cache=/tmp/x: features can only be cached for a frozen"):
            build.feature_cache_dir(make_cfg(f"align={align}", "data.feature_cache=/tmp/x"),
                                    "full" if align == "deep" else "lora", True)
    cfg, model, dm = shallow(make_cfg, "align=deep")
    assert dm.features is None and model.encoder_mode == "full"
    assert "images" in next(iter(dm.train_dataloader()))
    cfg, model, dm = shallow(make_cfg, "data.augment=true")  # augmented images cannot be cached
    assert dm.features is None
    cfg, model, dm = shallow(make_cfg, "data.feature_cache=off")
    assert dm.features is None
    with pytest.raises(ValueError, match="data.feature_cache=True: choose auto, off or a folder"):
        build.feature_cache_dir(make_cfg("align=shallow", "data.feature_cache=true"), "frozen", False)


def test_change_of_image_size_or_encoder_invalidates(make_cfg, count_encoder):
    _, model, dm = shallow(make_cfg)
    ds = dm.features.dataset("val", dm.splits["val"])
    first, n = ds.path, len(ds.images)

    def encoded(dm) -> tuple[bool, int]:
        """(same file as the first?, images encoded to open it)"""
        before = count_encoder["images"]
        path = dm.features.dataset("val", dm.splits["val"]).path
        return path == first, count_encoder["images"] - before

    _, model2, dm2 = shallow(make_cfg)  # same config, same seed: reused
    assert encoded(dm2) == (True, 0)
    _, _, dm3 = shallow(make_cfg, "data.image_size=48")  # another transform
    assert encoded(dm3) == (False, n)
    with torch.no_grad():  # the same encoder with one weight changed
        next(model2.encoder.parameters()).view(-1)[0] += 1.0
    assert encoded(dm2) == (False, n)
    _, _, dm4 = shallow(make_cfg, "encoder.name=resnet14t")  # another encoder
    assert encoded(dm4) == (False, n)


@pytest.mark.parametrize("damage", ["truncate", "overwrite", "no_metadata", "garbage"])
def test_damaged_cache_file_is_rebuilt_not_used(make_cfg, count_encoder, damage):
    _, model, dm = shallow(make_cfg)
    ds = dm.features.dataset("val", dm.splits["val"])
    good = np.load(ds.path).copy()
    n = count_encoder["images"]  # 0 if an earlier test built the same file
    raw = ds.path.read_bytes()
    if damage == "truncate":  # a run killed mid-write by hand, or a copy cut short
        ds.path.write_bytes(raw[: len(raw) // 2])
    elif damage == "overwrite":  # bytes changed in place: the header still reads
        ds.path.write_bytes(raw[:-64] + b"\x7f" * 64)
    elif damage == "no_metadata":
        ds.path.with_suffix(".json").unlink()
    else:
        ds.path.write_bytes(b"not an npy file")
    again = dm.features.dataset("val", dm.splits["val"])
    assert count_encoder["images"] == n + len(ds.images)  # every image encoded again
    assert np.array_equal(np.load(again.path), good)
    study = dm.splits["val"].entries[0]
    row = list(again.images).index(study["image_path"][0])  # the file's row of that image
    assert torch.equal(again[0]["features"][0], torch.from_numpy(good[row]))


def test_cache_built_ahead_by_the_command_is_what_training_reads(make_cfg, count_encoder, monkeypatch):
    """The command builds the encoder alone (a 7B LM would take minutes to load and play no part), with the weights
    train.py's model gets: a randomly initialised one included, so training finds every file."""
    from r2gen.cache import build_cache

    cfg = make_cfg("align=shallow", "seed=11")
    build.prepare_data(cfg.data)
    build.lm_path(cfg)  # the tiny LM exists before either run, as after any first run

    def no_lm(*args, **kwargs):
        raise AssertionError("the cache command loaded an LM")

    with monkeypatch.context() as mp:  # its own context: undoing it keeps count_encoder's patch
        mp.setattr("r2gen.models.module.load_lm", no_lm)
        files = build_cache(cfg)
    assert set(files) == {"train", "val", "test"} and count_encoder["images"] > 0
    count_encoder["images"] = 0
    train(make_cfg("align=shallow", "seed=11"))  # test_after_fit=true: train, val and test all come from the files
    assert count_encoder["images"] == 0


def test_cache_command_refuses_a_config_that_caches_nothing(make_cfg):
    from r2gen.cache import build_cache

    with pytest.raises(ValueError, match="align=shallow"):
        build_cache(make_cfg("align=deep"))
