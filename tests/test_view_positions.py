"""context.view_positions: the vocabulary of view positions, the ids each study (and its prior) carries into the
batch, the learned view marker on exactly the image tokens of each view (concat and mean fusion, images and cached
features), its gradients and checkpoint, and a model with the switch off that is the model without it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from r2gen import build
from r2gen.data.collate import Collator
from r2gen.data.context import Context
from r2gen.data.datamodule import StudyDataset
from r2gen.data.priors import shuffle_priors
from r2gen.data.view_positions import OTHER, UNKNOWN, VIEW_POSITIONS, view_ids
from r2gen.errors import ConfigError, InputError
from r2gen.models.prompt import lm_inputs
from r2gen.models.trainable import count_params

from .helpers.config import SMALL, compose_cfg
from .helpers.models import seeded

PA, AP, LATERAL, LL = (VIEW_POSITIONS.index(v) for v in ("PA", "AP", "LATERAL", "LL"))
ON = ["context.prior_images=true", "context.view_positions=true"]


def test_view_positions_map_to_one_vocabulary_with_unknown_other_and_padding():
    assert VIEW_POSITIONS[UNKNOWN] == "unknown" and VIEW_POSITIONS[OTHER] == "other"
    assert view_ids(["PA", "LATERAL"], 2) == [PA, LATERAL]
    assert view_ids(["ap", " ll "], 2) == [AP, LL]  # matched in any case
    assert view_ids(["AP AXIAL", "XTABLE LATERAL", "PA"], 3) == [OTHER, OTHER, PA]  # MIMIC-CXR's rarer positions
    assert view_ids(["LAO", "SWIMMERS"], 2) == [OTHER, OTHER]
    assert view_ids(None, 2) == [UNKNOWN, UNKNOWN]  # a data set without view positions (IU-Xray)
    assert view_ids(["", None], 2) == [UNKNOWN, UNKNOWN]  # an image whose position is not given
    assert view_ids(["PA"], 3) == [PA, UNKNOWN, UNKNOWN]  # absent views: padded (and masked by the view mask)
    assert view_ids(["LL", "PA", "LATERAL"], 2) == [LL, PA]  # the first num_views images, as the dataset reads
    ctx = Context.from_config({"view_positions": True})
    assert ctx.view_positions and ctx.switched_on == ("view_positions",) and ctx.parts == ()
    with pytest.raises(ConfigError, match=r"context.view_positions='yes': choose true or false"):
        Context.from_config({"view_positions": "yes"})


def _studies() -> list[dict]:
    """Four studies of two subjects, their view positions as the readers give them (none for c, as IU-Xray)."""
    return [
        {"id": "a", "report": "r", "image_path": ["a1", "a2"], "subject_id": "1", "prior_id": None,
         "view_positions": ["PA", "LATERAL"]},
        {"id": "b", "report": "r", "image_path": ["b1"], "subject_id": "1", "prior_id": "a",
         "view_positions": ["AP AXIAL"]},
        {"id": "c", "report": "r", "image_path": ["c1", "c2"], "subject_id": "2", "prior_id": None},
        {"id": "d", "report": "r", "image_path": ["d1", "d2", "d3"], "subject_id": "2", "prior_id": "c",
         "view_positions": ["LL", "PA", "LATERAL"]},
    ]


def _collated(ds: StudyDataset) -> dict:
    """The collated batch of `ds`'s studies, with placeholder images (the ids come from `extras`)."""
    return Collator()([{"id": ds.table.ids[i], "images": torch.zeros(2, 1), "view_mask": torch.ones(2, dtype=bool),
                        "report": "r", **ds.extras(i)} for i in range(len(ds))])


def test_each_study_and_its_prior_carry_view_ids_into_the_batch():
    entries = _studies()
    ds = StudyDataset(entries, Path("."), None, 2, str)
    ds.attach_context(Context(prior_images=True, view_positions=True), entries, str)
    batch = _collated(ds)
    mine = [[PA, LATERAL], [OTHER, UNKNOWN], [UNKNOWN, UNKNOWN], [LL, PA]]
    assert batch["view_positions"].dtype == torch.long and batch["view_positions"].tolist() == mine
    assert batch["prior_view_positions"].tolist() == [[UNKNOWN] * 2, mine[0], [UNKNOWN] * 2, mine[2]]

    shuffled = shuffle_priors(entries, seed=0)  # evaluate.py shuffle_priors=true: b and d trade priors
    ds.attach_context(Context(prior_images=True, view_positions=True), shuffled, str)
    assert [e["prior_id"] for e in shuffled] == [None, "c", None, "a"]
    assert _collated(ds)["prior_view_positions"].tolist() == [[UNKNOWN] * 2, mine[2], [UNKNOWN] * 2, mine[0]]

    plain = StudyDataset(entries, Path("."), None, 2, str)
    plain.attach_context(Context(view_positions=True), entries, str)  # no prior images: no prior ids
    assert "prior_view_positions" not in _collated(plain) and "view_positions" in _collated(plain)
    off = StudyDataset(entries, Path("."), None, 2, str)
    off.attach_context(Context(prior_images=True), entries, str)
    assert "view_positions" not in _collated(off) and "prior_view_positions" not in _collated(off)


def test_shuffled_images_take_their_view_ids_with_them():
    from r2gen.evaluate import shuffle_images

    entries = _studies()
    ds = StudyDataset(entries, Path("."), None, 2, str)
    ds.attach_context(Context(prior_images=True, view_positions=True), entries, str)
    ids_of = {tuple(e["image_path"]): view_ids(e.get("view_positions"), 2) for e in entries}
    shuffle_images(ds, seed=0)
    batch = _collated(ds)
    assert [ids_of[tuple(ds.table.image_paths(i))] for i in range(len(ds))] == batch["view_positions"].tolist()
    assert batch["view_positions"].tolist() != [ids_of[tuple(e["image_path"])] for e in entries]  # they moved
    for i, k in enumerate(ds.prior_index):  # the prior's ids are those of the images its span now shows
        assert batch["prior_view_positions"][i].tolist() == (batch["view_positions"][k].tolist() if k >= 0 else
                                                             [UNKNOWN] * 2)


def _setup(tmp_path: Path, cache_dir: Path, *overrides: str, seed: int = 0):
    """A tiny model on the longitudinal demo (prior and current study, two views each) and its datamodule."""
    return seeded(compose_cfg("config", [*SMALL, "data=demo_longitudinal", *overrides], tmp_path / "run", cache_dir),
                  seed)


def _val_batch(dm) -> dict:
    """The first validation batch, with varied view ids and one absent view in each span: study 0's second view
    and study 1's prior's second view (each study 1 of a subject has its prior, study 0)."""
    batch = next(iter(dm.val_dataloader()))
    assert batch["prior_view_mask"].any(1).tolist()[:2] == [False, True]
    batch["view_positions"][:3] = torch.tensor([[AP, LL], [PA, OTHER], [LATERAL, UNKNOWN]])
    batch["prior_view_positions"][1] = torch.tensor([OTHER, PA])
    batch["view_mask"][0, 1] = False
    batch["prior_view_mask"][1, 1] = False
    return batch


def _marked(model, batch):
    """(visual tokens with a zero marker, with distinct random marker rows, token mask, the marker rows)."""
    model.eval()
    with torch.no_grad():
        tokens, mask = model.image_tokens(batch["images"], batch["view_mask"])
        base, vis_mask = model.visual_tokens(batch, tokens, mask)
        model.view_marker.weight.copy_(torch.randn_like(model.view_marker.weight))
        marked, vis_mask2 = model.visual_tokens(batch, tokens, mask)
    assert torch.equal(vis_mask, vis_mask2)
    return base, marked, vis_mask, model.view_marker.weight.detach()


def test_the_view_marker_reaches_exactly_the_tokens_of_its_view(tmp_path, cache_dir):
    """concat fusion (demo_longitudinal's): view v's tokens get the marker of v's position, in the prior span and
    the current one; tokens of absent views, and a first study's prior span, get nothing."""
    _, model, dm = _setup(tmp_path, cache_dir, *ON)
    assert model.encoder.fusion == "concat"
    batch = _val_batch(dm)
    base, marked, mask, rows = _marked(model, batch)
    n = marked.shape[1] // 2  # [prior span | current span], each V*L tokens
    v = batch["view_mask"].shape[1]
    per = n // v
    diff = (marked - base).unflatten(1, (2, v, per))  # [B, study, V, L, H]
    for span, (ids, views) in enumerate(((batch["prior_view_positions"], batch["prior_view_mask"]),
                                         (batch["view_positions"], batch["view_mask"]))):
        for b in range(len(ids)):
            for k in range(v):
                want = rows[ids[b, k]] if views[b, k] else torch.zeros_like(rows[0])
                torch.testing.assert_close(diff[b, span, k], want.expand(per, -1), rtol=0, atol=1e-6)
    assert not diff[0, 1, 1].any() and not diff[1, 0, 1].any() and not diff[0, 0].any()

    # the LM's input: the embeddings differ exactly at the image tokens it reads, by their marks
    prompt = len(model.prompt.prefix)
    with torch.no_grad():
        ins = [lm_inputs(model.embed, model.prompt, img, mask, batch["target_ids"], batch["target_lengths"])
               for img in (base, marked)]
    delta = ins[1]["inputs_embeds"] - ins[0]["inputs_embeds"]
    for b in range(len(mask)):
        read = int(mask[b].sum())
        changed = delta[b].abs().sum(-1) > 0
        expected = (marked - base)[b][mask[b]]
        seen = changed.nonzero().flatten().tolist()
        assert seen == [prompt + t for t in range(read) if expected[t].abs().sum() > 0]
        torch.testing.assert_close(delta[b, prompt:prompt + read], expected, rtol=0, atol=1e-6)
    assert torch.equal(ins[0]["attention_mask"], ins[1]["attention_mask"])


def test_with_mean_fusion_each_token_gets_the_mean_of_its_present_views_markers(tmp_path, cache_dir):
    _, model, dm = _setup(tmp_path, cache_dir, *ON, "data.view_fusion=mean")
    batch = _val_batch(dm)
    base, marked, _, rows = _marked(model, batch)
    n = marked.shape[1] // 2
    diff = marked - base
    for span, (ids, views) in enumerate(((batch["prior_view_positions"], batch["prior_view_mask"]),
                                         (batch["view_positions"], batch["view_mask"]))):
        for b in range(len(ids)):
            present = [rows[ids[b, k]] for k in range(len(ids[b])) if views[b, k]]
            want = torch.stack(present).mean(0) if present else torch.zeros_like(rows[0])
            torch.testing.assert_close(diff[b, span * n:(span + 1) * n], want.expand(n, -1), rtol=0, atol=1e-6)
    torch.testing.assert_close(diff[0, n:], rows[AP].expand(n, -1), rtol=0, atol=1e-6)  # its LL view is absent


def test_gradients_reach_the_marker_rows_of_the_views_read_and_a_checkpoint_keeps_them(tmp_path, cache_dir):
    cfg, model, dm = _setup(tmp_path, cache_dir, *ON)
    batch = next(iter(dm.train_dataloader()))
    assert (batch["view_positions"] == torch.tensor([PA, LATERAL])).all()  # the demo's two views
    model.train()
    model(batch).backward()
    grad = model.view_marker.weight.grad.abs().sum(-1)
    assert grad[PA] > 0 and grad[LATERAL] > 0
    assert grad[UNKNOWN] == 0  # a first study's prior: all UNKNOWN, all masked, never read
    assert {"view_marker.weight"} <= model.persistent_keys()
    assert count_params(model)["view markers"] == (len(VIEW_POSITIONS) * 32, len(VIEW_POSITIONS) * 32)

    with torch.no_grad():
        model.view_marker.weight.copy_(torch.randn_like(model.view_marker.weight))
    ck = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(ck)  # what a checkpoint keeps
    assert "view_marker.weight" in ck["state_dict"]
    fresh = build.model(cfg, lm_folder=build.lm_path(cfg))
    build.load_weights(fresh, ck)
    assert torch.equal(fresh.view_marker.weight, model.view_marker.weight)
    del ck["state_dict"]["view_marker.weight"]
    with pytest.raises(InputError, match=r"checkpoint lacks 1 weights this config trains \(e.g. \['view_marker"):
        build.load_weights(fresh, ck)


def test_the_marker_trains_with_the_projection():
    from types import SimpleNamespace

    from r2gen.models.module import R2GenModule

    marker = torch.nn.Embedding(len(VIEW_POSITIONS), 4)
    head = [torch.nn.Linear(4, 4), torch.nn.LayerNorm(4)]
    fake = SimpleNamespace(cfg=SimpleNamespace(optim=SimpleNamespace(lr=1.0, encoder_lr=0.1, lm_lr=0.01,
                                                                      weight_decay=0.1, betas=(0.9, 0.99),
                                                                      eps=1e-8, warmup_ratio=0.0,
                                                                      min_lr_ratio=0.1)),
                           finding_head=None, study_marker=None, view_marker=marker, lm_proj=head[0],
                           lm_norm=head[1], encoder=torch.nn.Linear(1, 1), lm_model=torch.nn.Linear(1, 1),
                           trainer=SimpleNamespace(estimated_stepping_batches=10))
    opt = R2GenModule.configure_optimizers(fake)["optimizer"]
    group = next(g for g in opt.param_groups if any(p is marker.weight for p in g["params"]))
    assert group["name"] == "proj" and group["lr"] == 1.0


def test_cached_features_give_the_same_loss_as_images(tmp_path, cache_dir):
    _, model, dm = _setup(tmp_path, cache_dir, *ON, "align=shallow", "encoder.pretrained=false",
                          "data.feature_cache=auto", "data.feature_cache_dtype=float32")
    assert dm.features is not None
    base = dm.splits["train"]
    cached = dm.features.dataset("train", base)
    idx = range(8)
    with_images = dm.collator([base[i] for i in idx])
    with_features = dm.collator([cached[i] for i in idx])
    assert "prior_features" in with_features and torch.equal(with_features["prior_view_positions"],
                                                              with_images["prior_view_positions"])
    with torch.no_grad():
        model.view_marker.weight.copy_(torch.randn_like(model.view_marker.weight))
    model.eval()
    losses = [model(b) for b in (with_images, with_features)]
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-5)
    without = {k: v for k, v in with_features.items() if k != "prior_view_positions"}
    with pytest.raises(InputError, match=r"this model reads each study's prior_images, view_positions"):
        model(without)


def test_a_model_with_the_switch_off_is_the_model_without_it(tmp_path, cache_dir):
    """Off: no new parameter, nothing new in the batch. On: the same weights, the same random stream after building,
    and with its marker still zero the same loss and reports as off."""
    _, off, off_dm = _setup(tmp_path / "off", cache_dir, "context.prior_images=true")
    rng_off = torch.random.get_rng_state()
    _, on, on_dm = _setup(tmp_path / "on", cache_dir, *ON)
    rng_on = torch.random.get_rng_state()
    assert off.view_marker is None and "view markers" not in count_params(off)
    assert not any(k.startswith("view_marker") for k in off.state_dict())
    assert torch.equal(rng_off, rng_on)  # LoRA's initialisation and dropout would draw the same numbers
    off_state, on_state = off.state_dict(), on.state_dict()
    assert set(on_state) - set(off_state) == {"view_marker.weight"}
    assert all(torch.equal(off_state[k], on_state[k]) for k in off_state)
    plain = next(iter(off_dm.val_dataloader()))
    batch = next(iter(on_dm.val_dataloader()))
    assert "view_positions" not in plain and "prior_view_positions" not in plain
    off.eval()
    on.eval()
    with torch.no_grad():
        assert torch.equal(off(plain), on(batch))
        assert off.generate(plain["images"], plain["view_mask"], batch=plain) == \
            on.generate(batch["images"], batch["view_mask"], batch=batch)


@pytest.mark.slow
def test_a_run_with_view_positions_trains_evaluates_and_keeps_the_marker(tmp_path, cache_dir):
    from r2gen.evaluate import evaluate
    from r2gen.export import export
    from r2gen.train import train

    cfg = compose_cfg("config", [*SMALL, "data=demo_longitudinal", *ON], tmp_path / "run", cache_dir)
    metrics = train(cfg)
    assert "test/Bleu_4" in metrics and all(torch.isfinite(torch.tensor(float(v))) for v in metrics.values())
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    ck = torch.load(best, map_location="cpu", weights_only=False)
    stored = ck["state_dict"]["view_marker.weight"]
    assert stored.shape == (len(VIEW_POSITIONS), 32) and stored[[PA, LATERAL]].abs().sum() > 0  # it trained
    assert not stored[[AP, LL, OTHER]].any()  # the demo has PA and LATERAL views only
    ck, run = build.rebuild(compose_cfg("evaluate", [f"ckpt={best}"], tmp_path / "re", cache_dir), [])
    assert torch.equal(build.load_model(run, ck).view_marker.weight, stored)  # the round trip keeps it

    ev = [f"ckpt={best}", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "shuffle_priors=true",
          "eval.bootstrap.resamples=0"]
    scores = evaluate(compose_cfg("evaluate", ev, tmp_path / "ev", cache_dir), overrides=ev)
    assert "Bleu_4" in scores and json.loads((tmp_path / "ev" / "metrics.json").read_text())["shuffle_priors"]
    ex = [f"ckpt={best}", f"out={tmp_path / 'export'}"]
    with pytest.raises(ConfigError, match=r"context.view_positions=true: .*export part=lm, or use the checkpoint "
                                          r"with evaluate.py"):
        export(compose_cfg("export", ex, tmp_path / "ex", cache_dir), overrides=ex)
    assert not (tmp_path / "export").exists()

