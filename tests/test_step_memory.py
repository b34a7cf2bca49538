"""r2gen.step_memory, through `verify`: the whole model takes a training step on the largest batch the config allows
(batch size, views, report and context lengths, the prior study), as `trainer.precision` runs it, and the table gives
its weights, optimizer state and peak memory for the chosen LM, align mode, batch size and quantisation."""

import pytest
import torch

from r2gen.build import model, prepare_data
from r2gen.errors import ConfigError
from r2gen.models.tiny_lm import build_causal_lm
from r2gen.step_memory import precision_plugin, step_memory, worst_batch
from r2gen.verify import run, verify

from .helpers.config import CONTEXT

TEXTS = ["the heart is enlarged .", "no pleural effusion .", "small left pneumothorax .", "the lungs are clear ."] * 10
QLORA = ["lm.freeze=true", "lm.lora.r=4", "align=shallow"]
STEP_KEYS = ("training step", "model weights (MB)", "optimizer state (MB)", "peak memory of a training step (MB)",
             "peak memory in all (MB)", "training step time (s)")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):  # 64 wide: bitsandbytes quantizes in blocks of 64 values
    return str(build_causal_lm(tmp_path_factory.mktemp("slm") / "llama", TEXTS, vocab_size=200, hidden_size=64,
                               intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))


def trainable_bytes(m) -> int:
    return sum(p.numel() * p.element_size() for p in m.parameters() if p.requires_grad)


def test_verify_ends_with_a_training_step_of_the_whole_model(make_cfg, capsys):
    cfg = make_cfg("data.batch_size=5", "data.max_report_tokens=40")
    r = run(cfg)
    assert all(k in r for k in STEP_KEYS), r
    assert r["training step"].startswith("batch 5, 2 views at 32x32, reports of 40 tokens, align.encoder=full, "
                                         "quantization none, precision=32-true, on cpu"), r["training step"]
    m = model(cfg)
    weights = sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()]) / 2**20
    assert r["model weights (MB)"] == pytest.approx(weights, abs=0.06)
    # AdamW: two float32 moments per trainable weight (and a step count per tensor)
    assert r["optimizer state (MB)"] == pytest.approx(2 * trainable_bytes(m) / 2**20, abs=0.06)
    assert r["peak memory of a training step (MB)"] >= 0  # measured: this CPU's peak RSS over the step
    total = r["model weights (MB)"] + r["optimizer state (MB)"] + r["peak memory of a training step (MB)"]
    assert r["peak memory in all (MB)"] == pytest.approx(total, abs=0.11)
    assert r["training step loss"] > 0 and r["training step time (s)"] > 0
    out = capsys.readouterr().out
    assert "peak memory in all (MB)" in out and "optimizer state (MB)" in out


def test_the_align_mode_decides_what_the_optimizer_holds(make_cfg):
    state = {a: verify(make_cfg(f"align={a}"))["optimizer state (MB)"] for a in ("shallow", "deep")}
    assert 0 < state["shallow"] < state["deep"]  # shallow: the projection only; deep: the encoder too


def test_a_4bit_lm_is_stored_smaller_and_steps(make_cfg, llama_dir):
    none = step_memory(make_cfg(*QLORA), lm_folder=llama_dir)
    four = step_memory(make_cfg("quant=4bit", *QLORA), lm_folder=llama_dir)
    assert "quantization nf4" in four["training step"] and "quantization none" in none["training step"]
    assert four["model weights (MB)"] < none["model weights (MB)"]
    assert four["optimizer state (MB)"] == none["optimizer state (MB)"] > 0  # the same adapters train on both
    assert torch.isfinite(torch.tensor(four["training step loss"]))


def test_the_step_runs_as_trainer_precision_says(make_cfg):
    r = verify(make_cfg("trainer.precision=bf16-mixed"))
    assert "precision=bf16-mixed" in r["training step"] and r["training step loss"] > 0
    cpu = torch.device("cpu")
    assert type(precision_plugin("bf16-mixed", cpu)).__name__ == "MixedPrecision"
    assert type(precision_plugin("bf16-true", cpu)).__name__ == "HalfPrecision"
    assert type(precision_plugin("32-true", cpu)).__name__ == "Precision"
    with pytest.raises(ConfigError, match="trainer.precision='bf16mixed'"):  # a typo is not measured as 32-true
        precision_plugin("bf16mixed", cpu)


def test_the_worst_batch_is_the_largest_the_config_allows(make_cfg):
    cfg = make_cfg(*CONTEXT, "data.batch_size=3", "data.max_report_tokens=30", "context.max_tokens=20")
    prepare_data(cfg.data)  # lm=tiny trains its tokenizer on the data set's reports
    m = model(cfg)
    b = worst_batch(m, cfg)
    assert b["images"].shape[:2] == (3, cfg.data.num_views) and b["view_mask"].all()
    assert b["images"].shape[-2:] == (32, 32)
    assert b["target_ids"].shape == (3, 30) and (b["target_lengths"] == 30).all()
    assert b["context_ids"].shape == (3, 20) and (b["context_lengths"] == 20).all()
    assert b["prior_images"].shape == b["images"].shape and b["prior_view_mask"].all()
    assert b["view_positions"].shape == b["prior_view_positions"].shape == (3, cfg.data.num_views)
    loss = m(b)  # what the model reads: the step runs on it
    assert torch.isfinite(loss)


def test_verify_can_leave_the_step_out(make_cfg):
    r = verify(make_cfg(), training_step=False)
    assert not any(k in r for k in STEP_KEYS) and "loss (random image tokens)" in r


def test_the_benchmark_shapes_are_shipped_configs_of_known_families():
    """benchmarks/step_memory.py builds each LM at its published shape: a shipped `lm=` config, a family the tests
    build checkpoints of, config fields the family's config takes."""
    import importlib.util

    from transformers import AutoConfig

    from r2gen.conf import CONF_DIR

    from .helpers.lm_families import FAMILIES
    from .helpers.paths import ROOT

    spec = importlib.util.spec_from_file_location("step_memory_bench", ROOT / "benchmarks" / "step_memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for name, (family, shape, vocab) in bench.SHAPES.items():
        assert (CONF_DIR / "lm" / f"{name}.yaml").is_file(), name
        config = AutoConfig.for_model(FAMILIES[family][1], vocab_size=vocab, **shape)
        assert all(getattr(config, k) == v for k, v in shape.items()), name


def test_a_step_that_does_not_fit_names_the_knobs(make_cfg, monkeypatch):
    import r2gen.verify as verify_module

    def out_of_memory(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(verify_module, "step_memory", out_of_memory)
    with pytest.raises(verify_module.VerifyError) as e:
        verify(make_cfg("data.batch_size=6"))
    msg = str(e.value)
    assert "data.batch_size=6 does not fit" in msg and "quant=4bit" in msg and "accumulate_grad_batches" in msg
