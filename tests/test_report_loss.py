"""The loss from logits at the report positions only (lm.loss_logits=report, r2gen.models.report_loss): the same
value and gradients as the LM's own loss over every position, on every family the tests build, chunked or not; the
fallback for an LM whose forward takes no logits_to_keep; and the memory it saves."""

from __future__ import annotations

import pytest
import torch

from r2gen import build
from r2gen.errors import ConfigError
from r2gen.models import report_loss as rl

from .helpers.config import SMALL_NO_BUILD
from .helpers.lm_families import FAMILIES, build_family, built_once, lm_yaml
from .helpers.models import batch

FLOAT = ["lm.dtype=float32"]


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    return built_once(tmp_path_factory.mktemp("families"), build_family)


def losses_and_grads(m, b, path: str, chunk: int):
    m.loss_path = path
    m.loss_chunk = chunk
    m.zero_grad()
    torch.manual_seed(2)  # the same LoRA dropout draws on both paths
    loss = m.losses(b)["lm"]
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_report_positions_give_the_full_loss_and_gradients(make_cfg, family_dirs, family):
    name = FAMILIES[family][0]
    lora = ["lm.lora.r=4"] if lm_yaml(name).freeze else []  # through PEFT's wrapper, as a frozen 7B trains
    cfg = make_cfg(f"lm={name}", *FLOAT, *lora, "data.max_report_tokens=16", *SMALL_NO_BUILD, small=False)
    torch.manual_seed(0)
    m = build.model(cfg, lm_folder=family_dirs(family))
    assert m.loss_path == "report"  # every native family takes logits_to_keep
    m.train()
    torch.manual_seed(1)
    b = batch(m, b=3)
    assert len(set(b["target_lengths"].tolist())) > 1  # ragged reports: the mask keeps a different count per row
    full, g_full = losses_and_grads(m, b, "full", 0)
    for chunk in (0, 3):  # one cross-entropy, and chunks of 3 rows recomputed in backward
        got, g = losses_and_grads(m, b, "report", chunk)
        assert got == pytest.approx(full, rel=1e-5, abs=1e-6)
        assert g.keys() == g_full.keys() and g
        for k in g:
            torch.testing.assert_close(g[k], g_full[k], rtol=1e-4, atol=1e-6, msg=k)


def test_gemma2_soft_capping_is_left_to_the_model(make_cfg, tmp_path):
    """Gemma-2 caps its logits inside forward: the kept logits are capped too, so the loss is the model's own."""
    from r2gen.models.tiny_lm import build_causal_lm

    from .helpers.lm_families import GQA, TEXTS

    path = build_causal_lm(tmp_path / "gemma2", TEXTS, model_type="gemma2", vocab_size=300,
                           special={"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
                                    "unk_token": "<unk>"}, **dict(GQA, head_dim=16, final_logit_softcapping=0.5,
                                                                  attn_implementation="eager"))
    cfg = make_cfg("lm=gemma-2b", *FLOAT, "lm.attn_implementation=eager", "lm.freeze=false", *SMALL_NO_BUILD, small=False)
    m = build.model(cfg, lm_folder=str(path))
    b = batch(m, b=2)
    full, _ = losses_and_grads(m, b, "full", 0)
    got, _ = losses_and_grads(m, b, "report", 2)
    assert m.lm_model.config.final_logit_softcapping == 0.5
    assert got == pytest.approx(full, rel=1e-5)


class _NoKeep(torch.nn.Module):
    """A forward without logits_to_keep, as a remote-code family written for transformers 4 has."""

    def forward(self, inputs_embeds=None, attention_mask=None, labels=None):
        raise AssertionError("not called")


def test_an_lm_without_logits_to_keep_falls_back_and_names_the_path():
    assert rl.loss_path(_NoKeep(), "report", encoder_decoder=False) == "full"
    assert rl.describe("full", "report") == "full logits (the LM's forward takes no logits_to_keep)"
    assert rl.describe("report", "report").startswith("report positions only")
    assert rl.loss_path(_NoKeep(), "full", encoder_decoder=False) == "full"
    with pytest.raises(ConfigError, match=r"lm.loss_logits='some': choose report .* or full"):
        rl.loss_path(_NoKeep(), "some", encoder_decoder=False)
    with pytest.raises(ConfigError, match=r"lm.loss_chunk=-1"):
        rl.chunk_size(-1)


def test_chunked_cross_entropy_equals_one_and_keeps_one_chunk_alive():
    torch.manual_seed(0)
    logits = torch.randn(37, 50, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    whole = torch.nn.functional.cross_entropy(logits, targets)
    (g_whole,) = torch.autograd.grad(whole, logits)
    chunked = rl.chunked_cross_entropy(logits, targets, 8)
    (g_chunked,) = torch.autograd.grad(chunked, logits)
    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(g_chunked, g_whole)
    # what autograd keeps for backward: with chunks, only the (bfloat16) logits, not a float32 softmax per chunk
    saved = []
    bf = logits.detach().bfloat16().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t,
                                                  lambda t: t):
        rl.chunked_cross_entropy(bf, targets, 8)
    assert max(saved) <= bf.numel() * bf.element_size()  # no float32 [37, 50] copy is kept


def test_seq2seq_takes_the_full_path(make_cfg, tmp_path):
    from .helpers.seq2seq import build_t5

    path = build_t5(tmp_path / "t5")
    m = build.model(make_cfg("lm=flan-t5-base", *FLOAT, *SMALL_NO_BUILD, small=False), lm_folder=str(path))
    assert m.loss_path == "full"
