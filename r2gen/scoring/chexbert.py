"""CheXbert (Smit et al. 2020) as an alternative CheXpert labeler, run from weights the user already has.

Nothing is downloaded: `eval.chexbert` is the path of CheXbert's released `chexbert.pth` and
`eval.chexbert_tokenizer` a local folder holding the bert-base-uncased tokenizer (vocab.txt or tokenizer.json). The network is
stanfordmlgroup/CheXbert `src/models/bert_labeler.py`: a BertModel, dropout, and 14 linear heads on the [CLS]
state, 13 with 4 classes (0 blank, 1 positive, 2 negative, 3 uncertain: `constants.CLASS_MAPPING`) and one for
No Finding with 2 (blank, positive), in the order of `constants.CONDITIONS`. The BERT shape is read from the
checkpoint's tensors (layers, width, vocabulary; one attention head per 64 channels, as every BERT size has), so
`BertModel` is built from a config and the checkpoint supplies every weight. Reports are prepared as
`src/bert_tokenizer.py` does: whitespace runs to one space, `tokenizer.tokenize`, [CLS] ... [SEP], cut to 512
tokens; the prediction is each head's argmax (`src/label.py`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from r2gen.errors import InputError, MissingFileError
from r2gen.scoring.chexpert import NEGATIVE, POSITIVE, UNCERTAIN

CONDITIONS = ("Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation",
              "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
              "Support Devices", "No Finding")
CLASS_TO_LABEL = {0: None, 1: POSITIVE, 2: NEGATIVE, 3: UNCERTAIN}
MAX_TOKENS = 512


class BertLabeler(nn.Module):
    """CheXbert's `bert_labeler`, with its parameter names (`bert.*`, `linear_heads.<i>.*`)."""

    def __init__(self, config):
        super().__init__()
        from transformers import BertModel

        self.bert = BertModel(config)
        self.dropout = nn.Dropout(0.1)
        self.linear_heads = nn.ModuleList([nn.Linear(config.hidden_size, 4) for _ in range(13)]
                                          + [nn.Linear(config.hidden_size, 2)])

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        cls = self.dropout(self.bert(ids, attention_mask=mask)[0][:, 0])  # [B, H]
        return [head(cls) for head in self.linear_heads]  # 14 x [B, 4 or 2]


def bert_config(state: dict[str, torch.Tensor]):
    """A BertConfig with the shape of the weights in `state` (CheXbert names, no "module." prefix)."""
    from transformers import BertConfig

    vocab, hidden = state["bert.embeddings.word_embeddings.weight"].shape
    layers = 1 + max(int(m[1]) for k in state if (m := re.match(r"bert\.encoder\.layer\.(\d+)\.", k)))
    return BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=max(1, hidden // 64),
                      intermediate_size=state["bert.encoder.layer.0.intermediate.dense.weight"].shape[0],
                      max_position_embeddings=state["bert.embeddings.position_embeddings.weight"].shape[0],
                      type_vocab_size=state["bert.embeddings.token_type_embeddings.weight"].shape[0])


class CheXbert:
    """`CheXbert(checkpoint, tokenizer_dir).label(texts)` -> per report {label: 1/0/-1/None}, as `label_report`."""

    def __init__(self, checkpoint: str | Path, tokenizer_dir: str | Path | None, device: str | None = None,
                 batch_size: int = 16):
        from transformers import BertTokenizer

        path = Path(str(checkpoint)).expanduser()
        if not path.is_file():
            raise MissingFileError(f"eval.chexbert={checkpoint}: no such file (CheXbert's chexbert.pth; "
                                   "set eval.chexbert=null for the built-in rule-based labeler)")
        tok_dir = Path(str(tokenizer_dir)).expanduser() if tokenizer_dir else None
        if tok_dir is None or not any((tok_dir / f).is_file() for f in ("vocab.txt", "tokenizer.json")):
            raise MissingFileError(f"eval.chexbert_tokenizer={tokenizer_dir}: no vocab.txt or tokenizer.json there; "
                                   "give the folder of a local bert-base-uncased tokenizer (CheXbert's)")
        ck = torch.load(path, map_location="cpu", weights_only=False)
        state = ck.get("model_state_dict", ck) if isinstance(ck, dict) else None
        if not isinstance(state, dict) or not any(k.endswith("linear_heads.13.weight") for k in state):
            raise InputError(f"eval.chexbert={checkpoint}: not a CheXbert checkpoint (no model_state_dict with "
                             "14 linear_heads)")
        state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from nn.DataParallel
        state.pop("bert.embeddings.position_ids", None)  # a buffer older transformers saved
        self.model = BertLabeler(bert_config(state))
        self.model.load_state_dict(state, strict=True)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device).eval()
        self.tokenizer = BertTokenizer.from_pretrained(str(tok_dir))
        self.batch_size = batch_size
        self._cache: dict[str, dict[str, int | None]] = {}

    def _ids(self, text: str) -> list[int]:
        tokens = self.tokenizer.tokenize(" ".join(text.split()))
        t = self.tokenizer
        if not tokens:
            return [t.cls_token_id, t.sep_token_id]
        ids = [t.cls_token_id, *t.convert_tokens_to_ids(tokens), t.sep_token_id]
        return ids if len(ids) <= MAX_TOKENS else ids[:MAX_TOKENS - 1] + [t.sep_token_id]

    @torch.no_grad()
    def label(self, texts: Sequence[str]) -> list[dict[str, int | None]]:
        todo = sorted({t for t in texts if t not in self._cache}, key=len)
        for i in range(0, len(todo), self.batch_size):
            chunk = todo[i:i + self.batch_size]
            seqs = [torch.tensor(self._ids(t)) for t in chunk]
            ids = nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=0).to(self.device)  # [B, L]
            mask = (torch.arange(ids.shape[1], device=self.device)[None] < torch.tensor(
                [len(s) for s in seqs], device=self.device)[:, None]).long()
            classes = torch.stack([o.argmax(-1) for o in self.model(ids, mask)], 1).tolist()  # [B, 14]
            for t, row in zip(chunk, classes, strict=True):
                self._cache[t] = {k: CLASS_TO_LABEL[c] for k, c in zip(CONDITIONS, row, strict=True)}
        return [dict(self._cache[t]) for t in texts]
