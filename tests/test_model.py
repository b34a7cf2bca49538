"""The LightningModule: projection sizing, what trains in each mode, what a checkpoint keeps, config errors."""

import pytest
import torch
from omegaconf import open_dict

from r2gen import build
from r2gen.models.tiny_lm import build_causal_lm

from .helpers.models import batch

TEXTS = ["the heart is enlarged .", "no pleural effusion .", "small left pneumothorax .", "the lungs are clear ."] * 10


@pytest.fixture(scope="module")
def lm_dirs(tmp_path_factory):
    """Two tiny LLaMAs of different widths, saved and loaded like real checkpoints."""
    root = tmp_path_factory.mktemp("lms")
    out = {}
    for h in (32, 48):
        out[h] = str(build_causal_lm(root / f"h{h}", TEXTS, vocab_size=200, hidden_size=h, intermediate_size=64,
                                     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    return out


@pytest.mark.parametrize("hidden", [32, 48])
def test_projection_sized_from_lm(make_cfg, lm_dirs, hidden):
    m = build.model(make_cfg(), lm_folder=lm_dirs[hidden])
    assert m.lm_proj.in_features == m.encoder.num_features == 512  # resnet10t
    assert m.lm_proj.out_features == hidden == m.lm_model.get_input_embeddings().embedding_dim
    loss = m(batch(m))
    assert torch.isfinite(loss)


def trainable(m, part):
    return {n for n, p in getattr(m, part).named_parameters() if p.requires_grad}


def test_shallow_freezes_encoder_and_checkpoint_keeps_it_only_if_random(make_cfg, lm_dirs):
    m = build.model(make_cfg("align=shallow"), lm_folder=lm_dirs[32])
    assert not trainable(m, "encoder")
    assert trainable(m, "lm_proj") and trainable(m, "lm_model")  # lm.freeze=false in lm=tiny
    m.train()
    assert not m.encoder.training  # frozen encoder stays in eval mode (BatchNorm statistics fixed)
    loss = m(batch(m))
    loss.backward()
    assert all(p.grad is None for p in m.encoder.parameters())
    # random-init encoder cannot be rebuilt from config: the checkpoint must keep it
    assert any(k.startswith("encoder.") for k in m.persistent_keys())


def test_delta_trains_only_encoder_lora(make_cfg, lm_dirs):
    # timm zero-initialises each ResNet block's last BatchNorm, which would block gradients to a random encoder's
    # adapters; a real delta run starts from pretrained weights, so switch that off here
    m = build.model(make_cfg("align=delta", "lm.freeze=true", "+encoder.kwargs.zero_init_last=false"),
                    lm_folder=lm_dirs[32])
    names = trainable(m, "encoder")
    assert names and all("lora_" in n for n in names)
    assert not trainable(m, "lm_model")
    m(batch(m)).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in m.encoder.named_parameters() if "lora_" in n)


def test_lm_lora_on_frozen_lm(make_cfg, lm_dirs):
    m = build.model(make_cfg("lm.freeze=true", "lm.lora.r=4"), lm_folder=lm_dirs[32])
    names = trainable(m, "lm_model")
    assert names and all("lora_" in n for n in names)
    keys = m.persistent_keys()
    lm_keys = [k for k in keys if k.startswith("lm_model.")]
    assert lm_keys and all("lora_" in k for k in lm_keys)  # a frozen LM's base weights are not saved


def test_lora_and_full_lm_training_conflict(make_cfg, lm_dirs):
    with pytest.raises(ValueError, match="lm.lora.r"):
        build.model(make_cfg("lm.lora.r=4"), lm_folder=lm_dirs[32])


def test_generate_kwarg_checked_at_start(make_cfg, lm_dirs):
    cfg = make_cfg()
    with open_dict(cfg):
        cfg.generate.num_beem = 3
    with pytest.raises(ValueError, match="generate.num_beem"):
        build.model(cfg, lm_folder=lm_dirs[32])


def test_generate_returns_one_report_per_study(make_cfg, lm_dirs):
    m = build.model(make_cfg("generate.num_beams=2", "generate.max_new_tokens=5"), lm_folder=lm_dirs[32]).eval()
    b = batch(m, b=2)
    b["view_mask"][1, 1] = False  # one study with a single view
    out = m.generate(b["images"], b["view_mask"])
    assert len(out) == 2 and all(isinstance(t, str) for t in out)


@pytest.mark.parametrize("override,match", [
    ("align.encoder=half", "align.encoder='half'"),
    ("data.view_fusion=max", "data.view_fusion='max'"),
    ("lm.pad_token=foo", "lm.pad_token='foo'"),
    ("encoder.name=resnet_does_not_exist", "not a timm model"),
])
def test_bad_config_values_name_the_key(make_cfg, lm_dirs, override, match):
    with pytest.raises(ValueError, match=match):
        build.model(make_cfg(override), lm_folder=lm_dirs[32])


def test_generation_stops_at_the_models_end_of_turn_tokens(make_cfg, tmp_path):
    """An instruct model's generation config lists end-of-turn stops besides eos (Llama-3's <|eot_id|>, Qwen2's
    <|im_end|>): r2gen's generation stops at them too (decoding drops the token, not what would follow it). An
    ordinary token listed there is not a stop: it may occur inside a report."""
    from transformers import AutoTokenizer, GenerationConfig

    path = build_causal_lm(tmp_path / "lm", TEXTS, vocab_size=200, extra_tokens=["<|eot|>"], hidden_size=32,
                           intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    tok = AutoTokenizer.from_pretrained(path)
    eot, word = tok.convert_tokens_to_ids("<|eot|>"), tok("the heart", add_special_tokens=False).input_ids[0]
    gen = GenerationConfig.from_pretrained(path)
    gen.eos_token_id = [word, eot, tok.eos_token_id]
    gen.save_pretrained(path)
    m = build.model(make_cfg("generate.num_beams=1", "generate.max_new_tokens=8", "generate.min_new_tokens=0"),
                    lm_folder=str(path)).eval()
    assert m.gen_config.eos_token_id == [tok.eos_token_id, eot]  # eos first: what reports are trained to end on

    prompt = tok("the", return_tensors="pt")
    m.gen_config.sequence_bias = [[[eot], 100.0]]  # the model writes <|eot|> first
    out = m.lm_model.generate(**prompt, generation_config=m.gen_config)
    assert out[0, prompt.input_ids.shape[1]:].tolist() == [eot]  # and stops there
    m.gen_config.eos_token_id = tok.eos_token_id  # as before: eos alone
    out = m.lm_model.generate(**prompt, generation_config=m.gen_config)
    assert out.shape[1] - prompt.input_ids.shape[1] == 8  # it wrote on to max_new_tokens
