"""CheXbert from a user's own weights: a tiny random checkpoint in CheXbert's layout, loaded and run offline."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from r2gen.scoring.chexbert import CONDITIONS, BertLabeler, CheXbert
from r2gen.scoring.chexpert import CHEXPERT_LABELS
from r2gen.scoring.policy import Scoring, score_records

WORDS = ["the", "heart", "is", "enlarged", "no", "effusion", "lungs", "are", "clear", "."]


@pytest.fixture(scope="module")
def tiny_chexbert(tmp_path_factory):
    """chexbert.pth as CheXbert saves it (nn.DataParallel: "module." names, under model_state_dict), plus a
    bert-style tokenizer folder; heads rigged so the labels are known: Cardiomegaly positive, Edema uncertain,
    Fracture blank, No Finding blank, every other observation negative."""
    from transformers import BertConfig, BertTokenizer

    d = tmp_path_factory.mktemp("chexbert")
    (d / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizer(str(d / "vocab.txt")).save_pretrained(str(d / "tokenizer"))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=20, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=256, max_position_embeddings=512)
    model = BertLabeler(cfg)
    want = {k: 2 for k in CONDITIONS} | {"Cardiomegaly": 1, "Edema": 3, "Fracture": 0, "No Finding": 0}
    with torch.no_grad():
        for head, k in zip(model.linear_heads, CONDITIONS, strict=True):
            head.weight.zero_()
            head.bias.copy_(torch.nn.functional.one_hot(torch.tensor(want[k]), head.out_features).float())
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 1},
               d / "chexbert.pth")
    return d / "chexbert.pth", d / "tokenizer", model


def test_labels_follow_chexbert_classes(tiny_chexbert):
    ckpt, tok, _ = tiny_chexbert
    labels = CheXbert(ckpt, tok, device="cpu").label(["the heart is enlarged .", "", "lungs are clear " * 400])
    assert len(labels) == 3 and all(set(x) == set(CHEXPERT_LABELS) for x in labels)  # empty and >512 tokens too
    assert labels[0]["Cardiomegaly"] == 1 and labels[0]["Edema"] == -1 and labels[0]["Pleural Effusion"] == 0
    assert labels[0]["Fracture"] is None and labels[0]["No Finding"] is None


def test_runs_the_same_network(tiny_chexbert):
    """Random (not rigged) heads: our forward equals the checkpoint's module run by hand on [CLS] ids [SEP]."""
    ckpt, tok, model = tiny_chexbert
    ck = torch.load(ckpt, weights_only=False)
    with torch.no_grad():
        for i, head in enumerate(model.linear_heads):
            head.weight.normal_()
            ck["model_state_dict"][f"module.linear_heads.{i}.weight"] = head.weight.clone()
    torch.save(ck, ckpt.parent / "random.pth")
    labeler = CheXbert(ckpt.parent / "random.pth", tok, device="cpu")
    model.eval()
    text = "no effusion . the heart is enlarged ."
    ids = torch.tensor([[2, *[5 + WORDS.index(w) for w in text.split()], 3]])
    out = [o.argmax(-1).item() for o in model(ids, torch.ones_like(ids))]
    got = labeler.label([text])[0]
    assert [got[k] for k in CONDITIONS] == [{0: None, 1: 1, 2: 0, 3: -1}[c] for c in out]


def test_scoring_uses_chexbert_when_given(tiny_chexbert):
    ckpt, tok, _ = tiny_chexbert
    s = Scoring(labeler="chexpert", chexbert=str(ckpt), chexbert_tokenizer=str(tok))
    recs = [{"id": "1", "prediction": "the heart is enlarged .", "reference": "lungs are clear ."}]
    scores = score_records(recs, s)
    assert scores["ce_f1/Cardiomegaly"] == 1.0 and scores["ce_f1/Edema"] == 0.0  # uncertain -> negative
    assert replace(s, ce_uncertain="positive").labeler_scores(["a"], ["b"])["ce_f1/Edema"] == 1.0
    assert s.labeler_name.startswith("chexbert ")


def test_missing_weights_or_tokenizer_name_the_key(tiny_chexbert, tmp_path):
    ckpt, tok, _ = tiny_chexbert
    with pytest.raises(FileNotFoundError, match="eval.chexbert=.*no such file"):
        CheXbert(tmp_path / "none.pth", tok)
    with pytest.raises(FileNotFoundError, match="eval.chexbert_tokenizer=None"):
        CheXbert(ckpt, None)
    torch.save({"model_state_dict": {"w": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a CheXbert checkpoint"):
        CheXbert(tmp_path / "other.pth", tok)
