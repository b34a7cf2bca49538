"""Image files to pixels: DICOM display pipeline (rescale, window, MONOCHROME1, bit depth), PNG/JPEG, and the
set-up check's verdict on missing, truncated and corrupt files. DICOM files are written with pydicom itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.dataset import Dataset

from r2gen.data.datamodule import StudyDataset, image_transform
from r2gen.data.images import dicom_to_uint8, image_problem, is_dicom, load_image

from .helpers.dicom import RAMP, write_dicom
from .helpers.paths import SHARED_DATA

NIH_IMAGES = SHARED_DATA / "nih_cxr14_sample" / "images"
def test_full_12_bit_range_maps_onto_0_255(tmp_path):
    img = dicom_to_uint8(write_dicom(tmp_path / "a.dcm", RAMP))
    assert img.dtype == np.uint8 and img.shape == (32, 64)
    assert img.min() == 0 and img.max() == 255
    assert (np.diff(img[0].astype(int)) >= 0).all() and len(np.unique(img)) == 64  # monotonic, no levels lost


def test_without_a_window_the_actual_pixel_range_is_stretched(tmp_path):
    narrow = (1000 + RAMP // 4).astype(np.uint16)  # 1000..2024 of 4095: a real exposure rarely fills the range
    img = dicom_to_uint8(write_dicom(tmp_path / "a.dcm", narrow))
    assert img.min() == 0 and img.max() == 255


def test_monochrome1_is_the_inverse_of_monochrome2(tmp_path):
    m2 = dicom_to_uint8(write_dicom(tmp_path / "m2.dcm", RAMP, "MONOCHROME2"))
    m1 = dicom_to_uint8(write_dicom(tmp_path / "m1.dcm", RAMP, "MONOCHROME1"))
    assert (m1 == 255 - m2).all()


def test_window_clips_outside_and_spreads_inside(tmp_path):
    img = dicom_to_uint8(write_dicom(tmp_path / "w.dcm", RAMP, WindowCenter=2048, WindowWidth=1024))
    row, raw = img[0].astype(int), RAMP[0].astype(int)
    assert (row[raw <= 2048 - 512] == 0).all() and (row[raw >= 2048 + 512] == 255).all()
    inside = (raw > 2048 - 512 + 64) & (raw < 2048 + 512 - 64)
    assert inside.any() and ((row[inside] > 0) & (row[inside] < 255)).all()
    assert (np.diff(row) >= 0).all()


def test_window_is_applied_after_rescale_slope_and_intercept(tmp_path):
    # stored values v, real values 2v - 1024: a window centred on real 3072 is the raw window centred on 2048
    hu = dicom_to_uint8(write_dicom(tmp_path / "hu.dcm", RAMP, RescaleSlope=2, RescaleIntercept=-1024,
                                    WindowCenter=3072, WindowWidth=2048))
    raw = dicom_to_uint8(write_dicom(tmp_path / "raw.dcm", RAMP, WindowCenter=2048, WindowWidth=1024))
    assert np.abs(hu.astype(int) - raw.astype(int)).max() <= 1
    assert hu.min() == 0 and hu.max() == 255


@pytest.mark.parametrize("bits", [8, 16])
def test_voi_lut_sequence_is_applied_and_wins_over_a_window(tmp_path, bits):
    from pydicom.sequence import Sequence

    top = 2**bits - 1
    lut = Dataset()  # 12-bit input; flat below 1024, linear up to 3071, flat above
    lut.add_new(0x00283002, "US", [4096, 0, bits])  # LUT Descriptor: entries, first mapped value, bits per entry
    lut.add_new(0x00283006, "US", [int(np.clip((v - 1024) * top / 2047, 0, top)) for v in range(4096)])
    img = dicom_to_uint8(write_dicom(tmp_path / "lut.dcm", RAMP, VOILUTSequence=Sequence([lut]),
                                     WindowCenter=100, WindowWidth=10))
    row, raw = img[0].astype(int), RAMP[0].astype(int)
    assert (row[raw <= 1024] == 0).all() and (row[raw >= 3071] == 255).all()
    assert ((row[(raw > 1200) & (raw < 2900)] > 0) & (row[(raw > 1200) & (raw < 2900)] < 255)).all()


def test_16_bit_data_uses_its_whole_range(tmp_path):
    wide = (RAMP.astype(np.uint32) * 16).astype(np.uint16)  # 0..65520
    img = dicom_to_uint8(write_dicom(tmp_path / "16.dcm", wide, bits_stored=16))
    assert img.min() == 0 and img.max() == 255 and len(np.unique(img)) == 64


def test_multi_frame_gives_the_first_frame(tmp_path):
    frames = np.stack([RAMP, 4095 - RAMP, RAMP // 2])
    first = dicom_to_uint8(write_dicom(tmp_path / "mf.dcm", frames))
    assert (first == dicom_to_uint8(write_dicom(tmp_path / "one.dcm", RAMP))).all()


def test_dicom_is_found_by_magic_without_a_suffix_and_loads_as_rgb(tmp_path):
    path = write_dicom(tmp_path / "study_0001", RAMP)
    assert is_dicom(path) and not is_dicom(tmp_path / "x.png")
    im = load_image(path)
    assert im.mode == "RGB" and im.size == (64, 32)
    a = np.asarray(im)
    assert (a[..., 0] == a[..., 1]).all() and a.max() == 255


def test_16_bit_png_is_stretched_not_clipped(tmp_path):
    Image.fromarray(RAMP.astype(np.uint16) * 16).save(tmp_path / "16.png")
    a = np.asarray(load_image(tmp_path / "16.png"))
    assert a.shape == (32, 64, 3) and a.min() == 0 and a.max() == 255 and len(np.unique(a[..., 0])) == 64


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """One good file per format, and broken ones."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (48, 48), dtype=np.uint8)
    f = {"png": tmp_path / "ok.png", "jpg": tmp_path / "ok.jpg", "dcm": write_dicom(tmp_path / "ok.dcm", RAMP)}
    Image.fromarray(noise).save(f["png"])
    Image.fromarray(noise).save(f["jpg"], quality=90)
    for kind in ("png", "jpg", "dcm"):
        data = f[kind].read_bytes()
        f[f"cut_{kind}"] = tmp_path / f"cut.{kind}"
        f[f"cut_{kind}"].write_bytes(data[: len(data) - 200])
    f["garbage_png"] = tmp_path / "garbage.png"
    f["garbage_png"].write_bytes(b"not an image at all" * 50)
    f["garbage_dcm"] = tmp_path / "garbage.dcm"
    f["garbage_dcm"].write_bytes(b"\0" * 500)
    return f


def test_good_files_pass_the_set_up_check(files):
    for kind in ("png", "jpg", "dcm"):
        assert image_problem(files[kind]) is None, kind
        assert load_image(files[kind]).mode == "RGB"


@pytest.mark.parametrize("kind,reason", [
    ("missing", "no such file"), ("cut_png", "unreadable"), ("cut_jpg", "truncated JPEG"),
    ("cut_dcm", "truncated DICOM pixel data"), ("garbage_png", "unreadable"), ("garbage_dcm", "unreadable"),
])
def test_broken_files_are_caught_without_decoding(files, tmp_path, kind, reason):
    path = files.get(kind, tmp_path / "missing.png")
    assert reason in (image_problem(path) or "")


def test_compressed_dicom_without_a_decoder_is_caught(files, monkeypatch):
    import pydicom
    import pydicom.pixels
    from pydicom.encaps import encapsulate

    class NoDecoder:
        is_available, missing_dependencies = False, ["pylibjpeg - requires pylibjpeg>=2.0"]

    ds = pydicom.dcmread(files["dcm"])
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEG2000Lossless
    ds.PixelData = encapsulate([b"\xff\x4f" + bytes(64)])  # not real J2K: the check never decodes
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    ds.save_as(files["dcm"])
    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: NoDecoder())
    assert "no decoder for JPEG 2000" in image_problem(files["dcm"]) and "pylibjpeg" in image_problem(files["dcm"])


@pytest.mark.skipif(not NIH_IMAGES.is_dir(), reason="real NIH ChestX-ray14 sample not present")
def test_real_chest_x_rays_load_through_the_dataset():
    names = sorted(p.name for p in NIH_IMAGES.glob("*.jpg"))[:4]
    entries = [{"id": n, "report": "No acute disease.", "image_path": [n]} for n in names]
    ds = StudyDataset(entries, NIH_IMAGES, image_transform(64, (0.5,) * 3, (0.5,) * 3, augment=False),
                      num_views=2, clean=str.lower)
    for i in range(len(ds)):
        item = ds[i]
        assert item["images"].shape == (2, 3, 64, 64) and item["view_mask"].tolist() == [True, False]
        assert torch.isfinite(item["images"]).all() and item["images"][0].std() > 0.1  # a real image, not blank
        assert image_problem(NIH_IMAGES / names[i]) is None
