"""The LM's report text, in one place: the prompt around the image (plain or the tokenizer's chat template, and
whether a BOS goes first: `Prompt`), the report as the ids the LM learns to write (cut, then eos:
`ReportTargets`), the input `[bos] prefix <image tokens> suffix [report eos]` (`assemble`), and generated ids back
to the report people read (`decode_reports`: decoded, cleaned with the data set's policy, detokenized), and a
study's context (r2gen.data.context) as the text the LM reads (`context_text`, `ContextTokens`) and its prior
study's image tokens beside its own (`with_prior`). Which
token pads is the tokenizer's policy (`lm.pad_token`: r2gen.models.lm); how a report is cleaned is
r2gen.data.clean.

A decoder-only LM reads `[bos] prefix <image tokens> suffix` and writes the report after it: training batches are
right-padded to the longest sequence in the batch and labelled -100 everywhere but the report and its eos;
generation batches are left-padded so every study's last prompt token sits at the end. An encoder-decoder (T5,
BART) reads the same prompt, ended as its tokenizer ends a text, in its encoder (right-padded: it sees the whole
input at once), and its decoder learns and writes the report alone (`lm_inputs`); what it generates starts with
its decoder-start token, which `decode_reports` drops.

Standalone: this file is copied verbatim into every exported model folder (r2gen.export.exporter.EXPORTED), which
runs without r2gen, so it imports only the standard library, torch, torchvision, timm, transformers, numpy, Pillow,
pydicom and the other exported files (relatively), and r2gen (its error types, another exported file) only inside
`try: ... except ImportError:` with a fallback; tests/test_export.py::test_the_exported_files_are_standalone keeps
it so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

try:
    from r2gen.data.clean import detokenize
    from r2gen.errors import ConfigError, InputError
except ImportError:  # standalone (see above)
    from .clean import detokenize

    ConfigError = InputError = ValueError

IMAGE = "<image>"  # where the image tokens go in `lm.prompt.text`
IGNORE = -100


ADD_BOS = "auto (what the tokenizer itself puts first), named (its BOS token whenever it names one), true or false"


def special_ids(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer itself puts before and after a text (`add_special_tokens=True`): LLaMA's and Mistral's
    `<s>` first, OPT's `</s>` first, ChatGLM's `[gMASK]<sop>`, T5's `</s>` last; none for Qwen2, GPT-2 or Baichuan2."""
    plain = tokenizer("a", add_special_tokens=False).input_ids
    full = tokenizer("a", add_special_tokens=True).input_ids
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return full[:i], full[i + len(plain) :]
    return [], []  # the text itself changed with the special tokens: none are taken


class Prompt:
    """Token ids of the text around the image, from `lm.prompt` (plain text or the tokenizer's chat template) and
    `lm.add_bos`: `auto` starts it as the tokenizer starts any text (its own special tokens first, if any), `named`
    with the tokenizer's BOS token whenever it has one (what `auto` did in checkpoint formats 1 to 5), `true` with
    the BOS token, `false` with the text alone; none is added twice where the chat template already wrote it. For an
    encoder-decoder LM (`encoder_decoder`: T5, BART) the prompt is the encoder's input and ends as the tokenizer ends
    a text (T5's `</s>`); a decoder-only LM writes the report right after it."""

    def __init__(self, tokenizer, text: str, template: str = "plain", add_bos: str | bool = "auto",
                 encoder_decoder: bool = False):
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
        enc = lambda s: tokenizer(s, add_special_tokens=False).input_ids if s else []  # noqa: E731
        lead, trail = special_ids(tokenizer)
        if add_bos == "auto":
            first = lead
        elif add_bos == "named":
            first = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
        elif isinstance(add_bos, bool):
            if add_bos and tokenizer.bos_token_id is None:
                raise ConfigError("lm.add_bos=true but the tokenizer has no BOS token: use auto or false")
            first = [tokenizer.bos_token_id] if add_bos else []
        else:
            raise ConfigError(f"lm.add_bos={add_bos!r}: choose {ADD_BOS}")
        ids = enc(before)
        self.prefix = ([] if ids[: len(first)] == first else first) + ids  # a template may have written them
        self.suffix = enc(after) + (trail if encoder_decoder else [])


def assemble(embed: Callable[[torch.Tensor], torch.Tensor], prompt: Prompt, image_tokens: torch.Tensor,
             image_mask: torch.Tensor, target_ids: torch.Tensor | None = None,
             target_lengths: torch.Tensor | None = None, padding_side: str = "right",
             context: tuple[torch.Tensor, torch.Tensor] | None = None):
    """inputs_embeds [B, L, H], attention_mask [B, L] and (with targets) labels [B, L].

    image_tokens: [B, T, H] already projected into the LM's embedding space; image_mask: [B, T] (absent views);
    target_ids [B, R] / target_lengths [B]: the reports' token ids as the collator gives them
    (r2gen.data.collate), study i's first target_lengths[i] ids are its report and eos. `context`: each study's
    context text as (`context_ids` [B, C], `context_lengths` [B]) (`ContextTokens`), read right after the prompt's
    prefix and before the image: `[bos] prefix context <image tokens> suffix [report eos]`.
    """
    device, dtype = image_tokens.device, image_tokens.dtype
    b, h = image_tokens.shape[0], image_tokens.shape[-1]
    pre = embed(torch.tensor(prompt.prefix, dtype=torch.long, device=device)).to(dtype)  # [P, H]
    ctx_emb, ctx_lengths = None, [0] * b
    if context is not None:
        ctx_emb = embed(context[0].to(device)).to(dtype)  # [B, C, H]
        ctx_lengths = context[1].tolist()
    tail_ids = torch.tensor(prompt.suffix, dtype=torch.long, device=device).expand(b, -1)  # [B, S]
    tail_lengths = [len(prompt.suffix)] * b
    if target_ids is not None:  # the report follows the suffix: one embedding call for both
        tail_ids = torch.cat([tail_ids, target_ids.to(device)], dim=1)  # [B, S+R]
        tail_lengths = [len(prompt.suffix) + n for n in target_lengths.tolist()]
    tail_emb = embed(tail_ids).to(dtype)  # [B, S(+R), H]

    seqs, n_ctx = [], []
    for i in range(b):
        img = image_tokens[i][image_mask[i]]  # [T_i, H]
        parts = [pre] if ctx_emb is None else [pre, ctx_emb[i, : ctx_lengths[i]]]
        seqs.append(torch.cat([*parts, img, tail_emb[i, : tail_lengths[i]]]))
        n_ctx.append(len(prompt.prefix) + ctx_lengths[i] + img.shape[0] + len(prompt.suffix))

    length = max(s.shape[0] for s in seqs)
    inputs = image_tokens.new_zeros(b, length, h)
    mask = torch.zeros(b, length, dtype=torch.long, device=device)
    lab = torch.full((b, length), IGNORE, dtype=torch.long, device=device)
    for i, s in enumerate(seqs):
        n = s.shape[0]
        start = 0 if padding_side == "right" else length - n
        inputs[i, start : start + n] = s
        mask[i, start : start + n] = 1
        if target_ids is not None:  # only the report and its eos are learned; prompt and image are context
            lab[i, start + n_ctx[i] : start + n] = tail_ids[i, len(prompt.suffix) : tail_lengths[i]]
    return (inputs, mask, lab) if target_ids is not None else (inputs, mask)


def lm_inputs(embed: Callable[[torch.Tensor], torch.Tensor], prompt: Prompt, image_tokens: torch.Tensor,
              image_mask: torch.Tensor, target_ids: torch.Tensor | None = None,
              target_lengths: torch.Tensor | None = None, encoder_decoder: bool = False,
              context: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The keyword arguments the LM is called with: for training (with targets) its `forward`, whose `.loss` is the
    report loss; without targets its `generate`. `inputs_embeds` and `attention_mask` always; `labels` with targets,
    over the whole sequence for a decoder-only LM (-100 outside the report, `assemble`), over the report alone for an
    encoder-decoder, whose decoder shifts them right itself. `context`: as `assemble` takes it (None: no context)."""
    if not encoder_decoder:
        if target_ids is None:
            inputs, attn = assemble(embed, prompt, image_tokens, image_mask, padding_side="left", context=context)
            return {"inputs_embeds": inputs, "attention_mask": attn}
        inputs, attn, labels = assemble(embed, prompt, image_tokens, image_mask, target_ids, target_lengths, "right",
                                        context=context)
        return {"inputs_embeds": inputs, "attention_mask": attn, "labels": labels}
    inputs, attn = assemble(embed, prompt, image_tokens, image_mask, padding_side="right", context=context)
    if target_ids is None:
        return {"inputs_embeds": inputs, "attention_mask": attn}
    lengths = target_lengths.to(inputs.device)
    width = int(lengths.max())
    labels = target_ids[:, :width].to(inputs.device).clone()
    labels[torch.arange(width, device=inputs.device)[None] >= lengths[:, None]] = IGNORE
    return {"inputs_embeds": inputs, "attention_mask": attn, "labels": labels}


class ReportTargets:
    """Report text -> what the LM learns to write: the report's tokens, cut to `max_tokens - 1`, then eos."""

    def __init__(self, tokenizer, max_tokens: int):
        if tokenizer.eos_token_id is None:
            raise InputError("the LM's tokenizer has no eos token; a report needs one to end on")
        self.tokenizer, self.max_tokens, self.eos_id = tokenizer, int(max_tokens), tokenizer.eos_token_id

    def __call__(self, reports: Sequence[str]) -> list[list[int]]:
        ids = self.tokenizer(list(reports), add_special_tokens=False).input_ids
        return [r[: self.max_tokens - 1] + [self.eos_id] for r in ids]

    def lengths(self, reports: Sequence[str]) -> list[int]:
        """Target tokens per report (eos included): what `data.group_by_length` groups by."""
        return [len(t) for t in self(reports)]

    def tensors(self, reports: Sequence[str]) -> dict[str, torch.Tensor]:
        """`target_ids` [B, R], right-padded with eos (masked by the lengths), and `target_lengths` [B]."""
        ids = self(reports)
        width = max(len(t) for t in ids)
        return {"target_ids": torch.tensor([t + [self.eos_id] * (width - len(t)) for t in ids], dtype=torch.long),
                "target_lengths": torch.tensor([len(t) for t in ids], dtype=torch.long)}


class ContextTokens:
    """A study's context text (r2gen.data.context) -> the ids the LM reads before the image: tokenized without
    special tokens and cut to its first `max_tokens` (`context.max_tokens`); the report target is never cut for it."""

    def __init__(self, tokenizer, max_tokens: int):
        self.tokenizer, self.max_tokens = tokenizer, int(max_tokens)

    def __call__(self, texts: Sequence[str]) -> list[list[int]]:
        ids = self.tokenizer(list(texts), add_special_tokens=False).input_ids
        return [t[: self.max_tokens] for t in ids]

    def tensors(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """`context_ids` [B, C], right-padded with 0 (masked by the lengths), and `context_lengths` [B]."""
        ids = self(texts)
        width = max(1, max(len(t) for t in ids))
        return {"context_ids": torch.tensor([t + [0] * (width - len(t)) for t in ids], dtype=torch.long),
                "context_lengths": torch.tensor([len(t) for t in ids], dtype=torch.long)}


def context_text(parts: Sequence[str], values: Mapping[str, str | None], clean: Callable[[str], str]) -> str:
    """One study's context text: each of `parts` (in the order given) as `<name>: <text>.`, its text from `values`
    cleaned with the run's report cleaner (`clean`) and ended with one full stop, `<name>: none.` where the study has
    none (absent, None or empty); joined by spaces: `indication: cough. prior report: none.`. The one writer of
    this format: r2gen's data sets (r2gen.data.context) and the exported folder's `generate_reports` call it."""
    written = []
    for part in parts:
        text = values.get(part)
        text = clean(text).strip() if isinstance(text, str) else ""
        written.append(f"{part.replace('_', ' ')}: {text.rstrip(' .') or 'none'}.")
    return " ".join(written)


def with_prior(current: torch.Tensor, current_mask: torch.Tensor, prior: torch.Tensor, prior_mask: torch.Tensor,
               prior_view_mask: torch.Tensor, marker: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The image tokens the LM reads with `context.prior_images`, [B, T_p+T, H] + mask: the prior study's span
    (`prior` [B, T_p, H], `prior_mask`, through the same encoder and projection as the current one) before the
    current study's (`current` [B, T, H], `current_mask`), each plus its row of the learned `marker` [2, H] (1:
    prior, 0: current), and the prior span of a study without a prior (`prior_view_mask` [B, V] all False) masked
    out: mean fusion gives tokens even for zero views."""
    prior_mask = prior_mask & prior_view_mask.any(1, keepdim=True)
    marker = marker.to(current.dtype)
    return torch.cat([prior + marker[1], current + marker[0]], dim=1), torch.cat([prior_mask, current_mask], dim=1)


def context_of(batch) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(`context_ids`, `context_lengths`) of a batch that carries them (the collator's keys), else None."""
    return (batch["context_ids"], batch["context_lengths"]) if "context_ids" in batch else None


def decode_reports(tokenizer, ids: torch.Tensor, clean: Callable[[str], str], encoder_decoder: bool = False) -> list[str]:
    """Generated token ids [B, N] -> reports as people read them: decoded without special tokens, cleaned with the
    data set's policy (`clean`), then detokenized (`no pneumothorax.`; r2gen.data.clean). `clean` of one gives the
    text scoring sees (`no pneumothorax .`). A decoder-only LM's `generate` from `inputs_embeds` returns the new
    tokens only; an encoder-decoder's starts with its decoder-start token, dropped here."""
    ids = ids[:, 1:] if encoder_decoder else ids
    return [detokenize(clean(t)) for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
