"""Images that declare far more pixels than they hold ("decompression bombs") are refused from their header, by
the set-up check (training), predict.py and the image reader itself: in one line naming the file, the declared
size and `data.max_image_pixels`, in milliseconds and without memory. Real radiographs still load. The bombs are
built in tests/helpers/bombs.py without ever holding their pixels."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate

from r2gen.data.images import ImageTooLarge, dicom_to_uint8, image_problem, load_image
from r2gen.errors import ConfigError, InputError
from r2gen.predict import predict
from r2gen.train import train

from .helpers import bombs
from .helpers.cli import run_cli
from .helpers.config import SMALL
from .helpers.dicom import header, write_dicom
from .helpers.paths import ROOT

BUDGET = 64_000_000  # conf/data/*.yaml's data.max_image_pixels
SAYS = {  # bomb -> the declared size its refusal must state
    "deflated.dcm": "16384x16384 pixels, 8 bit = 256.0 MiB",
    "bomb.png": "13000x13000 pixels, 1 bit = 161.2 MiB",
    "rle.dcm": "65535x65535 pixels, 16 bit = 8.0 GiB",
}
ADMIT = {"deflated.dcm": 268435456, "bomb.png": 169000000, "rle.dcm": 4294836225}  # the budget that admits each


@pytest.fixture(scope="session")
def bomb_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bombs")
    bombs.deflated_dicom(d / "deflated.dcm")
    bombs.one_bit_png(d / "bomb.png")
    bombs.rle_dicom(d / "rle.dcm")
    return d


def says_all(message: str, path: Path, named: bool = True) -> None:
    """`message` is one line stating the bomb's declared size, the budget key and the value that admits it (and,
    `named`, the file)."""
    name = path.name
    assert not named or str(path) in message, message
    assert SAYS[name] in message and f"data.max_image_pixels={BUDGET}" in message, message
    assert f"set data.max_image_pixels={ADMIT[name]}" in message and "\n" not in message, message


MEASURE = """
import json, resource, sys, time
from r2gen.data.images import ImageTooLarge, image_problem, load_image
out = {}
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for path in sys.argv[1:]:
    t = time.perf_counter()
    reason = image_problem(path, 64_000_000)
    try:
        load_image(path, 64_000_000)
        loaded = "loaded"
    except ImageTooLarge as e:
        loaded = str(e)
    out[path] = {"problem": reason, "load": loaded, "s": time.perf_counter() - t}
out["rss_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
print(json.dumps(out))
"""


def test_each_bomb_is_refused_from_its_header_fast_and_without_memory(bomb_dir):
    """In a fresh process capped at 2 GB of address space (the RLE bomb alone asks for 8 GiB): the set-up check's
    verdict and the loader's refusal for each, each in well under a second, the peak RSS up by < 50 MB."""
    paths = [str(bomb_dir / n) for n in SAYS]
    r = subprocess.run([sys.executable, "-W", "ignore::DeprecationWarning", "-c", MEASURE, *paths], cwd=ROOT,
                       capture_output=True, text=True, timeout=120,
                       preexec_fn=lambda: __import__("resource").setrlimit(
                           __import__("resource").RLIMIT_AS, (2 << 30, 2 << 30)))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.splitlines()[-1])
    for p in paths:
        says_all(out[p]["problem"], Path(p), named=False)  # the set-up check names the file (and its study)
        assert out[p]["load"].startswith(f"{p}: ") and out[p]["load"].endswith("(or more) to read it")
        assert out[p]["s"] < 1.0, out[p]
    assert out["rss_mb"] < 50, out


def test_a_radiograph_sized_16_bit_dicom_still_loads_in_a_few_bytes_a_pixel(tmp_path):
    """3000x2500 16-bit (15 MB of pixels): admitted, decoded, and the display pipeline never holds a float64 copy
    of the image (that alone would be 60 MB)."""
    big = (np.arange(3000 * 2500, dtype=np.uint32) % 4096).astype(np.uint16).reshape(3000, 2500)
    path = write_dicom(tmp_path / "cr.dcm", big, RescaleSlope=1.5, RescaleIntercept=-100)
    del big
    assert image_problem(path, BUDGET) is None
    tracemalloc.start()
    try:
        img = dicom_to_uint8(path, BUDGET)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert img.shape == (3000, 2500) and img.dtype == np.uint8 and img.min() == 0 and img.max() == 255
    assert peak < 50e6, f"{peak / 1e6:.0f} MB traced for a 15 MB image"
    assert load_image(path, BUDGET).size == (2500, 3000)


def test_the_budget_is_the_key_and_raising_it_admits_the_image(tmp_path):
    path = write_dicom(tmp_path / "a.dcm", np.zeros((40, 50), np.uint16))
    assert "40x50 pixels, 16 bit = 3.9 KiB decoded: over the pixel budget data.max_image_pixels=1999" in (
        image_problem(path, 1999))
    assert image_problem(path, 2000) is None and load_image(path, 2000).size == (50, 40)
    with pytest.raises(ImageTooLarge, match=r"a\.dcm: 40x50 pixels.*set data\.max_image_pixels=2000 \(or more\)"):
        load_image(path, 1999)


def deflated(src: Path, dst: Path) -> Path:
    ds = pydicom.dcmread(src)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    ds.save_as(dst, enforce_file_format=True)
    return dst


def test_a_deflated_dicom_reads_as_its_explicit_twin_and_a_cut_one_is_truncated(tmp_path):
    frames = (np.arange(3 * 60 * 80) % 4096).astype(np.uint16).reshape(3, 60, 80)
    plain = write_dicom(tmp_path / "plain.dcm", frames, WindowCenter=2048, WindowWidth=2048)
    z = deflated(plain, tmp_path / "z.dcm")
    assert image_problem(z, BUDGET) is None
    assert np.array_equal(dicom_to_uint8(z, BUDGET), dicom_to_uint8(plain, BUDGET))
    assert "60x80x3 frames pixels, 16 bit" in image_problem(z, 3 * 60 * 80 - 1)  # frames count
    data = z.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) // 2])
    assert "truncated DICOM pixel data" in image_problem(tmp_path / "cut.dcm", BUDGET)


@pytest.mark.parametrize("tag,says", [
    (0x00291010, "a deflated DICOM whose header inflates past 16.0 MiB without reaching its pixel data"),
    (0xFFFCFFFC, "a deflated DICOM that inflates to more than 16.0 MiB, past the 128 bytes of pixels its header"),
])
def test_a_deflated_dicom_that_inflates_past_what_it_declares_is_refused(tmp_path, tag, says):
    """A small declared image with 40 MB of zeros before (a private element) or after (trailing padding) its
    pixel data: the inflation stops at 16 MiB past what the header declares, before holding the rest."""
    ds = pydicom.dcmread(write_dicom(tmp_path / "s.dcm", np.zeros((8, 8), np.uint16)))
    ds.add_new(tag, "OB", bytes(40 << 20))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "z.dcm", enforce_file_format=True)
    del ds
    assert image_problem(tmp_path / "z.dcm", BUDGET).startswith(says)
    with pytest.raises(ImageTooLarge, match=says):
        load_image(tmp_path / "z.dcm", BUDGET)


def test_a_decoder_failure_says_why_not_that_all_plugins_failed(tmp_path):
    ds = header(64, 64, bits_stored=16, transfer_syntax=pydicom.uid.RLELossless)
    ds.PixelData = encapsulate([struct.pack("<16I", 2, 64, 66, *([0] * 13)) + b"\x81\x00\x81\x00"])
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    ds.save_as(tmp_path / "short.dcm", enforce_file_format=True)
    with pytest.raises(ValueError) as e:
        load_image(tmp_path / "short.dcm", BUDGET)
    assert str(e.value).startswith("cannot decode RLE Lossless pixel data: pydicom: The amount of decoded RLE")
    assert "Unable to decode" not in str(e.value) and "\n" not in str(e.value)


def custom_data(root: Path, bomb_dir: Path) -> Path:
    """A data=custom table: two good PNG studies per split, and a study of one bomb in each split."""
    from PIL import Image

    rows = []
    for split, bomb in zip(("train", "val", "test"), SAYS, strict=True):
        for i in range(2):
            sid = f"{split}{i}"
            (root / "images").mkdir(parents=True, exist_ok=True)
            Image.new("L", (20, 20), 40 * i).save(root / "images" / f"{sid}.png")
            rows.append({"id": sid, "report": "No effusion. Heart normal.", "split": split,
                         "image_path": f"{sid}.png"})
        rows.append({"id": f"{split}-bomb", "report": "No effusion.", "split": split,
                     "image_path": str(bomb_dir / bomb)})
    (root / "studies.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


CUSTOM = ["data=custom", "data.num_workers=0", *(o for o in SMALL if not o.startswith("data.demo"))]


def test_training_refuses_every_bomb_at_the_set_up_check(make_cfg, tmp_path, bomb_dir):
    root = custom_data(tmp_path / "data", bomb_dir)
    cfg = make_cfg(*CUSTOM, f"data.root={root}", small=False)
    with pytest.raises(InputError) as e:
        train(cfg)
    message = str(e.value)
    assert message.startswith("3 image(s) not found or unreadable, in 3 studies"), message
    for name in SAYS:
        says_all(message, bomb_dir / name)
    assert "data.on_bad_sample=skip" in message


def test_a_bad_budget_is_a_config_error(make_cfg, tmp_path, bomb_dir):
    root = custom_data(tmp_path / "data", bomb_dir)
    cfg = make_cfg(*CUSTOM, f"data.root={root}", "data.max_image_pixels=-5", small=False)
    with pytest.raises(ConfigError, match=r"data.max_image_pixels=-5: choose a positive whole number of pixels"):
        train(cfg)


def test_predict_refuses_each_bomb_in_one_line(demo_run, make_cfg, bomb_dir):
    ckpt = demo_run / "checkpoints" / "last.ckpt"
    for name in SAYS:
        o = [f"ckpt={ckpt}", f"input=[{bomb_dir / name}]", "trainer.accelerator=cpu"]
        with pytest.raises(InputError) as e:
            predict(make_cfg(*o, config_name="predict", small=False), overrides=o)
        assert str(e.value).startswith(f"input=['{bomb_dir / name}']: 1 image(s) not found or unreadable")
        says_all(str(e.value), bomb_dir / name)


@pytest.mark.slow
def test_predict_py_on_the_rle_bomb_is_one_error_line_and_exit_2(demo_run, bomb_dir, cache_dir):
    r = run_cli("predict.py", f"ckpt={demo_run / 'checkpoints' / 'last.ckpt'}", f"input={bomb_dir / 'rle.dcm'}",
                "trainer.accelerator=cpu", cache_dir=cache_dir)
    assert r.returncode == 2, r.stderr[-3000:]
    (line,) = [s for s in r.stderr.splitlines() if s.startswith("error: ")]
    says_all(line, bomb_dir / "rle.dcm")
    assert "Traceback" not in r.stderr
