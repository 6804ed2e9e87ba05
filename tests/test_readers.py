"""The one image reader: DICOM (rescale, VOI window, MONOCHROME1, frames, compression), NIfTI (slice, orientation,
windowing), 16-bit and multi-page pictures, EXIF orientation; every expected grey value is worked out by hand.

DICOM's linear VOI rule onto 0..255 (PS3.3 C.11.2.1.2): y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255, 0 at or
below c - 0.5 - (w - 1) / 2, 255 above c - 0.5 + (w - 1) / 2; then rounded.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEGLSLossless, generate_uid

from sim4seg.data.check import check_dataset
from sim4seg.data.io import image_size, load_image, load_mask
from sim4seg.data.readers import ReadOptions
from sim4seg.data.schema import Record, RecordError, append_records
from sim4seg.errors import UserError


def write_dicom(path, pixels: np.ndarray, bits: int = 12, photometric: str = "MONOCHROME2", modality: str = "CT",
                **tags) -> str:
    """An uncompressed DICOM file of ``pixels`` ([rows, cols] or [frames, rows, cols]) with extra ``tags``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality = modality
    ds.set_pixel_data(pixels, photometric, bits)
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def grey(path, **options) -> np.ndarray:
    img = load_image(path, options=ReadOptions(**options))
    assert img.dtype == np.uint8 and img.ndim == 3 and (img == img[..., :1]).all()
    return img[..., 0]


# ---- DICOM -----------------------------------------------------------------------------------------------------
# 12-bit CT, HU = 2 * stored - 1024. Stored 432 -> -160 HU, 532 -> 40, 562 -> 100, 631 -> 238, 632 -> 240.
CT_STORED = np.array([[0, 432, 532], [562, 631, 632]], np.uint16)
# Window 40/400: 0 at or below -160 HU; 40 -> (0.5/399 + 0.5) * 255 = 127.82; 100 -> (60.5/399 + 0.5) * 255 =
# 166.17; 238 -> (198.5/399 + 0.5) * 255 = 254.36; 240 is above 239 -> 255.
SOFT_TISSUE = [[0, 0, 128], [166, 254, 255]]


def test_dicom_rescale_then_file_window(tmp_path):
    path = write_dicom(tmp_path / "ct.dcm", CT_STORED, RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=40,
                       WindowWidth=400)
    assert grey(path).tolist() == SOFT_TISSUE
    assert image_size(path) == (2, 3)


def test_dicom_ct_without_window_uses_soft_tissue_and_presets_apply_in_hu(tmp_path):
    path = write_dicom(tmp_path / "ct.dcm", CT_STORED, RescaleSlope=2, RescaleIntercept=-1024)
    assert grey(path).tolist() == SOFT_TISSUE
    # Lung -600/1500 (0 at or below -1350 HU): -1024 -> (-423.5/1499 + 0.5) * 255 = 55.46; -160 -> (440.5/1499
    # + 0.5) * 255 = 202.43; 40 -> 236.45; 100 -> 246.66; 238 and 240 are above 149 -> 255.
    assert grey(path, window="ct_lung").tolist() == [[55, 202, 236], [247, 255, 255]]
    # An explicit "C,W" overrides the file: 0,2: 0 at or below -1 HU, above 0 -> 255.
    assert grey(path, window="0,2").tolist() == [[0, 0, 255], [255, 255, 255]]


def test_dicom_multi_valued_window_takes_the_first_view(tmp_path):
    path = write_dicom(tmp_path / "ct.dcm", CT_STORED, RescaleSlope=2, RescaleIntercept=-1024,
                       WindowCenter=[40, -600], WindowWidth=[400, 1500])
    assert grey(path).tolist() == SOFT_TISSUE


def test_monochrome1_is_inverted(tmp_path):
    path = write_dicom(tmp_path / "cr.dcm", CT_STORED, photometric="MONOCHROME1", RescaleSlope=2,
                       RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400)
    assert grey(path).tolist() == [[255 - v for v in row] for row in SOFT_TISSUE]


def test_dicom_8bit_without_window_is_shown_as_stored(tmp_path):
    stored = np.array([[0, 7, 128], [200, 254, 255]], np.uint8)
    path = write_dicom(tmp_path / "us.dcm", stored, bits=8, modality="US")
    assert grey(path).tolist() == stored.tolist()


def test_dicom_16bit_mr_without_window_uses_percentiles(tmp_path):
    stored = np.arange(1000, dtype=np.uint16).reshape(20, 50)
    path = write_dicom(tmp_path / "mr.dcm", stored, bits=16, modality="MR")
    # numpy's linear percentiles of 0..999: 0.5% -> 4.995, 99.5% -> 994.005; 500 -> 495.005 / 989.01 * 255 =
    # 127.63; 4 and below -> 0; 995 and above -> 255.
    g = grey(path)
    assert g.flat[500] == 128 and g.flat[4] == 0 and g.flat[995] == 255 and g.flat[0] == 0


def test_dicom_multi_frame_pick_and_range(tmp_path):
    frames = np.stack([np.full((4, 5), v, np.uint8) for v in (10, 20, 30)])
    path = write_dicom(tmp_path / "cine.dcm", frames, bits=8, modality="US")
    assert (grey(path) == 10).all() and (grey(path, frame=2) == 30).all()
    with pytest.raises(RecordError, match=r"frame 3 does not exist; the file has 3 \(frame 0..2\)"):
        load_image(path, options=ReadOptions(frame=3))


def test_dicom_without_pixel_data_is_one_clear_error(tmp_path):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.save_as(tmp_path / "report.dcm", enforce_file_format=True)
    with pytest.raises(RecordError, match="report.dcm: DICOM file has no pixel data .*Basic Text SR"):
        load_image(tmp_path / "report.dcm")
    with pytest.raises(RecordError, match="no pixel data"):
        image_size(tmp_path / "report.dcm")


def test_bundled_ct_and_mr(tmp_path):
    # CT_small.dcm: slope 1, intercept -1024, no window -> soft tissue. Pixel [0, 48] is stored 958 = -66 HU ->
    # (-105.5/399 + 0.5) * 255 = 60.08; [0, 49] is 1053 = 29 HU -> 120.79.
    ct = grey(get_testdata_file("CT_small.dcm"))
    assert ct.shape == (128, 128) and ct[0, 48] == 60 and ct[0, 49] == 121
    # MR_small.dcm: window 600/1600. Stored 905 -> (305.5/1599 + 0.5) * 255 = 176.22; 168 -> 58.69.
    mr = grey(get_testdata_file("MR_small.dcm"))
    assert mr[0, 0] == 176 and mr[32, 30] == 59


def test_compressed_transfer_syntaxes_decode_or_name_the_install(monkeypatch):
    plain = grey(get_testdata_file("MR_small.dcm"))
    for name in ("MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"):
        assert (grey(get_testdata_file(name)) == plain).all(), name  # lossless: the same pixels
    # Without any JPEG-LS plugin pydicom cannot decode it: one line naming the packages to install.
    from pydicom.pixels import get_decoder

    monkeypatch.setattr(get_decoder(JPEGLSLossless), "_available", {})
    with pytest.raises(RecordError) as e:
        load_image(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    assert "JPEG-LS Lossless" in str(e.value) and "pip install pylibjpeg pylibjpeg-libjpeg" in str(e.value)
    assert "\n" not in str(e.value)


def test_bundled_colour_and_multiframe_files():
    ybr = load_image(get_testdata_file("examples_ybr_color.dcm"), options=ReadOptions(frame=29))
    assert ybr.shape == (240, 320, 3) and not (ybr == ybr[..., :1]).all()  # YBR shown as colour
    assert load_image(get_testdata_file("examples_palette.dcm")).shape == (350, 800, 3)
    with pytest.raises(RecordError, match="no pixel data .*RT Plan"):
        load_image(get_testdata_file("rtplan.dcm"))


# ---- NIfTI -----------------------------------------------------------------------------------------------------
def marked_volume() -> np.ndarray:
    """A 4 x 5 x 6 RAS+ volume (x to the patient's right, y anterior, z superior), zero but for two marks on the
    middle axial slice z=3: 1000 at the right-anterior corner (x=3, y=4), 500 at the left-posterior (0, 0)."""
    v = np.zeros((4, 5, 6), np.int16)
    v[3, 4, 3], v[0, 0, 3] = 1000, 500
    v[3, 2, 5] = 700  # on the coronal middle slice y=2, right and top
    return v


def nifti(path, data: np.ndarray, affine: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(data, affine), path)
    return str(path)


# Window 500,1000: 1000 is above 999 -> 255; 500 -> (0.5/999 + 0.5) * 255 = 127.63 -> 128; 0 -> 0.
W = "500,1000"


def test_nifti_default_is_the_middle_axial_slice_in_radiological_display(tmp_path):
    path = nifti(tmp_path / "ras.nii.gz", marked_volume(), np.eye(4))
    g = grey(path, window=W)
    # Axial: rows = y from anterior (top) to posterior, columns = x from the patient's right (left of screen).
    assert g.shape == (5, 4) and image_size(path) == (5, 4)
    assert g[0, 0] == 255 and g[4, 3] == 128 and g.sum() == 255 + 128


def test_nifti_orientation_does_not_depend_on_storage_order(tmp_path):
    ras = grey(nifti(tmp_path / "ras.nii", marked_volume(), np.eye(4)), window=W)
    # The same anatomy stored LPS (x and y flipped) ...
    lps = nifti(tmp_path / "lps.nii", marked_volume()[::-1, ::-1].copy(), np.diag([-1.0, -1, 1, 1]))
    assert (grey(lps, window=W) == ras).all()
    # ... and stored with its axes in z, y, x order.
    zyx = nifti(tmp_path / "zyx.nii", marked_volume().transpose(2, 1, 0).copy(),
                np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1.0]]))
    assert (grey(zyx, window=W) == ras).all()


def test_nifti_axis_slice_and_frame_options(tmp_path):
    path = nifti(tmp_path / "v.nii.gz", marked_volume(), np.eye(4))
    # Coronal y=2: rows = z from superior (top), columns = x from the right: (x=3, z=5) -> row 0, column 0;
    # 700 -> (200.5/999 + 0.5) * 255 = 178.68.
    cor = grey(path, axis=1, window=W)
    assert cor.shape == (6, 4) and cor[0, 0] == 179 and cor.sum() == 179
    assert grey(path, axis=2, slice=0, window=W).sum() == 0
    with pytest.raises(RecordError, match=r"slice 6 does not exist along axis 2; it has 6 \(slice 0..5\)"):
        load_image(path, options=ReadOptions(slice=6))
    four = nifti(tmp_path / "t.nii.gz", np.stack([marked_volume(), 2 * marked_volume()], -1), np.eye(4))
    assert grey(four, frame=1, window="1000,2000")[0, 0] == 255 and grey(four, window="1000,2000")[0, 0] == 128


def test_nifti_windowing_ct_by_default_mr_by_percentile(tmp_path):
    hu = np.full((4, 5, 3), -1000.0, np.float32)
    hu[1, 1, 1] = 40.0  # soft tissue window: 40 HU -> 128 (see SOFT_TISSUE)
    g = grey(nifti(tmp_path / "ct.nii.gz", hu, np.eye(4)))
    assert g.max() == 128 and (g == 0).sum() == 19
    # Bone 400/1800: 40 HU -> (-359.5/1799 + 0.5) * 255 = 76.54; -1000 is below the floor of -500.
    assert grey(nifti(tmp_path / "ct2.nii.gz", hu, np.eye(4)), window="ct_bone").max() == 77
    mr = np.arange(1000, dtype=np.float32).reshape(10, 100, 1)
    g = grey(nifti(tmp_path / "mr.nii.gz", mr, np.eye(4)))
    assert g.min() == 0 and g.max() == 255 and 127 <= np.median(g) <= 128


def test_nifti_single_voxel_and_corrupt_files(tmp_path):
    one = nifti(tmp_path / "one.nii.gz", np.ones((1, 1, 1), np.float32), np.eye(4))
    with pytest.raises(RecordError, match="single voxel"):
        load_image(one)
    with pytest.raises(RecordError, match="single voxel"):
        image_size(one)
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(RecordError, match="bad.nii.gz: not a readable NIfTI file"):
        load_image(bad)


# ---- Pillow formats ----------------------------------------------------------------------------------------------
def test_16bit_png_percentile_window_and_8bit_unchanged(tmp_path):
    a = np.arange(1000, dtype=np.uint16).reshape(20, 50) * 60  # 0 .. 59940
    Image.fromarray(a).save(tmp_path / "x16.png")
    g = grey(tmp_path / "x16.png")
    assert g.flat[500] == 128 and g.flat[4] == 0 and g.flat[995] == 255  # as the 16-bit DICOM above
    eight = np.array([[0, 3, 250]], np.uint8)
    Image.fromarray(eight).save(tmp_path / "x8.png")
    assert grey(tmp_path / "x8.png").tolist() == eight.tolist()


def test_tiff_pages_and_float(tmp_path):
    pages = [Image.fromarray(np.full((3, 4), v, np.uint8)) for v in (5, 9)]
    pages[0].save(tmp_path / "p.tif", save_all=True, append_images=pages[1:])
    assert (grey(tmp_path / "p.tif", frame=1) == 9).all()
    with pytest.raises(RecordError, match="frame 2 does not exist; the file has 2"):
        load_image(tmp_path / "p.tif", options=ReadOptions(frame=2))
    Image.fromarray(np.linspace(-1, 1, 1000, dtype=np.float32).reshape(20, 50)).save(tmp_path / "f.tif")
    g = grey(tmp_path / "f.tif")
    assert g.flat[0] == 0 and g.flat[999] == 255


def test_bad_files_and_options_are_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(RecordError, match="notes.txt: not a readable image .*supported: PNG, JPEG, TIFF"):
        load_image(tmp_path / "notes.txt")
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(RecordError, match=r"40x30 = 1200 pixels exceeds the limit 1000 \(data.max_pixels"):
        load_image(tmp_path / "big.png", 1000)
    with pytest.raises(UserError, match="window='soft'"):
        ReadOptions(window="soft")


# ---- EXIF orientation --------------------------------------------------------------------------------------------
def sideways_jpeg(path) -> None:
    """Stored 40 wide x 30 high, bright in the stored top-left 10 x 10; EXIF 6: display turned 90 degrees
    clockwise, so it is 30 wide x 40 high and the bright block sits at the displayed top-right."""
    a = np.zeros((30, 40, 3), np.uint8)
    a[:10, :10] = 255
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(path, exif=exif, quality=95)


def test_exif_orientation_is_applied_to_images_and_masks(tmp_path):
    sideways_jpeg(tmp_path / "side.jpg")
    img = load_image(tmp_path / "side.jpg")
    assert img.shape == (40, 30, 3) and image_size(tmp_path / "side.jpg") == (40, 30)
    assert img[:10, -10:].mean() > 200 and img[:10, :10].mean() < 50
    drawn = np.zeros((40, 30), np.uint8)  # a mask drawn on the displayed picture fits it
    Image.fromarray(drawn).save(tmp_path / "drawn.png")
    assert load_mask(tmp_path / "drawn.png", img.shape[:2]).shape == (40, 30)


def test_data_check_names_an_exif_turn(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    sideways_jpeg(tmp_path / "images" / "a.jpg")
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(tmp_path / "masks" / "a.png")  # stored orientation
    append_records(tmp_path, [Record(id="BUSI/a", subset="BUSI", modality="ultrasound", split="train",
                                     image="images/a.jpg", mask="masks/a.png", query="Where is the tumor?",
                                     diagnosis=["benign"], cot=None, source={})])
    report = check_dataset(tmp_path, progress=False)
    lines = [p.line() for p in report.problems]
    assert len(lines) == 1 and "EXIF orientation 6" in lines[0] and "30x40, the size of its image as stored" in lines[0]

