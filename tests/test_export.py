"""`python -m r2gen.export`: a checkpoint as a self-contained Hugging Face folder (`part=all`) or its LM alone with
LoRA merged (`part=lm`).

The fast tests export the session's demo checkpoint and one LoRA checkpoint (LoRA on the LM and on the encoder) in
process, load the folder through its own code (not r2gen's) and compare with `r2gen.predict.predict` on the same
images: the same model inputs and image tokens, the same reports. The slow ones run the export command, delete the
run's cache (demo data, the locally built LM) and load the folder with `AutoModel.from_pretrained(...,
trust_remote_code=True)` in a fresh process where r2gen (and, for `part=lm`, peft) cannot be imported. A model
trained with context (`context.*`, on the longitudinal demo) is compared with the checkpoint's
`R2GenModule.generate` on the run's own test batches: each study's indication, prior report and prior images given
to `generate_reports` give the same LM input and the same reports.
"""

from __future__ import annotations

import ast
import errno
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

import r2gen
from r2gen.errors import ConfigError, StorageError, UnsafeWriteError
from r2gen.export import EXPORTED, export, import_exported
from r2gen.models.module import R2GenModule
from r2gen.predict import predict
from r2gen.scoring.nlg import METRIC_NAMES
from r2gen.train import train

from .helpers.cli import cli_env, run_cli
from .helpers.config import SMALL, compose_cfg
from .helpers.dicom import RAMP, write_dicom
from .helpers.files import read_jsonl, snapshot

FAST = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false"]
# LoRA on the LM and on the encoder (align=delta). timm's ResNets start each residual branch's last BatchNorm at
# zero, which would keep the encoder's adapters at zero (they sit in those branches): start it at one instead.
LORA = ["lm.freeze=true", "lm.lora.r=4", "align=delta", "+encoder.kwargs.zero_init_last=false"]
# The longitudinal demo (SMALL's sizes, so it is the set test_longitudinal.py generates in the same cache) with every
# context part the export carries but the comparison line; a small max_tokens, so the prior report is cut.
CONTEXT = ["data=demo_longitudinal", "context.prior_images=true", "context.prior_report=true",
           "context.indication=true", "context.max_tokens=16", "trainer.limit_train_batches=2",
           "trainer.limit_val_batches=0", "~callbacks.best_checkpoint", "test_after_fit=false"]  # no scoring: last.ckpt


def run_export(ckpt, out, *overrides, tmp_path, cache_dir) -> Path:
    """`python -m r2gen.export ckpt=<ckpt> out=<out> <overrides>`, in process."""
    o = [f"ckpt={ckpt}", f"out={out}", *overrides]
    return export(compose_cfg("export", o, tmp_path / "export-run", cache_dir), overrides=o)


def run_predict(ckpt, folder, *overrides, tmp_path, cache_dir) -> tuple[list[dict], list[tuple]]:
    """predict.py's rows for the studies in `folder`, and what its model saw: (images, view mask, image tokens)."""
    seen, generate = [], R2GenModule.generate

    def spy(self, images, view_mask, features=None, batch=None):
        seen.append((images.clone(), view_mask.clone(), self.encode_images(images, view_mask)[0]))
        return generate(self, images, view_mask, features, batch)

    o = [f"ckpt={ckpt}", f"input={folder}", *FAST, *overrides]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(R2GenModule, "generate", spy)
        path = predict(compose_cfg("predict", o, tmp_path / f"predict-run{len(list(tmp_path.glob('predict-run*')))}",
                                   cache_dir), overrides=o)
    return read_jsonl(path), seen


def load(folder: Path):
    """The exported model through the folder's own code (what `trust_remote_code=True` runs), in this process."""
    return import_exported(folder).R2GenModel.from_pretrained(folder)


def image(path: Path, seed: int, size=(48, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)).save(path)
    return path


def studies_folder(root: Path, demo_images: Path, n_demo: int = 4) -> Path:
    """predict.py's input: demo studies (two views each), a one-image PNG, a JPEG and a MONOCHROME1 DICOM study (one
    view: with `concat` fusion their sequences are shorter, so the batch is left-padded)."""
    ann = json.loads((demo_images.parent / "annotation.json").read_text())["test"][:n_demo]
    for i, e in enumerate(ann):
        for j, p in enumerate(e["image_path"]):
            (root / f"d{i}").mkdir(parents=True, exist_ok=True)
            shutil.copy(demo_images / p, root / f"d{i}" / f"{j}{Path(p).suffix}")
    image(root / "png" / "a.png", 1)
    image(root / "jpg" / "a.jpg", 2)
    (root / "dcm").mkdir()
    write_dicom(root / "dcm" / "a.dcm", RAMP, photometric="MONOCHROME1")
    return root


def top_modules(node: ast.Import | ast.ImportFrom) -> list[str]:
    """The packages an import statement imports from (none for a relative import)."""
    if isinstance(node, ast.Import):
        return [a.name.split(".")[0] for a in node.names]
    return [(node.module or "").split(".")[0]] if node.level == 0 else []


def as_lists(rows: list[dict]) -> list[list[str]]:
    return [r["images"] for r in rows]


# --- fixtures: one export per checkpoint, shared --------------------------------------------------------------------
@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, cache_dir) -> Path:
    out = tmp_path_factory.mktemp("lora_run")
    train(compose_cfg("config", SMALL + LORA + ["test_after_fit=false"], out, cache_dir))
    return out


@pytest.fixture(scope="module")
def studies(tmp_path_factory, cache_dir, demo_run) -> Path:
    return studies_folder(tmp_path_factory.mktemp("studies") / "new", cache_dir / "demo" / "images")


@pytest.fixture(scope="module")
def exports(tmp_path_factory, cache_dir, demo_run, lora_run) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("exports")
    runs = {"demo": demo_run, "lora": lora_run}
    before = {k: snapshot(r) for k, r in runs.items()}
    out = {k: run_export(r / "checkpoints" / "last.ckpt", tmp / k, tmp_path=tmp, cache_dir=cache_dir)
           for k, r in runs.items()}
    out["lora-lm"] = run_export(lora_run / "checkpoints" / "last.ckpt", tmp / "lora-lm", "part=lm", tmp_path=tmp,
                                cache_dir=cache_dir)
    assert {k: snapshot(r) for k, r in runs.items()} == before  # the checkpoints and run folders are only read
    assert not [p for p in tmp.iterdir() if p.name.startswith(".")]  # no temporary folder left behind
    return out


@pytest.fixture(scope="module")
def context_run(tmp_path_factory, cache_dir) -> Path:
    out = tmp_path_factory.mktemp("context_run")
    train(compose_cfg("config", SMALL + CONTEXT, out, cache_dir))
    return out


@pytest.fixture(scope="module")
def context_export(tmp_path_factory, cache_dir, context_run) -> Path:
    tmp = tmp_path_factory.mktemp("context_export")
    return run_export(context_run / "checkpoints" / "last.ckpt", tmp / "ctx", tmp_path=tmp, cache_dir=cache_dir)


def generate_inputs(lm, calls: list) -> None:
    """Record what `lm.generate` is called with (inputs_embeds, attention_mask), on this instance only."""
    generate = lm.generate

    def spy(*args, **kwargs):
        calls.append((kwargs["inputs_embeds"].clone(), kwargs["attention_mask"].clone()))
        return generate(*args, **kwargs)

    lm.generate = spy


@pytest.fixture(scope="module")
def context_reference(tmp_path_factory, cache_dir, context_run) -> dict:
    """The checkpoint's reports for its test split, batch by batch from the run's own datamodule and collator
    (R2GenModule.generate), what its LM was given, and each study as a user gives it to `generate_reports`: image
    paths, its indication, its prior study's images and (raw) report, from the data set's annotation."""
    from r2gen.build import datamodule, load_model, rebuild
    from r2gen.data.annotations import read_studies

    o = [f"ckpt={context_run / 'checkpoints' / 'last.ckpt'}", *FAST]
    ck, run = rebuild(compose_cfg("evaluate", o, tmp_path_factory.mktemp("ctx_eval"), cache_dir), o)
    model = load_model(run, ck).eval()
    dm = datamodule(run, model, splits=("test",))
    calls, reports = [], []
    generate_inputs(model.lm_model, calls)
    for batch in dm.test_dataloader():
        reports += model.generate(batch["images"], batch["view_mask"], batch=batch)
    entries = read_studies(run.data, ("test",))["test"]
    assert [e["id"] for e in entries] == list(dm.splits["test"].table.ids)
    by_id = {e["id"]: e for e in entries}
    images = lambda e: [str(Path(run.data.image_dir) / p) for p in e["image_path"]]  # noqa: E731
    priors = [by_id.get(e["prior_id"]) for e in entries]
    return {"reports": reports, "inputs": calls, "studies": [images(e) for e in entries],
            "indications": [e.get("indication") for e in entries],
            "prior_studies": [images(p) if p else None for p in priors],
            "prior_reports": [p["report"] if p else None for p in priors]}


def context_of_studies(ref: dict) -> dict:
    return {k: ref[k] for k in ("indications", "prior_studies", "prior_reports")}


def ckpt_of(name: str, demo_run: Path, lora_run: Path) -> Path:
    return {"demo": demo_run, "lora": lora_run}[name] / "checkpoints" / "last.ckpt"


# --- part=all --------------------------------------------------------------------------------------------------------
def test_the_export_is_a_self_contained_hugging_face_folder(exports):
    folder = exports["demo"]
    assert {p.name for p in folder.iterdir()} == {*EXPORTED, "config.json", "model.safetensors", "README.md",
                                                   "tokenizer.json", "tokenizer_config.json"}
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "r2gen"
    assert config["auto_map"] == {"AutoConfig": "configuration_r2gen.R2GenConfig",
                                  "AutoModel": "modeling_r2gen.R2GenModel"}
    assert config["encoder"] == {"name": "resnet10t", "kwargs": {}, "image_size": 32, "fusion": "concat"}
    assert config["num_views"] == 2 and config["clean"] == "iu_xray" and config["batch_size"] == 8
    assert config["image"]["size"] == 32 and len(config["image"]["mean"]) == len(config["image"]["std"]) == 3
    assert config["lm_config"]["model_type"] == "llama" and "_name_or_path" not in config["lm_config"]
    assert config["generate"]["num_beams"] == 2 and config["generate"]["max_new_tokens"] == 8  # SMALL's
    assert config["prompt"]["prefix"][0] == 0 and config["prompt"]["suffix"]  # BOS, "Image:" ... "Report:"
    for name, src in EXPORTED.items():  # verbatim: standalone as test_the_exported_files_are_standalone checks
        assert (folder / name).read_bytes() == src.read_bytes(), name
    with safe_open(folder / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert {k.split(".")[0] for k in keys} == {"encoder", "lm_proj", "lm_norm", "lm_model"}
    card = (folder / "README.md").read_text()
    assert 'AutoModel.from_pretrained("<this folder>", trust_remote_code=True)' in card
    assert "24 training studies" in card and "`resnet10t`" in card and "## Licence" in card
    assert "No test scores" in card  # the demo run was trained with test_after_fit=false


def catches_import_error(node: ast.Try) -> bool:
    """Whether a `try` has an `except ImportError` (or ModuleNotFoundError) handler: the fallback without r2gen."""
    caught = {n.id for h in node.handlers if h.type is not None for n in ast.walk(h.type) if isinstance(n, ast.Name)}
    return bool(caught & {"ImportError", "ModuleNotFoundError"})


def test_the_exported_files_are_standalone():
    """Each file `EXPORTED` copies into the folder imports only the standard library, the packages the model card
    names and the other exported files (relatively), and r2gen (its error types or another exported file) only in
    the body of a `try` whose `except ImportError` is the fallback: the folder runs where r2gen is not installed."""
    allowed = {*sys.stdlib_module_names, "torch", "torchvision", "timm", "transformers", "numpy", "PIL", "pydicom"}
    package = Path(r2gen.__file__).resolve().parent
    stems = {Path(name).stem for name in EXPORTED}
    in_r2gen = {"r2gen.errors"} | {"r2gen." + ".".join(src.relative_to(package).with_suffix("").parts)
                                   for src in EXPORTED.values()}
    for src in EXPORTED.values():
        tree = ast.parse(src.read_text())
        fallback = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try) and catches_import_error(t)
                    for b in t.body for n in ast.walk(b)}
        for node in ast.walk(tree):
            where = f"{src}:{getattr(node, 'lineno', '')}"
            if isinstance(node, ast.Call):  # no import by name at run time, which the checks below would not see
                assert ast.unparse(node.func).split(".")[-1] not in ("import_module", "__import__"), where
            elif isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1, where
                assert ({node.module} if node.module else {a.name for a in node.names}) <= stems, where
            elif isinstance(node, (ast.Import, ast.ImportFrom)) and "r2gen" in top_modules(node):
                if isinstance(node, ast.Import):
                    targets = {a.name for a in node.names}
                elif node.module == "r2gen":  # from r2gen import errors
                    targets = {f"r2gen.{a.name}" for a in node.names}
                else:
                    targets = {node.module}
                assert id(node) in fallback and targets <= in_r2gen, where
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                assert set(top_modules(node)) <= allowed, where


@pytest.mark.parametrize("name", ["demo", "lora"])
def test_the_exported_model_writes_predict_py_s_reports(name, exports, studies, demo_run, lora_run, tmp_path,
                                                         cache_dir):
    """Same inputs (images and view masks bit for bit), same image tokens (bit for bit; the encoder's merged LoRA
    within float rounding), same reports: PNG, JPEG and DICOM paths, and PIL images."""
    rows, seen = run_predict(ckpt_of(name, demo_run, lora_run), studies, tmp_path=tmp_path, cache_dir=cache_dir)
    model = load(exports[name])
    assert type(model).__module__.startswith("r2gen_export_")  # the folder's code, not r2gen's
    images, mask = model.preprocess(as_lists(rows))
    (seen_images, seen_mask, seen_tokens), = seen  # one batch of eval_batch_size=8
    assert torch.equal(images, seen_images) and torch.equal(mask, seen_mask)
    with torch.no_grad():
        tokens = model(images, mask)[0]
    if name == "demo":
        assert torch.equal(tokens, seen_tokens)
    else:
        torch.testing.assert_close(tokens, seen_tokens, rtol=0, atol=1e-5)
    assert model.generate_reports(as_lists(rows)) == [r["report"] for r in rows]
    with Image.open(rows[0]["images"][0]) as a, Image.open(rows[0]["images"][1]) as b:
        assert model.generate_reports([[a, b]]) == [rows[0]["report"]]


def test_generate_kwargs_and_batch_size_match_predict_py_s_overrides(exports, studies, lora_run, tmp_path, cache_dir):
    rows, seen = run_predict(lora_run / "checkpoints" / "last.ckpt", studies, "generate.num_beams=1",
                             "generate.max_new_tokens=5", "data.eval_batch_size=3", tmp_path=tmp_path,
                             cache_dir=cache_dir)
    assert len(seen) == 3  # 7 studies in batches of 3
    model = load(exports["lora"])
    reports = model.generate_reports(as_lists(rows), batch_size=3, num_beams=1, max_new_tokens=5)
    assert reports == [r["report"] for r in rows]
    assert model.lm_model.generation_config.num_beams == 2  # the stored config is unchanged
    with pytest.raises(ValueError, match="not generation options: beams"):
        model.generate_reports(as_lists(rows)[:1], beams=1)


def test_save_pretrained_round_trips(exports, studies, tmp_path):
    model = load(exports["lora"])
    paths = [[str(p) for p in sorted(d.iterdir())] for d in sorted(studies.iterdir())]
    model.save_pretrained(tmp_path / "copy")
    assert {*EXPORTED, "config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in
                                                                                 (tmp_path / "copy").iterdir()}
    copy = load(tmp_path / "copy")
    a, b = model.state_dict(), copy.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert copy.generate_reports(paths) == model.generate_reports(paths)


def test_a_model_without_context_takes_no_context_keywords(exports, studies):
    model = load(exports["demo"])
    assert model.config.context == {"parts": [], "max_tokens": 128, "prior_images": False}
    assert model.study_marker is None and model.context_keywords == ()
    paths = [[str(p) for p in sorted(d.iterdir())] for d in sorted(studies.iterdir())][:2]
    with pytest.raises(ValueError, match=r"indications= was given, but this model does not read a study's "
                                         r"indication: it reads no context"):
        model.generate_reports(paths, indications=["cough", None])
    assert "### Each study's context" not in (exports["demo"] / "README.md").read_text()


# --- part=all of a model that reads each study's context -------------------------------------------------------------
def test_a_context_model_writes_the_checkpoint_s_reports(context_export, context_reference, caplog):
    """The run's context settings and study marker in the folder; given each study's indication, prior images and
    prior report, the exported model's LM gets the inputs r2gen's gets from the run's collated test batches (bit for
    bit, prior span, marker, masking and the cut context text included) and writes the same reports."""
    folder, ref = context_export, context_reference
    config = json.loads((folder / "config.json").read_text())
    assert config["context"] == {"parts": ["indication", "prior_report"], "max_tokens": 16, "prior_images": True}
    with safe_open(folder / "model.safetensors", "pt") as f:
        assert f.get_tensor("study_marker.weight").abs().sum() > 0  # trained away from its zero start
    model = load(folder)
    assert model.context_keywords == ("indications", "prior_reports", "prior_studies")
    assert any(ref["prior_studies"]) and None in ref["prior_studies"]  # first studies and follow-ups
    calls = []
    generate_inputs(model.lm_model, calls)
    reports = model.generate_reports(ref["studies"], **context_of_studies(ref))
    assert len(calls) == len(ref["inputs"]) >= 2  # batches of data.eval_batch_size=8, as evaluated
    for (emb, attn), (ref_emb, ref_attn) in zip(calls, ref["inputs"], strict=True):
        assert torch.equal(attn, ref_attn) and torch.equal(emb, ref_emb)
    assert reports == ref["reports"]
    with caplog.at_level(logging.WARNING):  # none of the context given: every study read as a first study, once
        plain = model.generate_reports(ref["studies"][:8])
        model.generate_reports(ref["studies"][:1])
    warned = [r.message for r in caplog.records if "generate_reports was given none of them" in r.getMessage()]
    assert len(warned) == 1 and "pass indications=, prior_reports=, prior_studies=" in caplog.text
    assert plain != reports[:8]  # the model reads the context
    card = (folder / "README.md").read_text()
    assert "### Each study's context" in card and "prior_studies=[" in card and "at most 16 tokens" in card


def test_a_study_without_a_prior_or_an_indication_is_written_none(context_export, context_reference):
    """None entries and left-out keywords are what r2gen gives a first study with no indication: the text parts
    written `none`, the prior span masked out (whatever the images of a study that is not there)."""
    model, ref = load(context_export), context_reference
    first = ref["studies"][:1] * 2
    explicit = model.generate_reports(first, indications=[None, ""], prior_studies=[None, None],
                                      prior_reports=[None, None])
    assert model.generate_reports(first, indications=[None, None]) == explicit
    assert explicit[0] == explicit[1]
    ids, lengths = model.context_tokens({"indications": ["", None], "prior_reports": [None, " . "]}, 2)
    none = model.tokenizer("indication: none. prior report: none.", add_special_tokens=False).input_ids[:16]
    assert lengths.tolist() == [len(none)] * 2 and ids.tolist() == [none] * 2  # cut to context.max_tokens=16


def test_context_keywords_are_checked(context_export, context_reference):
    model, ref = load(context_export), context_reference
    studies = ref["studies"][:2]
    with pytest.raises(ValueError, match=r"comparisons= was given, but this model does not read a study's "
                                         r"comparison: it reads indications=, prior_reports=, prior_studies="):
        model.generate_reports(studies, comparisons=["none", None])
    with pytest.raises(ValueError, match=r"prior_reports has 1 entries for 2 studies: give one per study"):
        model.generate_reports(studies, prior_reports=["x"])
    with pytest.raises(ValueError, match=r"prior_studies has 3 entries for 2 studies"):
        model.generate_reports(studies, prior_studies=[None] * 3)
    with pytest.raises(TypeError, match=r"indications is a str: give a list"):
        model.generate_reports(studies, indications="cough")
    with pytest.raises(TypeError, match=r"prior_studies\[0\] is a str: a prior study is a list of images"):
        model.generate_reports(studies, prior_studies=[studies[1][0], None])
    with pytest.raises(ValueError, match=r"prior_studies\[1\] has no image: give None"):
        model.generate_reports(studies, prior_studies=[None, []])


# --- part=lm ---------------------------------------------------------------------------------------------------------
def test_part_lm_is_the_lm_alone_with_lora_merged(exports, lora_run, tmp_path, cache_dir):
    from transformers import AutoModelForCausalLM

    from r2gen.build import load_model, rebuild

    folder = exports["lora-lm"]
    assert not list(folder.glob("*.py")) and not list(folder.glob("adapter*"))
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and "auto_map" not in config and "quantization_config" not in config
    lm = AutoModelForCausalLM.from_pretrained(folder).eval()
    o = [f"ckpt={lora_run / 'checkpoints' / 'last.ckpt'}"]
    ck, run = rebuild(compose_cfg("predict", [*o, "input=x"], tmp_path / "r", cache_dir), o)
    ours = load_model(run, ck).eval().lm_model
    assert type(ours).__name__ == "PeftModelForCausalLM"  # with its adapters, not merged
    ids = torch.randint(0, lm.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(lm(input_ids=ids).logits, ours(input_ids=ids).logits, rtol=0, atol=1e-5)
    assert (folder / "tokenizer.json").is_file() and "(merged)" in (folder / "README.md").read_text()


# --- what is refused ---------------------------------------------------------------------------------------------------
def test_out_must_be_new_or_empty_and_the_checkpoint_is_only_read(demo_run, tmp_path, cache_dir):
    ckpt = demo_run / "checkpoints" / "last.ckpt"
    before = snapshot(demo_run)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine\n")
    with pytest.raises(UnsafeWriteError, match=r"out=.*mine exists and is not an empty folder"):
        run_export(ckpt, mine, tmp_path=tmp_path, cache_dir=cache_dir)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    with pytest.raises(UnsafeWriteError, match="not an empty folder"):
        run_export(ckpt, mine / "notes.txt", tmp_path=tmp_path, cache_dir=cache_dir)
    assert (mine / "notes.txt").read_text() == "mine\n"
    (tmp_path / "empty").mkdir()
    run_export(ckpt, tmp_path / "empty", "part=lm", tmp_path=tmp_path, cache_dir=cache_dir)  # an empty folder is fine
    assert (tmp_path / "empty" / "config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind
    assert snapshot(demo_run) == before


def test_a_full_disk_leaves_nothing_behind(demo_run, tmp_path, cache_dir, monkeypatch):
    import r2gen.export.exporter as mod

    def full(model, lm, run, folder):
        (folder / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mod, "write_model", full)
    with pytest.raises(StorageError, match=r"could not write out=.*new: No space left on device; nothing was written"):
        run_export(demo_run / "checkpoints" / "last.ckpt", tmp_path / "new", tmp_path=tmp_path, cache_dir=cache_dir)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") or p.name == "new"]


def test_a_context_switch_the_export_does_not_carry_is_refused(context_run, tmp_path, cache_dir, monkeypatch):
    """A context.* switch generate_reports cannot take (as a new one would be) is refused, not silently dropped."""
    import r2gen.export.exporter as mod

    monkeypatch.setattr(mod, "CARRIED", ("indication", "prior_report"))
    with pytest.raises(ConfigError, match=r"context.prior_images=true: .*generate_reports does not take yet \(it takes "
                                          r"indication, prior_report\); export part=lm"):
        run_export(context_run / "checkpoints" / "last.ckpt", tmp_path / "x", tmp_path=tmp_path, cache_dir=cache_dir)
    assert not (tmp_path / "x").exists()


def test_quantized_lms_and_unknown_parts_are_refused(demo_run, tmp_path, cache_dir):
    ckpt = demo_run / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match="quant=4bit: .*add quant=none"):
        run_export(ckpt, tmp_path / "q", "quant=4bit", tmp_path=tmp_path, cache_dir=cache_dir)
    with pytest.raises(ConfigError, match="part='adapters': choose all .* or lm"):
        run_export(ckpt, tmp_path / "p", "part=adapters", tmp_path=tmp_path, cache_dir=cache_dir)
    assert not (tmp_path / "q").exists() and not (tmp_path / "p").exists()


# --- a colleague's machine: a fresh process, no r2gen, no cache ------------------------------------------------------
COLLEAGUE = """
import importlib.util, json, sys
sys.modules["r2gen"] = None  # the import system's own block: `import r2gen` fails, find_spec says there is none
{block_peft}
assert importlib.util.find_spec("r2gen") is None
try:
    import r2gen  # noqa: F401
    raise SystemExit("r2gen is importable")
except ImportError:
    pass
args = json.loads(sys.argv[1])
{body}
"""
MODEL = """
from PIL import Image
from transformers import AutoModel
model = AutoModel.from_pretrained(args["folder"], trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules.")
out = {"reports": model.generate_reports(args["studies"])}
with Image.open(args["studies"][0][0]) as a, Image.open(args["studies"][0][1]) as b:
    out["pil"] = model.generate_reports([[a, b]])
model.save_pretrained(args["copy"])
out["copy"] = AutoModel.from_pretrained(args["copy"], trust_remote_code=True).generate_reports(args["studies"])
print(json.dumps(out))
"""
LM = """
import torch
from transformers import AutoModelForCausalLM
lm = AutoModelForCausalLM.from_pretrained(args["folder"]).eval()
with torch.no_grad():
    print(json.dumps(lm(input_ids=torch.tensor(args["ids"])).logits.tolist()))
"""


def colleague(body: str, args: dict, tmp_path: Path, block_peft: bool = False) -> str:
    """Run `body` in a fresh `python -I` (no PYTHONPATH, no user site), from a folder outside the repository, with
    r2gen blocked; its stdout."""
    script = tmp_path / "colleague.py"
    script.write_text(COLLEAGUE.format(body=body, block_peft='sys.modules["peft"] = None' if block_peft else ""))
    env = {**cli_env(tmp_path), "HF_MODULES_CACHE": str(tmp_path / "modules")}  # where transformers copies the code
    r = subprocess.run([sys.executable, "-I", str(script), json.dumps(args)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["demo", "lora"])
def test_a_colleague_without_r2gen_gets_predict_py_s_reports(name, tmp_path):
    """The export command in a fresh process; the run's cache (demo data, the locally built LM) deleted; then the
    folder loaded with AutoModel + trust_remote_code in a process where r2gen cannot be imported: predict.py's
    reports, for paths and PIL images, also from a save_pretrained copy. For the LoRA run, `part=lm` loads with
    AutoModelForCausalLM, peft blocked too, and gives the logits of r2gen's LM with its adapters."""
    cache = tmp_path / "cache"  # this test's own, deleted below
    run = tmp_path / "run"
    extra = LORA if name == "lora" else []
    train(compose_cfg("config", SMALL + extra + ["test_after_fit=true"], run, cache))
    ckpt = run / "checkpoints" / "best.ckpt"
    folder = studies_folder(tmp_path / "studies", cache / "demo" / "images")
    r = run_cli("-m", "r2gen.export", f"ckpt={ckpt}", f"out={tmp_path / 'export'}", f"hydra.run.dir={tmp_path / 'h'}",
                cache_dir=cache)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"the model exported to {tmp_path / 'export'}" in r.stdout
    rows, _ = run_predict(ckpt, folder, tmp_path=tmp_path, cache_dir=cache)
    metrics = json.loads((run / "test" / "metrics.json").read_text())
    card = (tmp_path / "export" / "README.md").read_text()
    keys = [k for k in (*METRIC_NAMES, "finding_f1_macro") if k in metrics]
    assert "| " + " | ".join(f"{metrics[k]:.3f}" for k in keys) + " |" in card and "not of the exported" not in card
    logits = ids = None
    if name == "lora":
        assert run_cli("-m", "r2gen.export", f"ckpt={ckpt}", f"out={tmp_path / 'lm'}", "part=lm",
                       f"hydra.run.dir={tmp_path / 'h2'}", cache_dir=cache).returncode == 0
        from r2gen.build import load_model, rebuild

        o = [f"ckpt={ckpt}"]
        ck, cfg = rebuild(compose_cfg("predict", [*o, "input=x"], tmp_path / "r", cache), o)
        vocab = json.loads((tmp_path / "lm" / "config.json").read_text())["vocab_size"]
        ids = torch.randint(0, vocab, (2, 10), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            logits = load_model(cfg, ck).eval().lm_model(input_ids=ids).logits
    shutil.rmtree(cache)

    out = json.loads(colleague(MODEL, {"folder": str(tmp_path / "export"), "studies": as_lists(rows),
                                       "copy": str(tmp_path / "copy")}, tmp_path))
    expected = [r["report"] for r in rows]
    assert out["reports"] == expected and out["copy"] == expected and out["pil"] == expected[:1]
    if name == "lora":
        theirs = colleague(LM, {"folder": str(tmp_path / "lm"), "ids": ids.tolist()}, tmp_path, block_peft=True)
        torch.testing.assert_close(torch.tensor(json.loads(theirs)), logits, rtol=0, atol=1e-5)


CONTEXT_MODEL = """
from transformers import AutoModel
model = AutoModel.from_pretrained(args["folder"], trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules.")
print(json.dumps(model.generate_reports(args["studies"], **args["context"])))
"""


@pytest.mark.slow
def test_a_colleague_without_r2gen_gives_each_study_s_context(context_export, context_reference, tmp_path):
    """The context model's folder loaded with AutoModel + trust_remote_code where r2gen cannot be imported: given
    each study's indication, prior images and prior report, the checkpoint's reports."""
    ref = context_reference
    out = colleague(CONTEXT_MODEL, {"folder": str(context_export), "studies": ref["studies"],
                                    "context": context_of_studies(ref)}, tmp_path)
    assert json.loads(out) == ref["reports"]


@pytest.mark.slow
def test_the_export_command_refuses_a_folder_with_files_in_one_line(demo_run, tmp_path, cache_dir):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "a.txt").write_text("x")
    r = run_cli("-m", "r2gen.export", f"ckpt={demo_run / 'checkpoints' / 'last.ckpt'}", f"out={mine}",
                f"hydra.run.dir={tmp_path / 'h'}", cache_dir=cache_dir)
    assert r.returncode == 2 and r.stderr.startswith(f"error: out={mine} exists and is not an empty folder")
    assert [p.name for p in mine.iterdir()] == ["a.txt"]
