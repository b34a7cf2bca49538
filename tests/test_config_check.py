"""The config is checked before anything is built: a wrong kind of value, an unknown key (also one added with `+`),
a missing value reached through an interpolation are one line naming the key, the value and the fix, exit code 2,
and no run folder is left behind; every shipped config (each group option, experiment, trainer, logger) passes."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from r2gen.boundary import quiet_libraries, run_cli
from r2gen.conf import CONF_DIR
from r2gen.config_check import check_config
from r2gen.errors import ConfigError

from .helpers.cli import run_cli as run_script
from .helpers.config import SMALL, compose_cfg

BAD = [  # overrides -> what the one line must say
    (["data=custom"], "data.root is required and has no value: set it on the command line (data.root=...)"),
    (["data=custom", "eval.chexbert=${data.root}/chexbert.pth"],
     "data.root is required and has no value (eval.chexbert is built from it)"),
    (["trainer.max_epochs=abc"], "trainer.max_epochs='abc': pytorch_lightning.Trainer takes an integer or null"),
    (["+trainer.max_epoch=1"], "trainer.max_epoch=1: pytorch_lightning.Trainer has no argument 'max_epoch' "
                               "(did you mean trainer.max_epochs?)"),
    (["+trainer.callbacks=[]"], "trainer.callbacks: r2gen passes Trainer's callbacks itself"),
    (["trainer.precision=fp16"], "trainer.precision='fp16': pytorch_lightning.Trainer takes one of"),
    (["+data.batchsize=4"], "data.batchsize=4: data has no key 'batchsize' (did you mean data.batch_size?"),
    (["+lm.lora.rank=8"], "lm.lora.rank=8: lm.lora has no key 'rank'"),
    (["+seeds=1"], "seeds=1: the config has no key 'seeds' (did you mean seed?"),
    (["data.batch_size=abc"], "data.batch_size='abc': expected an integer"),
    (["optim.lr=fast"], "optim.lr='fast': expected a number"),
    (["test_after_fit=[1]"], "test_after_fit=[1]: expected true or false"),
    (["+data.image_columns=frontal"], "data.image_columns='frontal': expected a list"),
    (["generate.num_beams=two"], "generate.num_beams='two': expected an integer"),
    (["data.annotation=${data.no_such_key}"], "data.annotation=${data.no_such_key}: cannot be resolved"),
]


def check(*overrides: str, config_name: str = "config", tmp: Path = Path("/nonexistent")) -> None:
    check_config(compose_cfg(config_name, list(overrides), tmp / "run", tmp / "cache"), config_name)


@pytest.mark.parametrize("overrides,message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_a_config_mistake_is_one_line_naming_key_value_and_fix(overrides, message, tmp_path):
    with pytest.raises(ConfigError) as e:
        check(*overrides, tmp=tmp_path)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_the_boundary_checks_before_the_command_runs(tmp_path, capsys):
    cfg = compose_cfg("config", ["trainer.max_epochs=abc"], tmp_path / "run", tmp_path / "cache")
    ran = []
    with pytest.raises(SystemExit) as e:
        run_cli(ran.append, cfg)
    err = capsys.readouterr().err.splitlines()
    assert e.value.code == 2 and not ran and err[0].startswith("error: trainer.max_epochs='abc'"), err
    run_cli(ran.append, cfg, check=False)  # the Python API's way: no check unless asked
    assert ran == [cfg]


def test_an_interpolation_to_a_missing_value_raised_later_is_one_line(tmp_path, capsys):
    cfg = compose_cfg("config", ["data=custom"], tmp_path / "run", tmp_path / "cache")

    def reads_annotation(c):
        return c.data.annotation  # ${.root}/studies.jsonl, data.root=???

    with pytest.raises(SystemExit) as e:
        run_cli(reads_annotation, cfg, check=False)
    err = capsys.readouterr().err.splitlines()
    assert e.value.code == 2 and len(err) == 2, err
    assert err[0] == ("error: data.root is required and has no value (data.annotation is built from it): set it on "
                      "the command line (data.root=...)")


def every_shipped_config() -> list[tuple[str, list[str]]]:
    cases = [(p.stem, []) for p in sorted(CONF_DIR.glob("*.yaml"))]
    for group in ("data", "encoder", "lm", "align", "quant", "generate", "trainer", "logger", "optim", "paths",
                  "callbacks"):
        for option in sorted((CONF_DIR / group).glob("*.yaml")):
            root = ["data.root=/d"] if group == "data" else []
            cases.append(("config", [f"{group}={option.stem}", *root]))
    cases += [("config", [f"experiment={p.stem}", "data.root=/d"]) for p in sorted((CONF_DIR / "experiment").glob("*.yaml"))]
    cases += [("config", SMALL), ("config", ["+generate.temperature=0.7", "+encoder.kwargs.zero_init_last=false",
                                             "+quant.bnb_4bit_quant_storage=uint8", "lm.pad_token=0", "trainer.devices=[0]",
                                             "trainer.limit_train_batches=0.5", "data.feature_cache=off",
                                             "~logger.tensorboard", "lm.device_map=auto"])]
    return cases


def test_every_shipped_config_passes(tmp_path):
    for name, overrides in every_shipped_config():
        check(*overrides, config_name=name, tmp=tmp_path)


def test_lightning_tips_and_library_deprecations_are_quiet_r2gen_s_own_warnings_are_not():
    import logging

    with warnings.catch_warnings(record=True) as shown:
        quiet_libraries()
        for module in ("torch.utils._pytree", "transformers.modeling_utils", "r2gen.models.lm"):
            warnings.warn_explicit("x is deprecated", FutureWarning, "f.py", 1, module=module)
        warnings.warn_explicit("not a deprecation", UserWarning, "f.py", 1, module="timm.models")
    assert [(str(w.message), w.category) for w in shown] == [("x is deprecated", FutureWarning),
                                                             ("not a deprecation", UserWarning)]
    records = []
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Keep()
    rank_zero.addHandler(handler)
    try:
        rank_zero.warning("💡 Tip: For seamless cloud uploads and versioning, try installing [litmodels]")
        rank_zero.warning("lm.pad_token=auto: the tokenizer's own pad token")
    finally:
        rank_zero.removeHandler(handler)
    assert records == ["lm.pad_token=auto: the tokenizer's own pad token"]


# --- through the scripts, as a user types them ------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("mistake,key", [("data=custom", "data.root"), ("trainer.max_epochs=abc", "trainer.max_epochs"),
                                         ("+trainer.max_epoch=1", "trainer.max_epoch")])
def test_train_py_config_mistake_is_one_line_exit_2_and_leaves_no_run_folder(mistake, key, tmp_path, cache_dir):
    run = tmp_path / "outputs" / "train" / "day" / "time"  # none of it exists: all of it is this command's
    r = run_script("train.py", mistake, f"hydra.run.dir={run}", cache_dir=cache_dir, timeout=120)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and err[0].startswith(f"error: {key}") and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(err) == 2  # the message, then the R2GEN_TRACEBACK hint
    assert not (tmp_path / "outputs").exists()  # nothing left: not .hydra/, not config.yaml, not the parents


@pytest.mark.slow
def test_a_folder_the_user_named_that_existed_is_kept(tmp_path, cache_dir):
    run = tmp_path / "mine"
    run.mkdir()
    r = run_script("train.py", "data=custom", f"hydra.run.dir={run}", cache_dir=cache_dir, timeout=120)
    assert r.returncode == 2 and "data.root" in r.stderr
    assert run.is_dir()


@pytest.mark.slow
def test_train_py_prints_no_advertising_tips_and_no_deprecation_notices(tmp_path, cache_dir):
    r = run_script("train.py", *SMALL, "test_after_fit=false", f"hydra.run.dir={tmp_path / 'run'}",
                   cache_dir=cache_dir, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Tip:" not in out and "litmodels" not in out and "litlogger" not in out, out[-3000:]
    assert "DeprecationWarning" not in out and "FutureWarning" not in out and "deprecated" not in out.lower(), out[-3000:]
    assert "lm.pad_token=auto" in out  # r2gen's own notices still show
