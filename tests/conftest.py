"""Hermetic test setup: no network, the real Hydra config composed and shrunk to seconds on a CPU."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # a failed hub lookup otherwise retries for ~46 s
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from html.parser import HTMLParser  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, OmegaConf, open_dict  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid  # noqa: E402

from r2gen.conf import CONF_DIR  # noqa: E402
from r2gen.models.tiny_lm import build_causal_lm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONF = str(CONF_DIR)
SHARED_DATA = ROOT.parent / "shared" / "data"

# A demo small enough for seconds: 32 px, a handful of studies, a 2-layer LM.
SMALL = [
    "data.demo.n_train=24", "data.demo.n_val=6", "data.demo.n_test=6", "data.image_size=32",
    "data.batch_size=8", "data.eval_batch_size=8",
    "lm.build.hidden_size=32", "lm.build.intermediate_size=64", "lm.build.num_hidden_layers=2",
    "lm.build.num_attention_heads=2", "lm.build.num_key_value_heads=2", "lm.build.vocab_size=300",
    "generate.max_new_tokens=8", "generate.num_beams=2",
    "trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.check_val_every_n_epoch=1",
    "trainer.enable_progress_bar=false", "trainer.num_sanity_val_steps=0", "trainer.log_every_n_steps=1",
    "~logger.tensorboard",
]


def compose_cfg(config_name: str, overrides: list[str], output_dir: Path, cache_dir: Path) -> DictConfig:
    """Compose a real config like Hydra's CLI does (with its hydra node, so ${hydra:...} resolves)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.cache_dir = str(cache_dir)
        del cfg["hydra"]  # Hydra's CLI hands the app its config without this node
    return cfg


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One demo set and one tiny LM for the whole session (both are keyed by their parameters)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def make_cfg(tmp_path, cache_dir):
    def make(*overrides: str, config_name: str = "config", small: bool = True) -> DictConfig:
        return compose_cfg(config_name, (SMALL if small else []) + list(overrides), tmp_path / "run", cache_dir)

    return make


def cli_env(cache_dir: Path) -> dict[str, str]:
    """Environment for running train.py / evaluate.py as a user would, in a fresh process."""
    return {**os.environ, "R2GEN_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def run_cli(script: str, *args: str, cache_dir: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `train.py` / `evaluate.py` in a fresh process from the repository root, as a user would."""
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, env=cli_env(cache_dir),
                          capture_output=True, text=True, timeout=timeout)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under `root` with its bytes' hash and mode: equal snapshots mean the tree is
    byte-identical (nothing written, moved, added or deleted)."""
    import hashlib

    out: dict[str, tuple] = {}
    for p in sorted(Path(root).rglob("*")):
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        out[str(p.relative_to(root))] = (digest, st.st_mode)
    return out


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, cache_dir) -> Path:
    """One tiny demo training run (1 epoch) shared by tests that only read its checkpoints."""
    from r2gen.train import train

    out = tmp_path_factory.mktemp("demo_run")
    train(compose_cfg("config", SMALL + ["test_after_fit=false"], out, cache_dir))
    return out


# --- files and pages the tests build and read ------------------------------------------------------------
RAMP = np.tile(np.linspace(0, 4095, 64).round().astype(np.uint16), (32, 1))  # [32, 64], the full 12-bit range


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int = 12,
                **tags) -> Path:
    """A minimal valid DICOM file (Explicit VR Little Endian, 16 bits allocated); `pixels` [H, W] or [F, H, W]."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "CR", "anon"
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


class Page(HTMLParser):
    """Collects what a test checks in report.html: study rows, image sources, every src/href."""

    def __init__(self):
        super().__init__()
        self.rows, self.in_body, self.srcs = 0, False, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.in_body |= tag == "tbody"
        self.rows += tag == "tr" and self.in_body
        self.srcs += [v for k, v in attrs if k in ("src", "href")]
        if tag == "img":
            assert a["src"].startswith("data:image/jpeg;base64,")

    def handle_endtag(self, tag):
        self.in_body &= tag != "tbody"


def parse_page(text: str) -> Page:
    p = Page()
    p.feed(text)
    p.close()
    assert not re.search(r"https?://", text), "report.html must work offline"
    return p


# ------------------------------------------------------------------------------------------ reference protocol


# --- tiny random checkpoints of each LM family (test_lm_families, test_quant, test_verify) ----------------------
# The demo shrink minus its lm.build.* entries, which only lm=tiny has.
SMALL_NO_BUILD = [o for o in SMALL if not o.startswith("lm.build.")]

TEXTS = ["the heart is enlarged .", "no pleural effusion .", "small left pneumothorax .", "the lungs are clear .",
         "mild cardiomegaly without edema ."] * 8
LLAMA_SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": None, "unk_token": "<unk>"}
NEOX_SPECIAL = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": None, "unk_token": "<|endoftext|>"}
DECODER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=256)
GQA = dict(DECODER, num_key_value_heads=2)
# Phi-3's chat template (an instruct model: its yaml wraps the prompt in it)
PHI3_CHAT = ("{% for message in messages %}{{'<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n'}}"
             "{% endfor %}{% if add_generation_prompt %}{{'<|assistant|>\\n'}}{% endif %}")

# family -> (lm yaml whose settings it is tested with, model_type, tokenizer special tokens, extra tokens, config)
FAMILIES = {
    "llama": ("llama2-7b", "llama", LLAMA_SPECIAL, (), GQA),
    "qwen2": ("qwen2-7b", "qwen2", {"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": None,
                                    "unk_token": None}, (), GQA),
    "mistral": ("mistral-7b", "mistral", LLAMA_SPECIAL, (), GQA),
    "stablelm": ("stablelm-3b", "stablelm", NEOX_SPECIAL, (), GQA),
    "gpt_neox": ("pythia-70m", "gpt_neox", NEOX_SPECIAL, (), DECODER),
    "gpt2": ("gpt2", "gpt2", NEOX_SPECIAL, (), dict(n_embd=32, n_layer=1, n_head=2, n_positions=256)),
    "opt": ("opt-125m", "opt", {"bos_token": "</s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"},
            (), dict(hidden_size=32, ffn_dim=64, num_hidden_layers=1, num_attention_heads=2, word_embed_proj_dim=32,
                 max_position_embeddings=256)),
    "bloom": ("bloom-560m", "bloom", {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
                                      "unk_token": "<unk>"}, (), dict(hidden_size=32, n_layer=1, n_head=2)),
    # Gemma scales its input embeddings by sqrt(hidden): the image tokens must go through get_input_embeddings()
    "gemma": ("gemma-2b", "gemma", {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
                                    "unk_token": "<unk>"}, (), dict(GQA, head_dim=16)),
    "phi3": ("phi3-mini", "phi3", {"bos_token": "<s>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                                   "unk_token": "<unk>"}, ("<|user|>", "<|end|>", "<|assistant|>"), GQA),
    # THUDM/glm-4-9b-hf is model_type glm; glm4 is the GLM-4-0414 architecture, which the same yaml settings fit
    "glm": ("glm4-9b", "glm", {"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                               "unk_token": None}, ("[gMASK]", "<sop>"), dict(GQA, head_dim=16)),
    "glm4": ("glm4-9b", "glm4", {"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                                 "unk_token": None}, ("[gMASK]", "<sop>"), dict(GQA, head_dim=16)),
}


def lm_yaml(name: str):
    return OmegaConf.load(ROOT / "r2gen" / "conf" / "lm" / f"{name}.yaml")


def build_family(out_dir: Path, family: str) -> str:
    """A tiny random checkpoint of `family` in `out_dir`, with the family's special tokens (and chat template)."""
    name, model_type, special, extra, kw = FAMILIES[family]
    path = build_causal_lm(out_dir, TEXTS, model_type=model_type, vocab_size=300, special=special,
                           extra_tokens=extra, **kw)
    if lm_yaml(name).prompt.template == "chat":  # an instruct model ships a chat template
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
        tok.chat_template = PHI3_CHAT
        tok.save_pretrained(path)
    return str(path)


def shallow(make_cfg, *overrides, seed=0):
    """A shallow-alignment model (random frozen encoder, seeded) and its datamodule, set up."""
    import pytorch_lightning as pl

    from r2gen import build
    from r2gen.models.module import R2GenModule

    cfg = make_cfg("align=shallow", *overrides)
    build.prepare_data(cfg.data)
    path = build.lm_path(cfg)  # building the LM on first use draws random numbers: before the seed
    pl.seed_everything(seed)
    model = R2GenModule(cfg, lm_path=path)
    dm = build.datamodule(cfg, model)
    dm.setup()
    return cfg, model, dm


def built_once(root: Path, build):
    """`get(name)`: `build(root / name, name)` on first use, its result remembered (tiny checkpoints a module's tests
    share without building the ones a `-k` selection never asks for)."""
    done: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in done:
            done[name] = str(build(root / name, name))
        return done[name]

    return get


def batch(m, b=2, v=2, size=32):
    """A training batch for model `m` as its DataLoader gives one: random images and the reports as `m`'s target ids."""
    from r2gen.data.collate import ReportTargets

    return {"ids": [str(i) for i in range(b)], "images": torch.randn(b, v, 3, size, size),
            "view_mask": torch.ones(b, v, dtype=torch.bool), "reports": TEXTS[:b],
            **ReportTargets(m.tokenizer, m.cfg.data.max_report_tokens).tensors(TEXTS[:b])}


def train_steps(m: torch.nn.Module, b: dict, steps: int, lr: float) -> list[float]:
    """`steps` AdamW steps of everything trainable on one batch; the losses."""
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=lr)
    m.train()
    losses = []
    for _ in range(steps):
        loss = m(b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
