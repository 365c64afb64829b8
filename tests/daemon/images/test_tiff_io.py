"""Reading SEM frames with their pixel size (real FEI/Zeiss/PNG files) and refusing bad input files."""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from refscope.daemon.errors import IncompleteFileError, InputFileError, RefscopeError
from refscope.daemon.images import MAX_SIDE_PX, LoadedImage, read_image, write_tiff

# ------------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("pixel_size_nm", [11.2413, 112.413, 0.0075, 2615.0])
def test_write_read_round_trip(tmp_path: Path, rng: np.random.Generator, dtype, pixel_size_nm: float) -> None:
    if np.dtype(dtype).kind == "u":
        image = rng.integers(0, np.iinfo(dtype).max, size=(37, 53), endpoint=True).astype(dtype)
    else:
        image = rng.normal(100.0, 20.0, size=(37, 53)).astype(dtype)
    path = tmp_path / "out.tif"
    write_tiff(path, image, pixel_size_nm=pixel_size_nm)
    loaded = read_image(path)
    assert isinstance(loaded, LoadedImage)
    assert loaded.data.dtype == dtype
    np.testing.assert_array_equal(loaded.data, image)
    assert loaded.pixel_size_nm == pytest.approx(pixel_size_nm, rel=1e-9)
    assert loaded.metadata.vendor == "imagej"
    assert loaded.metadata.pixel_size_source == "imagej"
    assert loaded.metadata.field_of_view_nm == pytest.approx((37 * pixel_size_nm, 53 * pixel_size_nm))
    assert loaded.metadata.data_bar_rows_cropped == 0
    assert loaded.path == path


def test_written_tiff_is_imagej_calibrated_in_microns(tmp_path: Path) -> None:
    """What Fiji reads: ImageJ description with unit=micron and resolution in pixels per micron."""
    path = tmp_path / "fiji.tif"
    write_tiff(path, np.zeros((8, 10), np.uint16), pixel_size_nm=25.0)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej
        assert tif.imagej_metadata["unit"] == "micron"
        numerator, denominator = tif.pages[0].tags["XResolution"].value
        assert numerator / denominator == pytest.approx(40.0)  # 1 / 0.025 um


def test_float64_and_int_are_written_as_float32(tmp_path: Path) -> None:
    path = tmp_path / "f.tif"
    write_tiff(path, np.linspace(-1, 1, 60).reshape(6, 10), pixel_size_nm=None)
    loaded = read_image(path)
    assert loaded.data.dtype == np.float32
    assert loaded.pixel_size_nm is None and loaded.metadata.pixel_size_source is None
    write_tiff(path, np.arange(60, dtype=np.int16).reshape(6, 10) - 30, pixel_size_nm=3.0)
    np.testing.assert_array_equal(read_image(path).data, np.arange(60).reshape(6, 10) - 30)


def test_metadata_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sr.tif"
    when = datetime(2020, 2, 13, 20, 29, 7)
    meta = {"method": "nlm", "scale": 4, "acquired_at": when, "stage_xy_m": (-0.0141, 0.0158), "dwell_s": 3e-5,
            "detector": "ETD", "source": Path("/data/a.tif")}
    write_tiff(path, np.ones((4, 4), np.uint8), pixel_size_nm=2.5, metadata=meta)
    md = read_image(path).metadata
    assert md.acquired_at == when
    assert md.stage_xy_m == (-0.0141, 0.0158)
    assert md.dwell_s == 3e-5 and md.detector == "ETD"
    assert md.extra["method"] == "nlm" and md.extra["scale"] == 4 and md.extra["source"] == "/data/a.tif"


def test_write_tiff_rejects_bad_images(tmp_path: Path) -> None:
    path = tmp_path / "bad.tif"
    with pytest.raises(ValueError, match="2-D"):
        write_tiff(path, np.zeros((4, 4, 3), np.uint8), pixel_size_nm=1.0)
    with pytest.raises(ValueError, match="NaN"):
        write_tiff(path, np.full((4, 4), np.nan), pixel_size_nm=1.0)
    with pytest.raises(ValueError, match="bool"):
        write_tiff(path, np.zeros((4, 4), bool), pixel_size_nm=1.0)
    with pytest.raises(ValueError, match="pixel_size_nm"):
        write_tiff(path, np.zeros((4, 4), np.uint8), pixel_size_nm=-2.0)
    assert list(tmp_path.iterdir()) == []


def test_write_tiff_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "x.tif"
    write_tiff(path, np.zeros((4, 4), np.uint8), pixel_size_nm=1.0)
    write_tiff(path, np.full((5, 6), 7, np.uint8), pixel_size_nm=2.0)
    loaded = read_image(path)
    assert loaded.data.shape == (5, 6) and loaded.pixel_size_nm == pytest.approx(2.0)
    assert [p.name for p in tmp_path.iterdir()] == ["x.tif"]


# ---------------------------------------------------------------------------------------- pixel-size sources


def _png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


@pytest.mark.parametrize("sidecar_name", ["img.png.json", "img.json"])
def test_sidecar_json_pixel_size(tmp_path: Path, sidecar_name: str) -> None:
    path = _png(tmp_path / "img.png", np.arange(64, dtype=np.uint8).reshape(8, 8))
    (tmp_path / sidecar_name).write_text(json.dumps({"pixel_size_nm": 4.0}))
    loaded = read_image(path)
    assert loaded.pixel_size_nm == 4.0
    assert loaded.metadata.pixel_size_source == "sidecar" and loaded.metadata.vendor == "plain"
    assert read_image(path, pixel_size_nm=7.5).pixel_size_nm == 7.5  # the argument overrides everything


def test_sidecar_json_invalid_names_sidecar(tmp_path: Path) -> None:
    path = _png(tmp_path / "img.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "img.json").write_text('{"pixel_size_nm": -1}')
    with pytest.raises(InputFileError, match="img.json"):
        read_image(path)
    (tmp_path / "img.json").write_text("{not json")
    with pytest.raises(InputFileError, match="img.json"):
        read_image(path)


def test_png_16_bit_and_no_pixel_size(tmp_path: Path) -> None:
    data = (np.arange(120, dtype=np.uint16) * 500).reshape(10, 12)
    path = tmp_path / "deep.png"
    Image.fromarray(data).save(path)
    loaded = read_image(path)
    assert loaded.data.dtype == np.uint16
    np.testing.assert_array_equal(loaded.data, data)
    assert loaded.pixel_size_nm is None and loaded.metadata.field_of_view_nm is None


def test_ome_tiff_physical_size(tmp_path: Path) -> None:
    path = tmp_path / "a.ome.tif"
    tifffile.imwrite(path, np.zeros((6, 7), np.uint16), metadata={"axes": "YX", "PhysicalSizeX": 0.0125,
                                                                  "PhysicalSizeXUnit": "µm"})
    loaded = read_image(path)
    assert loaded.metadata.vendor == "ome" and loaded.pixel_size_nm == pytest.approx(12.5)


def test_pixel_size_argument_is_validated(tmp_path: Path) -> None:
    path = _png(tmp_path / "img.png", np.zeros((8, 8), np.uint8))
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            read_image(path, pixel_size_nm=bad)


# ----------------------------------------------------------------------------------------------- real files

FEI_EXPECTED_NM = {
    "3b9a58__NiO_DCs_5KV_1200x_ETD_HV_s5.0_13.5WD_032.tif": 112.413,
    "96336e__NiO_DC_5000x_E.tif": 26.9792,
    "f63c41__NiO_DC_12000x_D.tif": 11.2413,
    "aac7dd__CS_Bottom_of_Insert_DC_02052021_5KV_2500_ETD-HV_10.tif": 53.9583,
    "b76fd8__CS_DCs_3500x_A.tif": 38.5417,
    "a9aac1__CS_DCs_8000x_A.tif": 16.862,
}


@pytest.mark.realdata
@pytest.mark.parametrize("name", sorted(FEI_EXPECTED_NM))
def test_fei_metadata_real_files(shared_data: Path, name: str) -> None:
    path = shared_data / "sem_pairs" / "raw" / name
    loaded = read_image(path)
    md = loaded.metadata
    assert md.vendor == "fei" and md.pixel_size_source == "fei"
    assert loaded.pixel_size_nm == pytest.approx(FEI_EXPECTED_NM[name], rel=1e-3)
    assert loaded.data.shape == (1024, 1536)  # 1103 stored rows minus the 79-row data bar
    assert md.data_bar_rows_cropped == 79
    assert md.dwell_s == pytest.approx(30e-6) and md.detector == "ETD"
    assert md.acquired_at is not None and md.acquired_at.year == 2020
    assert md.stage_xy_m is not None and all(abs(v) < 0.1 for v in md.stage_xy_m)
    assert md.field_of_view_nm == pytest.approx((1024 * loaded.pixel_size_nm, 1536 * loaded.pixel_size_nm))
    assert not read_image(path, crop_data_bar=False).metadata.data_bar_rows_cropped


@pytest.mark.realdata
def test_fei_metadata_matches_images_json(shared_data: Path) -> None:
    for entry in json.loads((shared_data / "sem_pairs" / "images.json").read_text()):
        loaded = read_image(shared_data / "sem_pairs" / "raw" / entry["file"])
        assert loaded.pixel_size_nm == pytest.approx(entry["px_nm"], rel=1e-6), entry["file"]
        assert loaded.data.dtype == np.dtype(entry["dtype"])
        assert loaded.metadata.stage_xy_m[0] * 1e6 == pytest.approx(entry["X"], abs=0.05)


@pytest.mark.realdata
def test_zeiss_metadata_real_files(shared_data: Path) -> None:
    folder = shared_data / "hr_only" / "zeiss_sem"
    one_k = read_image(folder / "test_tiff_Zeiss_SEM_1k.tif")
    assert one_k.metadata.vendor == "zeiss"
    assert one_k.pixel_size_nm == pytest.approx(2615.0, rel=1e-3)
    assert one_k.metadata.detector == "HE-SE2" and one_k.metadata.dwell_s == pytest.approx(50e-9)
    assert one_k.data.shape == (691, 1024) and one_k.metadata.data_bar_rows_cropped == 77  # framed info box
    small = read_image(folder / "test_tiff_Zeiss_SEM_512pix.tif")
    assert small.pixel_size_nm == pytest.approx(11.65, rel=1e-3)  # Width 5.965 um / 512 px
    assert small.data.shape == (350, 512)
    assert read_image(folder / "test_tiff_Zeiss_SEM_512pix.tif", crop_data_bar=False).data.shape == (384, 512)
    with pytest.raises(InputFileError, match="ZEISS_SEM_multipage.tif.*2 pages"):
        read_image(folder / "ZEISS_SEM_multipage.tif")
    frames = [read_image(folder / "ZEISS_SEM_multipage.tif", page=i) for i in (0, 1)]
    for frame in frames:
        assert frame.pixel_size_nm == pytest.approx(12.33, rel=1e-3)
        assert frame.data.shape == (1536, 2048) and frame.metadata.data_bar_rows_cropped == 0
    assert frames[1].metadata.acquired_at > frames[0].metadata.acquired_at


@pytest.mark.realdata
def test_plain_png_real_file(shared_data: Path) -> None:
    loaded = read_image(shared_data / "hr_only" / "isbi2012_sstem" / "0.png", pixel_size_nm=4.0)
    assert loaded.data.shape == (512, 512) and loaded.data.dtype == np.uint8
    assert loaded.metadata.vendor == "plain" and loaded.pixel_size_nm == 4.0
    assert read_image(shared_data / "hr_only" / "isbi2012_sstem" / "0.png").pixel_size_nm is None


# ------------------------------------------------------------------------------------------------ bad input


def _assert_input_error(path: Path, match: str, **kwargs) -> InputFileError:
    with pytest.raises(InputFileError) as info:
        read_image(path, **kwargs)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert path.name in message
    assert match.lower() in message.lower(), message
    assert isinstance(info.value, RefscopeError)
    return info.value


def test_missing_file(tmp_path: Path) -> None:
    _assert_input_error(tmp_path / "nope.tif", "not found")


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "d.tif").mkdir()
    _assert_input_error(tmp_path / "d.tif", "not a regular file")


def test_zero_size_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.tif"
    path.write_bytes(b"")
    error = _assert_input_error(path, "empty")
    assert isinstance(error, IncompleteFileError)


def test_text_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.tif"
    path.write_text("hello, this is not an image\n")
    _assert_input_error(path, "not a TIFF or PNG")


@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_truncated_tiff(tmp_path: Path, rng: np.random.Generator, keep: float) -> None:
    good = tmp_path / "good.tif"
    write_tiff(good, rng.integers(0, 65535, (64, 80)).astype(np.uint16), pixel_size_nm=5.0)
    data = good.read_bytes()
    path = tmp_path / "chopped.tif"
    path.write_bytes(data[: int(len(data) * keep)])
    error = _assert_input_error(path, "truncated")
    assert isinstance(error, IncompleteFileError)


def test_truncated_tiff_header(tmp_path: Path) -> None:
    path = tmp_path / "chopped.tif"
    write_tiff(path, np.zeros((8, 8), np.uint8), pixel_size_nm=1.0)
    path.write_bytes(path.read_bytes()[:6])
    _assert_input_error(path, "TIFF")


def test_truncated_png(tmp_path: Path, rng: np.random.Generator) -> None:
    good = _png(tmp_path / "good.png", rng.integers(0, 255, (64, 64)).astype(np.uint8))
    path = tmp_path / "chopped.png"
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    _assert_input_error(path, "PNG")


def test_rgb_tiff(tmp_path: Path) -> None:
    path = tmp_path / "colour.tif"
    tifffile.imwrite(path, np.zeros((12, 16, 3), np.uint8), photometric="rgb")
    _assert_input_error(path, "is RGB (shape (12, 16, 3)); refscope needs one grayscale channel")


def test_rgb_png(tmp_path: Path) -> None:
    path = _png(tmp_path / "colour.png", np.zeros((12, 16, 3), np.uint8))
    _assert_input_error(path, "is RGB")


def test_colour_palette_tiff(tmp_path: Path) -> None:
    path = tmp_path / "palette.tif"
    colormap = np.zeros((3, 256), np.uint16)
    colormap[0] = np.arange(256) * 257  # red ramp
    tifffile.imwrite(path, np.arange(256, dtype=np.uint8).reshape(16, 16), photometric="palette", colormap=colormap)
    _assert_input_error(path, "colour palette")


def test_gray_palette_tiff_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "palette.tif"
    colormap = np.tile(np.arange(256, dtype=np.uint16) * 257, (3, 1))
    data = np.arange(256, dtype=np.uint8).reshape(16, 16)
    tifffile.imwrite(path, data, photometric="palette", colormap=colormap)
    np.testing.assert_array_equal(read_image(path).data, data)


def test_multipage_stack(tmp_path: Path) -> None:
    path = tmp_path / "stack.tif"
    stack = np.arange(3 * 8 * 9, dtype=np.uint16).reshape(3, 8, 9)
    tifffile.imwrite(path, stack, photometric="minisblack")
    _assert_input_error(path, "multi-page TIFF with 3 pages; pass page=")
    np.testing.assert_array_equal(read_image(path, page=2).data, stack[2])
    _assert_input_error(path, "page=5 does not exist", page=5)


@pytest.mark.parametrize("dtype", [np.complex64, np.bool_])
def test_unsupported_dtype(tmp_path: Path, dtype) -> None:
    path = tmp_path / "odd.tif"
    tifffile.imwrite(path, np.zeros((8, 8), dtype))
    _assert_input_error(path, "unsupported pixel type")


def test_absurd_dimensions_refused_from_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "wide.tif"
    tifffile.imwrite(path, np.zeros((1, MAX_SIDE_PX + 1), np.uint8))

    def no_pixels(*args, **kwargs):
        raise AssertionError("pixel data must not be read")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", no_pixels)
    _assert_input_error(path, f"exceeds the limit of {MAX_SIDE_PX} px")


def test_nan_pixels(tmp_path: Path) -> None:
    path = tmp_path / "nan.tif"
    image = np.ones((8, 8), np.float32)
    image[2, 3] = np.nan
    tifffile.imwrite(path, image)
    _assert_input_error(path, "NaN")


def test_input_file_is_never_modified(tmp_path: Path) -> None:
    path = tmp_path / "in.tif"
    write_tiff(path, np.arange(64, dtype=np.uint8).reshape(8, 8), pixel_size_nm=1.0)
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    loaded = read_image(path)
    loaded.data[:] = 0  # the caller may scribble on the array; the file must not change
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]
