"""Encoder-decoder LMs (T5, Flan-T5, BART) by config: the prompt with the image tokens is the encoder's input, the
decoder learns and writes the report. A tiny Flan-T5-like checkpoint (tests/helpers/seq2seq.py) under
`lm=flan-t5-base` trains (full, LoRA, 4-bit QLoRA, gradient checkpointing), beam-generates, passes `verify`, and a
trained run round-trips through its checkpoint, evaluate, predict and both exports."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, BartConfig, BartForConditionalGeneration

from r2gen import build
from r2gen.build import load_model, rebuild
from r2gen.evaluate import evaluate
from r2gen.export import export, import_exported
from r2gen.models.lm import SEQ2SEQ, lm_kind
from r2gen.models.prompt import IGNORE, decode_reports, lm_inputs
from r2gen.models.tiny_lm import train_tokenizer
from r2gen.predict import predict
from r2gen.train import train
from r2gen.verify import verify

from .helpers.cli import run_cli
from .helpers.config import SMALL_NO_BUILD, compose_cfg
from .helpers.files import read_jsonl
from .helpers.lm_families import TEXTS
from .helpers.models import batch, train_steps
from .helpers.seq2seq import build_t5

FAST = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def t5(tmp_path_factory) -> str:
    return build_t5(tmp_path_factory.mktemp("t5") / "flan-t5-tiny")


@pytest.fixture(scope="module")
def t5_64(tmp_path_factory) -> str:
    # 64 wide: bitsandbytes quantizes in blocks of 64 values
    return build_t5(tmp_path_factory.mktemp("t5") / "flan-t5-64", d_model=64, d_kv=32, d_ff=128)


def t5_cfg(make_cfg, path, *overrides):
    return make_cfg("lm=flan-t5-base", f"lm.name_or_path={path}", *SMALL_NO_BUILD, *overrides, small=False)


def t5_model(make_cfg, path, *overrides):
    cfg = t5_cfg(make_cfg, path, *overrides)
    torch.manual_seed(0)
    return build.model(cfg)


# --- the model ---------------------------------------------------------------------------------------------------
def test_a_t5_folder_is_read_as_an_encoder_decoder(t5):
    assert lm_kind(t5) == SEQ2SEQ


def test_the_prompt_goes_to_the_encoder_and_the_report_to_the_decoder(make_cfg, t5):
    m = t5_model(make_cfg, t5)
    tok = m.tokenizer
    assert m.encoder_decoder and type(m.lm_model).__name__ == "T5ForConditionalGeneration"
    assert m.lm_proj.out_features == m.lm_model.config.d_model == 32  # the projection is sized from d_model
    # no BOS (T5 has none), and the encoder's input ends with </s>, as T5's tokenizer ends every text
    assert tok.bos_token_id is None and m.prompt.suffix[-1] == tok.eos_token_id
    assert m.prompt.prefix == tok(m.cfg.lm.prompt.text.split("<image>")[0], add_special_tokens=False).input_ids
    b = batch(m)
    b["view_mask"][1, 1] = False  # a ragged batch: the second study has fewer image tokens
    img, mask = m.encode_images(b["images"], b["view_mask"])
    inputs = lm_inputs(m.embed, m.prompt, img, mask, b["target_ids"], b["target_lengths"], True)
    n = len(m.prompt.prefix) + len(m.prompt.suffix)
    assert inputs["attention_mask"].sum(1).tolist() == [n + int(mask[0].sum()), n + int(mask[1].sum())]
    assert inputs["attention_mask"][0].all()  # right-padded: the encoder reads the whole input at once
    # the labels are the reports and their </s> alone (the decoder shifts them right after its start token <pad>)
    for i, report in enumerate(TEXTS[:2]):
        want = tok(report, add_special_tokens=False).input_ids + [tok.eos_token_id]
        got = inputs["labels"][i]
        assert got[got != IGNORE].tolist() == want and (got[len(want):] == IGNORE).all()
    loss = m.lm_model(**inputs).loss
    assert torch.isfinite(loss)


def test_t5_trains_and_beam_generates(make_cfg, t5):
    m = t5_model(make_cfg, t5)
    assert all(p.requires_grad for p in m.lm_model.parameters())  # lm=flan-t5-base trains the whole LM
    b = batch(m)
    losses = train_steps(m, b, steps=8, lr=3e-3)
    assert all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0], losses
    m.eval()
    b["view_mask"][1, 1] = False
    assert m.gen_config.num_beams == 2
    out = m.generate(b["images"], b["view_mask"])
    assert len(out) == 2 and all(isinstance(t, str) for t in out)
    # what generate returns starts with the decoder's start token, which is not part of the report
    img, mask = m.encode_images(b["images"], b["view_mask"])
    ids = m.lm_model.generate(**lm_inputs(m.embed, m.prompt, img, mask, encoder_decoder=True),
                              generation_config=m.gen_config)
    assert (ids[:, 0] == m.lm_model.config.decoder_start_token_id).all()
    assert decode_reports(m.tokenizer, ids, m.clean, encoder_decoder=True) == out


def test_t5_with_lora_trains_only_its_adapters(make_cfg, t5):
    m = t5_model(make_cfg, t5, "lm.freeze=true", "lm.lora.r=4")
    assert type(m.lm_model).__name__ == "PeftModelForSeq2SeqLM"
    trainable = [n for n, p in m.lm_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable} == {"q", "v"}  # lm=flan-t5-base's targets, in both stacks
    assert any(".encoder." in n for n in trainable) and any(".decoder." in n for n in trainable)
    b = batch(m)
    before = {n: p.detach().clone() for n, p in m.lm_model.named_parameters() if p.requires_grad}
    losses = train_steps(m, b, steps=4, lr=1e-2)
    assert losses[-1] < losses[0], losses
    assert any(not torch.equal(before[n], p) for n, p in m.lm_model.named_parameters() if n in before)
    assert len(m.eval().generate(b["images"], b["view_mask"])) == 2


@pytest.mark.parametrize("quant,layer", [("4bit", "Linear4bit"), ("8bit", "Linear8bitLt")])
def test_quantized_t5_with_lora_trains_and_generates(make_cfg, t5_64, quant, layer):
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    m = t5_model(make_cfg, t5_64, f"quant={quant}", "lm.freeze=true", "lm.lora.r=4", "align=shallow")
    assert any(type(mod).__name__ == layer for mod in m.lm_model.modules())
    b = batch(m)
    losses = train_steps(m, b, steps=3, lr=1e-2)
    assert all(np.isfinite(losses)) and losses[-1] != losses[0], losses
    assert len(m.eval().generate(b["images"], b["view_mask"])) == 2


def test_t5_with_gradient_checkpointing_gives_the_same_loss(make_cfg, t5):
    plain, checkpointed = (t5_model(make_cfg, t5, "lm.freeze=true", "lm.lora.r=4", f"lm.gradient_checkpointing={g}")
                           for g in ("false", "true"))
    b = batch(plain)
    losses = []
    for m in (plain, checkpointed):
        torch.manual_seed(1)  # the same dropout masks
        losses.append(m(b))
    torch.testing.assert_close(losses[1], losses[0])
    losses[1].backward()
    assert all(p.grad is not None for n, p in checkpointed.lm_model.named_parameters() if p.requires_grad)


def test_bart_trains_and_generates_too(make_cfg, tmp_path):
    # another encoder-decoder family: BART's tokenizer starts a text with <s> and ends it with </s>, both kept
    from tokenizers import processors

    tok = train_tokenizer(TEXTS, 300, adds_bos=False)
    bos, eos = tok.bos_token_id, tok.eos_token_id
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> $B </s>", special_tokens=[("<s>", bos), ("</s>", eos)])
    config = BartConfig(vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        pad_token_id=tok.pad_token_id, bos_token_id=bos, eos_token_id=eos,
                        decoder_start_token_id=eos, forced_bos_token_id=None, max_position_embeddings=256)
    torch.manual_seed(0)
    BartForConditionalGeneration(config).save_pretrained(tmp_path / "bart")
    tok.save_pretrained(tmp_path / "bart")
    m = t5_model(make_cfg, tmp_path / "bart")
    assert m.prompt.prefix[0] == bos and m.prompt.suffix[-1] == eos
    b = batch(m)
    losses = train_steps(m, b, steps=6, lr=3e-3)
    assert losses[-1] < losses[0], losses
    assert len(m.eval().generate(b["images"], b["view_mask"])) == 2


def test_verify_passes_on_t5(make_cfg, t5):
    r = verify(t5_cfg(make_cfg, t5), lm_path=t5)
    assert r["class"] == "T5ForConditionalGeneration" and r["kind"].startswith("encoder-decoder")
    assert r["hidden_size"] == 32 and r["bos"] == "none" and r["prompt starts with bos"] is False
    assert r["loss (random image tokens)"] > 0 and len(r["generated (untrained)"]) == 2


# --- a trained run: checkpoint, evaluate, predict, export ---------------------------------------------------------
@pytest.fixture(scope="module")
def t5_run(tmp_path_factory, cache_dir, t5):
    out = tmp_path_factory.mktemp("t5_run")
    o = ["lm=flan-t5-base", f"lm.name_or_path={t5}", *SMALL_NO_BUILD, "lm.freeze=true", "lm.lora.r=4",
         "test_after_fit=false"]
    train(compose_cfg("config", o, out, cache_dir))
    return out


def test_a_t5_run_round_trips_through_evaluate_predict_and_the_export(t5_run, tmp_path, cache_dir):
    ckpt = t5_run / "checkpoints" / "last.ckpt"
    o = [f"ckpt={ckpt}", *FAST]
    scores = evaluate(compose_cfg("evaluate", o, tmp_path / "ev", cache_dir), overrides=o)
    assert np.isfinite(scores["Bleu_4"]) and np.isfinite(scores["CIDEr"])
    evaluated = {r["id"]: r["prediction"] for r in read_jsonl(tmp_path / "ev" / "predictions.jsonl")}

    ck, run = rebuild(compose_cfg("evaluate", o, tmp_path / "r", cache_dir), o)
    model = load_model(run, ck).eval()
    assert model.encoder_decoder and type(model.lm_model).__name__ == "PeftModelForSeq2SeqLM"
    lm_keys = [k for k in ck["r2gen"]["keys"] if k.startswith("lm_model.")]
    assert lm_keys and all("lora_" in k for k in lm_keys)  # the frozen T5 is rebuilt from its folder, not stored
    demo = json.loads((cache_dir / "demo" / "annotation.json").read_text())["test"]
    images = [[str(cache_dir / "demo" / "images" / p) for p in e["image_path"]] for e in demo]

    p = [f"ckpt={ckpt}", f"input=[{','.join(images[0])}]", *FAST]
    rows = read_jsonl(predict(compose_cfg("predict", p, tmp_path / "pr", cache_dir), overrides=p))
    assert rows[0]["report"] == evaluated[str(demo[0]["id"])]  # the report evaluate.py scored (as people read it)

    x = [f"ckpt={ckpt}", f"out={tmp_path / 'export'}"]
    folder = export(compose_cfg("export", x, tmp_path / "ex", cache_dir), overrides=x)
    exported = import_exported(folder).R2GenModel.from_pretrained(folder)
    assert type(exported.lm_model).__name__ == "T5ForConditionalGeneration"
    assert exported.generate_reports([images[0]]) == [rows[0]["report"]]  # predict.py's report

    x = [f"ckpt={ckpt}", f"out={tmp_path / 'lm'}", "part=lm"]
    folder = export(compose_cfg("export", x, tmp_path / "ex-lm", cache_dir), overrides=x)
    lm = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    assert AutoTokenizer.from_pretrained(folder)("no effusion").input_ids[-1] == lm.config.eos_token_id
    ids = torch.randint(0, lm.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.lm_model(input_ids=ids, decoder_input_ids=ids[:, :3]).logits
        # the export merges LoRA into the weights (W + BA), which rounds apart from W x + B(A x) by float32 ulps of
        # logits ~10 in size (1.1e-5 seen once): a relative term of a few ulps on top of the absolute one
        torch.testing.assert_close(lm(input_ids=ids, decoder_input_ids=ids[:, :3]).logits, ours, rtol=2e-6, atol=1e-5)
    assert "AutoModelForSeq2SeqLM" in (folder / "README.md").read_text()


@pytest.mark.slow
def test_train_py_then_evaluate_py_with_t5(t5, tmp_path, cache_dir):
    run = tmp_path / "run"
    r = run_cli("train.py", "lm=flan-t5-base", f"lm.name_or_path={t5}", *SMALL_NO_BUILD, "trainer.max_epochs=2",
                f"hydra.run.dir={run}", cache_dir=cache_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = run / "checkpoints" / "best.ckpt"
    assert ckpt.is_file() and (run / "test" / "metrics.json").is_file()
    ev = tmp_path / "eval"
    r = run_cli("evaluate.py", f"ckpt={ckpt}", f"hydra.run.dir={ev}", cache_dir=cache_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((ev / "metrics.json").read_text())
    assert np.isfinite(metrics["Bleu_4"]) and np.isfinite(metrics["CIDEr"])
