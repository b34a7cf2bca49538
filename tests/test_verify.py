"""`python -m r2gen.verify`: load + forward + generate report on tiny families, one-line failures, and a
remote-code architecture loaded only with `lm.trust_remote_code=true`, in a fresh process."""

import json
import subprocess
import sys
import textwrap

import pytest
from omegaconf import open_dict

from r2gen.boundary import run_cli
from r2gen.models.lm import load_lm
from r2gen.models.tiny_lm import train_tokenizer
from r2gen.verify import VerifyError, run, verify

from .helpers.cli import cli_env
from .helpers.config import SMALL_NO_BUILD
from .helpers.lm_families import FAMILIES, TEXTS, build_family
from .helpers.paths import ROOT


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    out = {family: build_family(root / family, family) for family in FAMILIES}
    return out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_verify_reports_what_was_loaded(make_cfg, tiny, family):
    name = FAMILIES[family][0]
    r = verify(make_cfg(f"lm={name}", *SMALL_NO_BUILD, small=False), lm_path=tiny[family])
    assert r["model_type"] == FAMILIES[family][1] and r["hidden_size"] == 32
    assert r["embedding rows"] >= r["tokenizer size"] and r["parameters"] > 0
    width = {"float32": 4, "bfloat16": 2, "float16": 2}[r["dtype"]]  # a plain (unquantized) model: params x width
    assert abs(r["memory footprint (MB)"] - r["parameters"] * width / 2**20) <= 0.05
    assert r["pad"] != "none" and r["eos"] != "none"
    if family == "qwen2":  # no BOS and no pad of its own: pad is eos, nothing prepended
        assert r["bos"] == "none" and r["pad"] == r["eos"] and r["prompt starts with bos"] is False
    if family == "llama":  # lm=llama2-7b pads with unk
        assert r["pad"] == r["unk"] and r["prompt starts with bos"] is True
    assert r["loss (random image tokens)"] > 0
    assert r["loss path"] == "report positions only (logits_to_keep, chunked cross-entropy)"
    assert r["peak memory of a training step (MB)"] >= 0  # the whole model's step, measured on this CPU (VmHWM)
    assert len(r["generated (untrained)"]) == 2 and "num_beams=2" in r["generate"]


def test_verify_failure_is_one_line_and_nonzero(make_cfg, tiny, capsys):
    cfg = make_cfg("lm=gpt2", f"lm.name_or_path={tiny['gpt2']}", *SMALL_NO_BUILD, small=False)
    with open_dict(cfg):
        cfg.generate.num_beem = 3
    with pytest.raises(VerifyError, match="generate.num_beem"):
        verify(cfg)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_cli(run, cfg)
    assert e.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()  # the message, then the hint about R2GEN_TRACEBACK
    assert len(err) == 2 and err[0].startswith("error: verify failed while generating"), err
    assert "generate.num_beem" in err[0]


# --- remote code --------------------------------------------------------------------------------------------
ARCH = textwrap.dedent('''
    """A custom architecture for the remote-code test: LLaMA under a model_type transformers does not know."""
    from transformers import LlamaConfig, LlamaForCausalLM


    class TinyArchConfig(LlamaConfig):
        model_type = "r2gen_tinyarch"


    class TinyArchForCausalLM(LlamaForCausalLM):
        config_class = TinyArchConfig
''')


@pytest.fixture(scope="module")
def remote_dir(tmp_path_factory):
    """A folder like a hub repo with custom code: config.json has an auto_map and the .py sits next to it."""
    src = tmp_path_factory.mktemp("arch_src")
    (src / "r2gen_tinyarch.py").write_text(ARCH)
    sys.path.insert(0, str(src))
    try:
        import r2gen_tinyarch as arch
    finally:
        sys.path.remove(str(src))
    arch.TinyArchConfig.register_for_auto_class()
    arch.TinyArchForCausalLM.register_for_auto_class("AutoModelForCausalLM")
    out = tmp_path_factory.mktemp("remote") / "tinyarch"
    tok = train_tokenizer(TEXTS, 300)
    config = arch.TinyArchConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2, bos_token_id=tok.bos_token_id,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    arch.TinyArchForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    assert "auto_map" in json.loads((out / "config.json").read_text()) and (out / "r2gen_tinyarch.py").exists()
    del sys.modules["r2gen_tinyarch"]
    return out


def test_remote_code_is_never_run_unless_trusted(make_cfg, remote_dir):
    cfg = make_cfg("lm=llama2-7b", f"lm.name_or_path={remote_dir}", *SMALL_NO_BUILD, small=False)
    assert cfg.lm.trust_remote_code is False
    with pytest.raises(ValueError, match=r"lm\.trust_remote_code=true"):
        load_lm(cfg.lm)


@pytest.mark.slow
def test_remote_code_loads_when_trusted_in_a_fresh_process(remote_dir, tmp_path, cache_dir):
    env = {**cli_env(cache_dir), "HF_MODULES_CACHE": str(tmp_path / "modules")}  # transformers copies the code here
    proc = subprocess.run([sys.executable, "-m", "r2gen.verify", "lm=llama2-7b", f"lm.name_or_path={remote_dir}",
                           "lm.trust_remote_code=true", "lm.dtype=float32", "generate=greedy",
                           f"paths.log_dir={tmp_path / 'out'}", f"paths.cache_dir={cache_dir}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "TinyArchForCausalLM" in proc.stdout and "r2gen_tinyarch" in proc.stdout
    reports = list((tmp_path / "out" / "verify").glob("*/*/verify.json"))
    assert len(reports) == 1 and json.loads(reports[0].read_text())["class"] == "TinyArchForCausalLM"


def test_verify_builds_the_demo_lm_like_training(make_cfg):
    r = verify(make_cfg())  # lm=tiny: the demo LM is built on first use from the (shrunk) demo set's reports
    assert r["class"] == "LlamaForCausalLM" and r["hidden_size"] == 32 and r["name_or_path"].rsplit("-", 1)[1]
