"""The backbone zoo without downloads: every `conf/lm/*.yaml` composes with exactly the allowed keys, and a tiny
random checkpoint of each native family, loaded with its yaml's pad policy, prompt and LoRA targets through the
real `R2GenModule`, trains a few steps and beam-searches one report per study."""

from pathlib import Path

import pytest
import torch

from r2gen import build
from r2gen.models.module import R2GenModule

from .helpers.config import SMALL_NO_BUILD
from .helpers.lm_families import ADDS_BOS, FAMILIES, build_family, built_once, lm_yaml
from .helpers.models import batch, train_steps
from .helpers.paths import ROOT

LM_DIR = ROOT / "r2gen" / "conf" / "lm"
LM_NAMES = sorted(p.stem for p in LM_DIR.glob("*.yaml"))
# Every lm yaml has these; `build` (a locally built recipe, lm=tiny), `convert` (a checkpoint converted to a native
# architecture, lm=chatglm3-6b) and `unsupported` (a known breakage) are optional.
KEYS = {"name_or_path", "trust_remote_code", "dtype", "attn_implementation", "device_map", "gradient_checkpointing",
        "pad_token", "add_bos", "freeze", "lora", "prompt", "loss_logits", "loss_chunk"}
OPTIONAL = {"build", "unsupported", "convert"}


# --- every yaml ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LM_NAMES)
def test_lm_yaml_composes_with_the_allowed_keys(make_cfg, name):
    cfg = make_cfg(f"lm={name}", small=False)
    lm = cfg.lm
    assert KEYS <= set(lm) and set(lm) - KEYS <= OPTIONAL, f"lm={name}: keys {sorted(set(lm) ^ KEYS)}"
    assert isinstance(lm.name_or_path, str) and lm.name_or_path
    if name != "tiny":
        assert "/" in lm.name_or_path and "build" not in lm  # a real hub id, never built locally
    assert isinstance(lm.trust_remote_code, bool) and isinstance(lm.freeze, bool)
    assert isinstance(lm.gradient_checkpointing, bool)
    assert lm.loss_logits in ("report", "full") and isinstance(lm.loss_chunk, int)
    assert lm.dtype in ("auto", "float32", "bfloat16", "float16")
    assert lm.attn_implementation in ("auto", "sdpa", "eager", "flash_attention_2")
    assert lm.attn_implementation == "auto" or lm.trust_remote_code  # a fixed choice only for remote code
    assert lm.device_map is None
    assert lm.pad_token in ("auto", "keep", "eos", "unk", "add") or isinstance(lm.pad_token, int)
    assert lm.add_bos in ("auto", "named", True, False)
    assert set(lm.lora) == {"r", "alpha", "dropout", "target_modules"} and lm.lora.r == 0
    assert list(lm.lora.target_modules) and all(isinstance(t, str) for t in lm.lora.target_modules)
    assert set(lm.prompt) == {"template", "text"} and lm.prompt.template in ("plain", "chat")
    assert lm.prompt.text.count("<image>") == 1
    if lm.dtype == "bfloat16":  # a big model: frozen, LoRA off until asked for
        assert lm.freeze


def test_unsupported_backbone_fails_before_loading(make_cfg):
    # `lm.unsupported` marks a known breakage: loading stops with its advice before any download
    cfg = make_cfg("lm=internlm2-7b", "+lm.unsupported='its code needs transformers 4: use lm=glm4-9b'",
                   *SMALL_NO_BUILD, small=False)
    with pytest.raises(ValueError, match="use lm=glm4-9b"):
        build.model(cfg)


# --- tiny random checkpoints of each family --------------------------------------------------------------
@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    return built_once(tmp_path_factory.mktemp("families"), build_family)


def family_module(make_cfg, family_dirs, family: str, *overrides: str) -> R2GenModule:
    """The family's tiny checkpoint under its lm yaml; a frozen (big) backbone gets LoRA on the yaml's targets."""
    name = FAMILIES[family][0]
    lora = ["lm.lora.r=4"] if lm_yaml(name).freeze else []
    cfg, path = make_cfg(f"lm={name}", *SMALL_NO_BUILD, *lora, *overrides, small=False), family_dirs(family)
    torch.manual_seed(0)  # after the (first-use) build, which draws random numbers: same init every time
    return build.model(cfg, lm_folder=path)




@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_trains_and_beam_generates(make_cfg, family_dirs, family):
    m = family_module(make_cfg, family_dirs, family)
    name, _, special, _, _ = FAMILIES[family]
    tok, lm_cfg = m.tokenizer, lm_yaml(name)

    # the pad policy of the yaml gave this tokenizer a pad token, and the model and its generation config agree;
    # auto: the family's own pad, else its unk (when not also eos/bos), else eos
    policy = lm_cfg.pad_token
    if policy == "auto":
        own, unk = special["pad_token"], special["unk_token"]
        policy = "keep" if own else "unk" if unk and unk not in (special["eos_token"], special["bos_token"]) else "eos"
    want_pad = {"eos": tok.eos_token_id, "unk": tok.unk_token_id}.get(policy, tok.pad_token_id)
    assert tok.pad_token_id is not None and tok.pad_token_id == want_pad
    assert m.lm_model.config.pad_token_id == tok.pad_token_id == m.gen_config.pad_token_id
    # add_bos=auto starts the prompt as the family's tokenizer starts a text: with its BOS where it adds one;
    # named: with the BOS it names (GPT-2's <|endoftext|>)
    bos_first = lm_cfg.add_bos is True or (lm_cfg.add_bos == "named" and special["bos_token"] is not None) or \
        (lm_cfg.add_bos == "auto" and family in ADDS_BOS)
    if not bos_first:
        assert tok.bos_token_id is None or m.prompt.prefix[:1] != [tok.bos_token_id]
    else:
        assert m.prompt.prefix[0] == tok.bos_token_id and m.prompt.prefix[1] != tok.bos_token_id

    if lm_cfg.prompt.template == "chat":  # the instruction sits in the user turn, the report in the assistant's
        assert tok.decode(m.prompt.prefix).endswith("<|user|>\n") and tok.decode(m.prompt.suffix).endswith("<|assistant|>\n")

    if lm_cfg.freeze:  # LoRA landed on the yaml's target modules of this architecture
        lm_trainable = [n for n, p in m.lm_model.named_parameters() if p.requires_grad]
        assert lm_trainable and all("lora_" in n for n in lm_trainable)
        assert any(t in n for n in lm_trainable for t in lm_cfg.lora.target_modules)

    b = batch(m)
    losses = train_steps(m, b, steps=4, lr=3e-3)
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < losses[0], losses

    m.eval()
    b["view_mask"][1, 1] = False  # one single-view study: the batch is ragged before left padding
    out = m.generate(b["images"], b["view_mask"])  # generate=beam with num_beams=2 (conftest's shrink)
    assert m.gen_config.num_beams == 2
    assert len(out) == 2 and all(isinstance(t, str) for t in out)


def test_tiny_family_specs_cover_the_tested_yamls():
    tested = {spec[0] for spec in FAMILIES.values()}
    assert tested <= set(LM_NAMES)
    assert all(not Path(LM_DIR / f"{n}.yaml").read_text().count("trust_remote_code: true") for n in tested)


# --- loading options -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family,overrides", [
    ("llama", ["lm.freeze=true", "lm.lora.r=4"]),  # frozen + LoRA: the input-grads hook path
    ("gpt2", ["lm.freeze=false"]),                  # trained in full
])
def test_gradient_checkpointing_gives_the_same_loss_and_grads(make_cfg, family_dirs, family, overrides):
    runs = []
    for gc in (False, True):
        m = family_module(make_cfg, family_dirs, family, "lm.dtype=float32", f"lm.gradient_checkpointing={gc}",
                          *overrides)
        base = m.lm_model.get_base_model() if hasattr(m.lm_model, "get_base_model") else m.lm_model  # under LoRA
        assert base.is_activation_checkpointing is gc
        m.train()
        torch.manual_seed(1)  # same dropout masks in both runs
        loss = m(batch(m))
        loss.backward()
        runs.append((loss.detach(), m.lm_proj.weight.grad.clone(),
                     [p.grad.clone() for p in m.lm_model.parameters() if p.requires_grad]))
    (l0, g0, lm0), (l1, g1, lm1) = runs
    assert torch.allclose(l0, l1) and torch.allclose(g0, g1, atol=1e-6)
    assert len(lm0) == len(lm1) > 0 and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(lm0, lm1, strict=True))
