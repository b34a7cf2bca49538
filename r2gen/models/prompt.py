"""Build the LM input around the image tokens: `[bos] prefix <image tokens> suffix [report eos]`.

Training batches are right-padded to the longest sequence in the batch and labelled -100 everywhere but the
report and its eos; generation batches are left-padded so every study's last prompt token sits at the end.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from r2gen.errors import ConfigError

IMAGE = "<image>"  # where the image tokens go in `lm.prompt.text`
IGNORE = -100


class Prompt:
    """Token ids of the text around the image, from `lm.prompt` (plain text or the tokenizer's chat template)."""

    def __init__(self, tokenizer, text: str, template: str = "plain", add_bos: str | bool = "auto"):
        if text.count(IMAGE) != 1:
            raise ConfigError(f"lm.prompt.text={text!r}: must contain {IMAGE} exactly once (where the image goes)")
        if template == "chat":
            if not getattr(tokenizer, "chat_template", None):
                raise ConfigError("lm.prompt.template=chat but the tokenizer has no chat template: use plain")
            text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
        elif template != "plain":
            raise ConfigError(f"lm.prompt.template={template!r}: choose plain or chat")
        before, after = text.split(IMAGE)
        bos = tokenizer.bos_token
        if add_bos == "auto":  # prepend BOS if the tokenizer has one and the template did not already write it
            add_bos = bos is not None and not before.startswith(bos)
        elif not isinstance(add_bos, bool):
            raise ConfigError(f"lm.add_bos={add_bos!r}: choose auto, true or false")
        if add_bos and tokenizer.bos_token_id is None:
            raise ConfigError("lm.add_bos=true but the tokenizer has no BOS token: use auto or false")
        enc = lambda s: tokenizer(s, add_special_tokens=False).input_ids if s else []  # noqa: E731
        self.prefix = ([tokenizer.bos_token_id] if add_bos else []) + enc(before)
        self.suffix = enc(after)
        self.eos_id = tokenizer.eos_token_id
        self.tokenizer = tokenizer

    def targets(self, reports: list[str], max_tokens: int) -> list[list[int]]:
        """Report token ids, truncated to `max_tokens`, each ending with eos."""
        ids = self.tokenizer(reports, add_special_tokens=False).input_ids
        return [r[: max_tokens - 1] + [self.eos_id] for r in ids]


def assemble(embed: Callable[[torch.Tensor], torch.Tensor], prompt: Prompt, image_tokens: torch.Tensor,
             image_mask: torch.Tensor, targets: list[list[int]] | None = None, padding_side: str = "right"):
    """inputs_embeds [B, L, H], attention_mask [B, L] and (with targets) labels [B, L].

    image_tokens: [B, T, H] already projected into the LM's embedding space; image_mask: [B, T] (absent views).
    """
    device, dtype = image_tokens.device, image_tokens.dtype
    b = image_tokens.shape[0]
    pre = embed(torch.tensor(prompt.prefix, dtype=torch.long, device=device)).to(dtype)  # [P, H]
    tails = [prompt.suffix + (targets[i] if targets is not None else []) for i in range(b)]
    width = max(len(t) for t in tails)
    tail_ids = torch.tensor([t + [0] * (width - len(t)) for t in tails], dtype=torch.long, device=device)
    tail_emb = embed(tail_ids).to(dtype)  # [B, S+R, H]

    seqs, labels = [], []
    for i in range(b):
        img = image_tokens[i][image_mask[i]]  # [T_i, H]
        seqs.append(torch.cat([pre, img, tail_emb[i, : len(tails[i])]]))
        if targets is not None:
            n_ctx = len(prompt.prefix) + img.shape[0] + len(prompt.suffix)
            labels.append([IGNORE] * n_ctx + targets[i])

    length = max(s.shape[0] for s in seqs)
    h = image_tokens.shape[-1]
    inputs = image_tokens.new_zeros(b, length, h)
    mask = torch.zeros(b, length, dtype=torch.long, device=device)
    lab = torch.full((b, length), IGNORE, dtype=torch.long, device=device)
    for i, s in enumerate(seqs):
        n = s.shape[0]
        sl = slice(0, n) if padding_side == "right" else slice(length - n, length)
        inputs[i, sl] = s
        mask[i, sl] = 1
        if targets is not None:
            lab[i, sl] = torch.tensor(labels[i], device=device)
    return (inputs, mask, lab) if targets is not None else (inputs, mask)
