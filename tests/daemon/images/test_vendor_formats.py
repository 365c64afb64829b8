"""Real instrument-written files in every format SEM/STEM software writes (../shared/data/vendor_formats), read and
enhanced, against the pixel sizes independent readers agree on (its MANIFEST.md: the oracle).

Each file either reads with the MANIFEST's pixel size (within 0.1 %; JEOL SightX within 1 %, see below), shape and
dtype, or is refused with an :class:`InputFileError` naming the file and the reason; ``refscope enhance`` writes
the right output pixel size (source / scale) or exits 2 with one line naming the file. Skipped without the data.
"""
from __future__ import annotations

import re
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from refscope.daemon.cli import main
from refscope.daemon.errors import InputFileError
from refscope.daemon.images.readers import read_frames, read_image
from refscope.daemon.images import write_tiff
from refscope.models.synthetic import make_pair
from tests.conftest import shared_data_dir

pytestmark = pytest.mark.realdata

FOLDER = shared_data_dir() / "vendor_formats"

REFUSED = {  # file -> what the one-line reason must say (decisions documented in README "Input formats")
    "ncem_dmTest_float32_nonSquare_diffPixelSize.dm4": "non-square pixels",
    "rsciio_jeol_View000_0000000.img": "JEOL Analysis Station",
}
TOLERANCE = {  # relative; the MANIFEST's value is rosettasciio's only for this file (no permissive reader):
    # refscope reads 1 / PixelsPerMeter / magnification = 1.8305 nm, 0.53 % from rosettasciio's 1.8208 nm
    "rsciio_JEOL-SightX-TEM-mag-dummy.tif": 1e-2,
}
MUST_ENHANCE = ("ncem_16_STOimage_1.ser", "ncem_Acquisition_18.emd", "ncem_STEM_HAADF_Diffraction_Micro.emd",
                "scifi_fei_emd_image.emd")


@dataclass(frozen=True)
class Entry:
    """One MANIFEST row: the file, its (frames, height, width) and dtype, its pixel size in nm (None: none in the
    file; nan: different per axis)."""

    name: str
    frames: int
    shape: tuple[int, int]
    dtype: str
    pixel_nm: float | None


def _pixel(cell: str) -> float | None:
    bold = re.findall(r"\*\*([^*]+)\*\*", cell)
    text = bold[0] if bold else cell
    if "none in file" in text:
        return None
    if "×" in text:
        return float("nan")
    ours = re.search(r"refscope ([\d.]+) nm", cell)
    if not bold and ours:
        return float(ours.group(1))  # a file refscope already read before: its value, rsciio's beside it
    return float(re.findall(r"([\d.]+) nm", text)[-1])


def _manifest() -> list[Entry]:
    manifest = FOLDER / "MANIFEST.md"
    if not manifest.is_file():
        return []
    entries = []
    for line in manifest.read_text(encoding="utf-8").splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        name = re.match(r"`([^`]+)`", cells[0]).group(1)  # type: ignore[union-attr]
        dims_cell = cells[4]
        after = re.search(r"\((\d+)×(\d+) after refscope", dims_cell)
        dims = [int(d) for d in re.match(r"\s*((?:\d+\s*×\s*)*\d+)", dims_cell).group(1).split("×")]  # type: ignore
        if after:
            dims = [int(after.group(1)), int(after.group(2))]
        frames = dims[0] if len(dims) == 3 and "detectors" not in cells[1] else 1
        dtype = re.search(r"(u?int\d+|float\d+)", dims_cell).group(1)  # type: ignore[union-attr]
        entries.append(Entry(name, frames, (dims[-2], dims[-1]), dtype, _pixel(cells[5])))
    return entries


ENTRIES = _manifest()
IDS = [e.name for e in ENTRIES]


@pytest.fixture(autouse=True)
def _data() -> None:
    if not ENTRIES:
        pytest.skip(f"vendor format files not found at {FOLDER}")


def test_the_manifest_lists_every_file_in_the_folder() -> None:
    listed = {e.name for e in ENTRIES} | {"MANIFEST.md"}
    companions = {p.name for p in FOLDER.glob("*.emi")}
    assert {p.name for p in FOLDER.iterdir()} - companions == listed
    assert len(ENTRIES) >= 15


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_every_file_reads_with_the_manifest_pixel_size_shape_and_dtype_or_is_refused_with_its_reason(entry: Entry
                                                                                                     ) -> None:
    path = FOLDER / entry.name
    if entry.name in REFUSED:
        with pytest.raises(InputFileError) as info:
            read_frames(path)
        assert str(info.value).startswith(f"{path}: ") and REFUSED[entry.name] in str(info.value)
        return
    frames = read_frames(path)
    assert len(frames) == entry.frames
    for index, image in enumerate(frames):
        assert image.data.shape == entry.shape and image.data.dtype == np.dtype(entry.dtype)
        assert image.metadata.frame == (index if entry.frames > 1 else None)
        if entry.pixel_nm is None:
            assert image.pixel_size_nm is None and image.metadata.pixel_size_source is None  # never a silent 1 nm
            assert "no length unit" in image.metadata.extra["calibration_note"]
        else:
            assert image.pixel_size_nm == pytest.approx(entry.pixel_nm, rel=TOLERANCE.get(entry.name, 1e-3))
            assert image.metadata.pixel_size_yx_nm is not None


def test_non_square_pixels_are_refused_naming_both_sizes() -> None:
    path = FOLDER / "ncem_dmTest_float32_nonSquare_diffPixelSize.dm4"
    with pytest.raises(InputFileError, match=r"non-square pixels \(0\.2 nm high x 1 nm wide\)"):
        read_image(path)


def test_a_tia_emi_is_refused_pointing_at_its_ser() -> None:
    path = FOLDER / "ncem_16_STOimage.emi"
    with pytest.raises(InputFileError, match=r"TIA \.emi metadata file.*ncem_16_STOimage_1\.ser"):
        read_image(path)


def test_a_multi_detector_velox_file_gives_the_configured_detector_and_refuses_an_absent_one() -> None:
    path = FOLDER / "ncem_STEM_HAADF-DF4-DF2-BF_Diffraction_Micro.emd"
    haadf, bf = read_image(path), read_image(path, detector="bf")
    assert haadf.metadata.detector == "HAADF" and bf.metadata.detector == "BF"
    assert not np.array_equal(haadf.data, bf.data)
    single = read_image(FOLDER / "ncem_STEM_HAADF_Diffraction_Micro.emd")
    assert single.metadata.detector == "HAADF" and single.data.shape == haadf.data.shape
    with pytest.raises(InputFileError, match="none from 'ADF'.*ingest.detector"):
        read_image(path, detector="ADF")


def test_a_stack_needs_a_page_and_each_page_is_that_frame() -> None:
    path = FOLDER / "rsciio_03_Scanning_Preview_1.ser"
    with pytest.raises(InputFileError, match="stack of 5 images"):
        read_image(path)
    frames = read_frames(path)
    assert np.array_equal(read_image(path, page=3).data, frames[3].data)
    assert not np.array_equal(frames[0].data, frames[4].data)


def test_vendor_metadata_is_read_for_outputs_and_the_catalogue() -> None:
    ser = read_image(FOLDER / "ncem_16_STOimage_1.ser").metadata
    assert ser.vendor == "tia" and ser.modality == "STEM" and ser.extra["hv_V"] == 80000.0
    assert ser.dwell_s == pytest.approx(29e-6) and ser.acquired_at.year == 2011
    velox = read_image(FOLDER / "scifi_fei_emd_image.emd").metadata
    assert (velox.vendor, velox.detector, velox.modality, velox.extra["hv_V"]) == ("velox", "HAADF", "STEM", 200000.0)
    assert velox.dwell_s == pytest.approx(20e-6) and velox.acquired_at.year == 2017
    dm = read_image(FOLDER / "rsciio_test_STEM_image.dm3").metadata
    assert dm.vendor == "gatan" and dm.extra["hv_V"] == 200000.0 and dm.dwell_s == pytest.approx(3.5e-6)
    mrc = read_image(FOLDER / "rsciio_HAADFscan.mrc").metadata
    assert mrc.detector == "HAADF" and mrc.extra["hv_V"] == 300000.0
    assert read_image(FOLDER / "rsciio_test_tiff_Zeiss_SEM_512pix.tif").metadata.modality == "SEM"
    assert read_image(FOLDER / "rsciio_JEOL-SightX-TEM-mag-dummy.tif").metadata.modality == "TEM"


def test_nothing_the_microscope_wrote_is_modified(tmp_path: Path) -> None:
    copies = tmp_path / "in"
    shutil.copytree(FOLDER, copies)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in copies.iterdir()}
    for path in sorted(copies.iterdir()):
        try:
            read_frames(path)
        except InputFileError:
            pass
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in copies.iterdir()} == before


# ------------------------------------------------------------------------------------------ refscope enhance


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A paired model (x2) fitted on a small synthetic pair."""
    folder = tmp_path_factory.mktemp("vendor-state")
    pair = make_pair(rng=np.random.default_rng(3), lr_shape=(96, 128), factor=2.0)
    write_tiff(folder / "lr.tif", pair.lr.astype(np.float32), pixel_size_nm=pair.lr_pixel_size_nm)
    write_tiff(folder / "hr.tif", pair.hr.astype(np.float32), pixel_size_nm=pair.hr_pixel_size_nm)
    assert main(["fit", str(folder / "lr.tif"), str(folder / "hr.tif"), "-o", str(folder / "model"),
                 "--library-size", "500", "-q"]) == 0
    return folder / "model"


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_enhance_writes_the_right_output_pixel_size_or_exits_2_with_one_line(entry: Entry, state: Path,
                                                                              tmp_path: Path, capsys) -> None:
    path = FOLDER / entry.name
    out = tmp_path / "out.tif"
    code = main(["enhance", str(state), str(path), "-o", str(out), "-q"])
    captured = capsys.readouterr()
    if code == 2:
        errors = [line for line in captured.err.splitlines() if not line.startswith("warning:")]
        assert len(errors) == 1 and errors[0].startswith(f"refscope enhance: error: {path}: "), captured.err
        assert entry.name not in MUST_ENHANCE, captured.err
        assert not out.exists()
        return
    assert code == 0, captured.err
    assert entry.name not in REFUSED
    first = read_image(out, page=0) if entry.frames > 1 else read_image(out)
    assert first.data.shape == (2 * entry.shape[0], 2 * entry.shape[1])
    if entry.pixel_nm is None:
        assert first.pixel_size_nm is None and "uncalibrated" in captured.out
    else:
        assert first.pixel_size_nm == pytest.approx(entry.pixel_nm / 2, rel=TOLERANCE.get(entry.name, 1e-3))
    if entry.frames > 1:
        assert f"{entry.frames} frames" in captured.out
        with pytest.raises(InputFileError, match=f"{entry.frames} page"):
            read_image(out)


def test_enhance_on_the_folder_names_every_file(state: Path, tmp_path: Path, capsys) -> None:
    """No file of the folder is skipped silently: each is enhanced, refused with its reason, or (a companion)
    named in a note."""
    code = main(["enhance", str(state), str(FOLDER), "-o", str(tmp_path / "out"), "-q"])
    captured = capsys.readouterr()
    assert code == 2  # some files are refused
    for path in FOLDER.iterdir():
        if path.name == "MANIFEST.md":
            assert str(path) in captured.err  # not an image: refused with its reason
            continue
        written = (tmp_path / "out" / f"{path.stem}_x2.tif").is_file()
        assert written or str(path) in captured.err, path.name
    for name in MUST_ENHANCE:
        assert (tmp_path / "out" / f"{Path(name).stem}_x2.tif").is_file()


def test_batch_enhances_a_series_file_into_one_stack_with_the_pixel_size(state: Path, tmp_path: Path,
                                                                         capsys) -> None:
    path = FOLDER / "rsciio_03_Scanning_Preview_1.ser"
    out = tmp_path / "out"
    assert main(["batch", str(state), str(path), "-o", str(out), "--quiet", "--scheduler", "threads",
                 "--workers", "1"]) == 0, capsys.readouterr().err
    frames = read_frames(out / "rsciio_03_Scanning_Preview_1_x2.tif")
    assert len(frames) == 5 and frames[0].data.shape == (256, 256)
    assert frames[0].pixel_size_nm == pytest.approx(0.38435 / 2, rel=1e-3)


# ------------------------------------------------------------------------------------------------ the daemon


@pytest.mark.timeout(300)
def test_a_daemon_watching_a_folder_names_every_dropped_file_ingested_or_refused_and_keeps_running(tmp_path: Path
                                                                                                  ) -> None:
    from refscope.daemon.state.catalogue import CATALOGUE_NAME
    from refscope.daemon.config import load_config
    from refscope.daemon.wire.control import ControlClient
    from refscope.daemon.service.daemon import Daemon
    from tests.daemon.waiting import wait_for

    watch, out = tmp_path / "in", tmp_path / "out"
    watch.mkdir()
    config = load_config(None, {"control.endpoint": "tcp://127.0.0.1:*", "control.events_endpoint": "tcp://127.0.0.1:*",
                                "publish.pub_endpoint": "tcp://127.0.0.1:*", "model.library_size": "2000",
                                "trainer.enabled": "false", "ingest.watch": str(watch), "publish.out_dir": str(out)})
    daemon = Daemon(config, folder_options={"poll_interval_s": 0.1, "retry_s": 0.1, "max_retries": 1})
    daemon.start()
    names = sorted(p.name for p in FOLDER.iterdir())

    def status() -> dict:
        with ControlClient(daemon.endpoints["control"], timeout_s=20.0) as client:
            reply = client.request("status")
        assert reply["ok"], reply
        return reply["status"]

    def recent() -> list[str]:
        return [line for info in status()["ingest"].values() for line in info.get("recent", [])]

    try:
        for name in names:  # as the microscope PC drops them: each appears complete (copied, then renamed in)
            shutil.copyfile(FOLDER / name, watch / f".{name}.part")
            (watch / f".{name}.part").rename(watch / name)
        lines = wait_for(lambda: (lambda r: all(any(line.startswith(f"{watch / n}: ") for line in r) for n in names)
                                  and r)(recent()), 240, "every dropped file named in the status", interval=0.5)
        report = {n: next(line for line in lines if line.startswith(f"{watch / n}: ")) for n in names}
        for name in MUST_ENHANCE:
            assert report[name].endswith(": ingested"), report[name]
        assert "ingested (91 of 91 frames)" in report["nist_etspy_HAADF_tiltseries.dm3"]
        assert "refused (not_matched)" in report["MANIFEST.md"]
        assert "refused (companion)" in report["ncem_16_STOimage.emi"]
        assert "refused (no_pixel_size)" in report["scifi_SI-Survey_Image.dm3"]  # never a silent 1 nm
        assert "non-square pixels" in report["ncem_dmTest_float32_nonSquare_diffPixelSize.dm4"]
        assert "refused (not_matched)" in report["rsciio_jeol_View000_0000000.img"]  # *.img: not in ingest.patterns
        assert status()["ingest"]  # the daemon still answers, its ingest running
        wait_for(lambda: any(out.glob("ncem_16_STOimage_1_x*.tif")), 120, "the TIA SER frame enhanced")
    finally:
        daemon.stop()
    refused = {n for n, line in report.items() if ": refused (" in line}
    assert refused >= set(REFUSED) | {"MANIFEST.md", "ncem_16_STOimage.emi", "scifi_SI-Survey_Image.dm3"}
    with sqlite3.connect(config.state_dir / CATALOGUE_NAME) as db:  # catalogued as refused, with the reason
        rows = dict(db.execute("SELECT source, reason FROM refused").fetchall())
    assert {Path(source).name for source in rows} >= refused, rows
    assert sorted(p.name for p in watch.iterdir()) == names  # nothing the microscope wrote was touched


def test_the_domain_check_knows_a_stem_frame_from_an_sem_one() -> None:
    from refscope.daemon.state.model_domain import ModelDomain

    sem = ModelDomain.of(read_image(FOLDER / "rsciio_test_tiff_Zeiss_SEM_512pix.tif"))
    stem = ModelDomain.of(read_image(FOLDER / "scifi_fei_emd_image.emd"))
    assert (sem.modality, stem.modality) == ("SEM", "STEM")
    assert any("a STEM frame, the model learned on SEM frames" in d for d in sem.differences(stem))
    assert ModelDomain.from_dict(stem.to_dict()) == stem
    assert not any("frame, the model learned" in d for d in stem.differences(
        ModelDomain.of(read_image(FOLDER / "ncem_16_STOimage_1.ser"))))
