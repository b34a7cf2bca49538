"""Prompt assembly: what the LM sees and what it is asked to predict."""

import pytest
import torch
from torch import nn

from r2gen.models.prompt import IGNORE, Prompt, ReportTargets, assemble
from r2gen.models.tiny_lm import train_tokenizer

TEXTS = ["the heart is enlarged .", "no pleural effusion .", "image report", "small left pneumothorax ."] * 20


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, 200)


@pytest.fixture(scope="module")
def tok_no_bos():
    return train_tokenizer(TEXTS, 200, {"bos_token": None, "eos_token": "</s>", "pad_token": None, "unk_token": None})


def embed_fn(vocab: int, h: int = 8):
    emb = nn.Embedding(vocab + 1, h)
    return lambda ids: emb(ids)


def test_labels_cover_only_report_and_eos(tok):
    p = Prompt(tok, "image <image> report", add_bos="auto")
    assert p.prefix[0] == tok.bos_token_id  # auto adds BOS when the tokenizer has one
    reports = ["the heart is enlarged .", "no pleural effusion . small left pneumothorax ."]
    t = ReportTargets(tok, max_tokens=64).tensors(reports)  # what the collator puts in a batch
    targets = [ids[:n].tolist() for ids, n in zip(t["target_ids"], t["target_lengths"], strict=True)]
    img = torch.randn(2, 3, 8)
    inputs, mask, labels = assemble(embed_fn(len(tok)), p, img, torch.ones(2, 3, dtype=torch.bool),
                                    t["target_ids"], t["target_lengths"], "right")
    n_ctx = len(p.prefix) + 3 + len(p.suffix)
    for i, r in enumerate(reports):
        want = tok(r, add_special_tokens=False).input_ids + [tok.eos_token_id]
        got = labels[i][labels[i] != IGNORE].tolist()
        assert got == want
        assert (labels[i, :n_ctx] == IGNORE).all()  # prompt and image never trained on
        assert labels[i, n_ctx : n_ctx + len(want)].tolist() == want
        assert mask[i].sum() == n_ctx + len(want)
    # dynamic padding: as long as the longest sample, right-padded, padding masked and ignored
    assert inputs.shape[1] == n_ctx + len(targets[1])
    short = n_ctx + len(targets[0])
    assert mask[0, :short].all() and not mask[0, short:].any()
    assert (labels[0, short:] == IGNORE).all()
    # the image tokens sit right after the prefix, unchanged
    torch.testing.assert_close(inputs[0, len(p.prefix) : len(p.prefix) + 3], img[0])


def test_truncation_keeps_eos(tok):
    (t,) = ReportTargets(tok, max_tokens=5)(["the heart is enlarged . no pleural effusion . small left pneumothorax ."])
    assert len(t) == 5 and t[-1] == tok.eos_token_id


def test_generation_inputs_are_left_padded_and_absent_views_dropped(tok):
    p = Prompt(tok, "image <image> report")
    img = torch.randn(2, 4, 8)  # 2 views x 2 tokens each (concat fusion)
    img_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)  # study 2 has one view
    inputs, mask = assemble(embed_fn(len(tok)), p, img, img_mask, padding_side="left")
    full = len(p.prefix) + 4 + len(p.suffix)
    assert inputs.shape[1] == full
    assert mask[0].all()
    assert mask[1].tolist() == [0, 0] + [1] * (full - 2)  # left padding: prompts end together
    # study 2: its two real image tokens follow its prefix, after the padding
    start = 2 + len(p.prefix)
    torch.testing.assert_close(inputs[1, start : start + 2], img[1, :2])


def test_auto_bos_follows_the_tokenizer():
    # a tokenizer that names a BOS but never starts a text with it (GPT-2, BLOOM, Baichuan2, Phi-3): auto adds none,
    # named and true add it; one that starts texts with it (LLaMA): auto adds it once, also after a template wrote it
    names = train_tokenizer(TEXTS, 200, adds_bos=False)
    assert names("image").input_ids[:1] != [names.bos_token_id]
    assert Prompt(names, "image <image> report").prefix == names("image ", add_special_tokens=False).input_ids
    for add_bos in ("named", True):
        assert Prompt(names, "image <image> report", add_bos=add_bos).prefix[0] == names.bos_token_id
    adds = train_tokenizer(TEXTS, 200)
    assert adds("image").input_ids[0] == adds.bos_token_id
    assert Prompt(adds, "<s>image <image> report").prefix.count(adds.bos_token_id) == 1
    assert Prompt(adds, "image <image> report", add_bos=False).prefix[:1] != [adds.bos_token_id]
    with pytest.raises(ValueError, match="choose auto .*, named"):
        Prompt(adds, "<image>", add_bos="yes")


def test_encoder_prompt_ends_as_the_tokenizer_ends_a_text():
    # T5's tokenizer appends </s> to every text: an encoder-decoder's prompt (its encoder input) ends with it, a
    # decoder-only LM's prompt never does (the report follows)
    from tokenizers import processors

    tok = train_tokenizer(TEXTS, 200, adds_bos=False)
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tok.eos_token_id)])
    assert Prompt(tok, "a <image> b", encoder_decoder=True).suffix[-1] == tok.eos_token_id
    assert tok.eos_token_id not in Prompt(tok, "a <image> b").suffix
    assert Prompt(tok, "a <image> b", encoder_decoder=True).prefix == tok("a ", add_special_tokens=False).input_ids


def test_tokenizer_without_bos(tok_no_bos):
    assert tok_no_bos.bos_token_id is None
    p = Prompt(tok_no_bos, "image <image> report", add_bos="auto")
    assert p.prefix == tok_no_bos("image ", add_special_tokens=False).input_ids
    with pytest.raises(ValueError, match="no BOS"):
        Prompt(tok_no_bos, "<image>", add_bos=True)


def test_prompt_needs_one_image_marker(tok):
    with pytest.raises(ValueError, match="exactly once"):
        Prompt(tok, "no marker here")
    with pytest.raises(ValueError, match="chat template"):
        Prompt(tok, "<image>", template="chat")
