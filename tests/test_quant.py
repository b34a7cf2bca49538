"""Quantized backbones on the CPU (bitsandbytes): QLoRA (4-bit) and 8-bit + LoRA train and generate, a checkpoint
keeps only adapters and projection, and an evaluate-style rebuild of a 4-bit model gives the same outputs."""

import logging

import pytest
import torch
from omegaconf import OmegaConf

from r2gen.build import load_weights, model
from r2gen.checkpoint import read_checkpoint
from r2gen.models.tiny_lm import build_causal_lm

from .helpers.models import batch, train_steps

TEXTS = ["the heart is enlarged .", "no pleural effusion .", "small left pneumothorax .", "the lungs are clear ."] * 10
QLORA = ["lm.freeze=true", "lm.lora.r=4", "align=shallow"]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    # 64 wide: bitsandbytes quantizes in blocks of 64 values
    return str(build_causal_lm(tmp_path_factory.mktemp("qlm") / "llama", TEXTS, vocab_size=200, hidden_size=64,
                               intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))


@pytest.fixture(autouse=True)
def quiet_int8():  # bitsandbytes logs a cast warning on every int8 matmul of non-float16 inputs
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def lora_weights(m):
    return {n: p.detach().clone() for n, p in m.lm_model.named_parameters() if "lora_" in n}


@pytest.mark.parametrize("quant,layer", [("4bit", "Linear4bit"), ("8bit", "Linear8bitLt")])
def test_quantized_lm_with_lora_trains_and_generates(make_cfg, llama_dir, quant, layer):
    m = model(make_cfg(f"quant={quant}", *QLORA), lm_folder=llama_dir)
    assert any(type(mod).__name__ == layer for mod in m.lm_model.modules())
    trainable = [n for n, p in m.lm_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)  # k-bit preparation froze the rest

    before = lora_weights(m)
    b = batch(m)
    losses = train_steps(m, b, steps=3, lr=1e-2)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] != losses[0], losses
    after = lora_weights(m)
    assert any(not torch.equal(before[n], after[n]) for n in before)  # the adapters learned

    out = m.eval().generate(b["images"], b["view_mask"])
    assert len(out) == 2 and all(isinstance(t, str) for t in out)


def test_4bit_checkpoint_keeps_adapters_and_rebuilds(make_cfg, llama_dir, tmp_path):
    m = model(make_cfg("quant=4bit", *QLORA), lm_folder=llama_dir)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    b = batch(m)
    for _ in range(2):
        loss = m(b)
        opt.zero_grad()
        loss.backward()
        opt.step()

    ck = {"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams)}
    m.on_save_checkpoint(ck)  # what Lightning's checkpoint gets
    lm_keys = [k for k in ck["state_dict"] if k.startswith("lm_model.")]
    assert lm_keys and all("lora_" in k for k in lm_keys)  # no quantized base weights in the checkpoint
    assert any(k.startswith("lm_proj.") for k in ck["state_dict"])
    path = tmp_path / "qlora.ckpt"
    torch.save(ck, path)

    ck = read_checkpoint(path)  # evaluate.py's path: the stored config rebuilds the 4-bit LM, weights fill in
    m2 = model(OmegaConf.create(ck["hyper_parameters"]["cfg"]), lm_folder=llama_dir)
    load_weights(m2, ck)
    assert any(type(mod).__name__ == "Linear4bit" for mod in m2.lm_model.modules())
    m.eval(), m2.eval()
    with torch.no_grad():
        assert torch.allclose(m(b), m2(b))
    assert m.generate(b["images"], b["view_mask"]) == m2.generate(b["images"], b["view_mask"])


def test_quantization_needs_a_frozen_lm(make_cfg, llama_dir):
    with pytest.raises(ValueError, match=r"quant.*lm\.freeze=false"):
        model(make_cfg("quant=4bit"), lm_folder=llama_dir)  # lm=tiny trains its LM fully


def test_unknown_quant_key_is_named(make_cfg, llama_dir):
    with pytest.raises(ValueError, match="quant.bnb_4bit_quant_typ"):
        model(make_cfg("quant=4bit", "lm.freeze=true", "+quant.bnb_4bit_quant_typ=nf4"), lm_folder=llama_dir)
