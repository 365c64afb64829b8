"""The `refscope` command line, run in-process: fit -> enhance -> evaluate on small synthetic pairs, the demo,
and one-line errors with exit code 2 for every kind of bad input."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from refscope.daemon.cli import main
from refscope.daemon.images import read_image, write_tiff
from refscope.models.synthetic import make_pair

LR_SHAPE = (96, 128)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A calibrated synthetic pair (10 nm LR, 5 nm HR), a second LR frame and assorted bad files."""
    folder = tmp_path_factory.mktemp("pair")
    pair = make_pair(rng=np.random.default_rng(3), lr_shape=LR_SHAPE, factor=2.0)
    other = make_pair(rng=np.random.default_rng(23), lr_shape=LR_SHAPE, factor=2.0)  # NCC 0.20 < 0.3
    paths = {name: folder / f"{name}.tif" for name in ("lr", "hr", "other_hr", "big_hr", "constant", "uncalibrated")}
    write_tiff(paths["lr"], pair.lr.astype(np.float32), pixel_size_nm=pair.lr_pixel_size_nm)
    write_tiff(paths["hr"], pair.hr.astype(np.float32), pixel_size_nm=pair.hr_pixel_size_nm)
    write_tiff(paths["other_hr"], other.hr.astype(np.float32), pixel_size_nm=other.hr_pixel_size_nm)
    big = np.random.default_rng(0).normal(100, 10, (2 * LR_SHAPE[0] + 40, 2 * LR_SHAPE[1] + 40))
    write_tiff(paths["big_hr"], big.astype(np.float32), pixel_size_nm=5.0)
    write_tiff(paths["constant"], np.full(LR_SHAPE, 7, np.float32), pixel_size_nm=5.0)
    write_tiff(paths["uncalibrated"], pair.hr.astype(np.float32), pixel_size_nm=None)
    frames = folder / "frames"
    frames.mkdir()
    write_tiff(frames / "a.tif", pair.lr.astype(np.float32), pixel_size_nm=10.0)
    write_tiff(frames / "b.tif", other.lr.astype(np.float32), pixel_size_nm=10.0)
    paths["frames"] = frames
    paths["text"] = folder / "notes.tif"
    paths["text"].write_text("this is not an image\n")
    data = paths["lr"].read_bytes()
    paths["truncated"] = folder / "truncated.tif"
    paths["truncated"].write_bytes(data[: len(data) // 2])
    paths["rgb"] = folder / "rgb.tif"
    tifffile.imwrite(paths["rgb"], np.zeros((64, 64, 3), np.uint8), photometric="rgb")
    return paths


@pytest.fixture(scope="module")
def state(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("state") / "model"
    assert main(["fit", str(files["lr"]), str(files["hr"]), "-o", str(folder), "--library-size", "1000"]) == 0
    return folder


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fit_prints_registration_and_saves_model(files, tmp_path: Path, capsys) -> None:
    before = _digest(files["lr"]), _digest(files["hr"])
    code = main(["fit", str(files["lr"]), str(files["hr"]), str(files["hr"]), "-o", str(tmp_path / "s"),
                 "--library-size", "500", "--seed", "1"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.count("NCC") == 2 and "library: 500 patch pairs" in out and "noise sigma" in out
    assert (tmp_path / "s" / "library.json").is_file() and (tmp_path / "s" / "library.npz").is_file()
    assert (_digest(files["lr"]), _digest(files["hr"])) == before  # inputs untouched
    from refscope.daemon.state.model_store import load_model

    safe = load_model(tmp_path / "s").safe  # chosen on the right quarter of each overlap, as the learner does
    assert safe is not None and safe.sigma_px >= 0 and safe.delta_db >= 0 and safe.q_ref > 0


def test_enhance_one_file(files, state, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sub" / "lr_sr.tif"
    out.parent.mkdir()  # a single output file goes into an existing folder (a missing one is refused, see below)
    assert main(["enhance", str(state), str(files["lr"]), "-o", str(out)]) == 0
    assert "paired" in capsys.readouterr().out
    image = read_image(out)
    assert image.data.shape == (2 * LR_SHAPE[0], 2 * LR_SHAPE[1]) and image.data.dtype == np.float32
    assert image.pixel_size_nm == pytest.approx(5.0)
    provenance = {k: image.metadata.extra.pop(k) for k in ("refscope_version", "source_sha256", "model_id")}
    assert provenance["model_id"].startswith("library:")  # checked in test_enhance_outputs_carry_provenance
    assert image.metadata.extra == {"method": "paired", "scale": 2, "source": str(files["lr"]),
                                    "source_vendor": "imagej", "source_dtype": "float32", "source_pixel_size_nm": 10.0}


def test_enhance_folder_writes_one_output_per_frame(files, state, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["enhance", str(state), str(files["frames"]), "-o", str(out), "--method", "bicubic"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_x2.tif", "b_x2.tif"]
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    assert read_image(out / "b_x2.tif").metadata.extra["method"] == "bicubic"


def test_enhance_folder_keeps_going_past_a_bad_frame(files, state, tmp_path: Path, capsys) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "a.tif").write_bytes(files["lr"].read_bytes())
    (frames / "b.tif").write_text("not an image")
    out = tmp_path / "out"
    assert main(["enhance", str(state), str(frames), "-o", str(out), "--method", "paired", "--sigma-n", "2"]) == 2
    captured = capsys.readouterr()
    assert [p.name for p in out.iterdir()] == ["a_x2.tif"] and "a_x2.tif" in captured.out
    assert captured.err.strip().splitlines() == [captured.err.strip()] and str(frames / "b.tif") in captured.err


def test_enhance_serves_through_onnx_runtime_and_matches_the_reference(files, state, tmp_path: Path, capsys) -> None:
    onnx_out, numpy_out = tmp_path / "onnx.tif", tmp_path / "numpy.tif"
    assert main(["enhance", str(state), str(files["lr"]), "-o", str(onnx_out)]) == 0
    assert "(onnx)" in capsys.readouterr().out
    assert main(["enhance", str(state), str(files["lr"]), "-o", str(numpy_out), "--engine", "numpy"]) == 0
    assert "(numpy)" in capsys.readouterr().out
    served, reference = read_image(onnx_out).data, read_image(numpy_out).data
    assert np.max(np.abs(served - reference)) <= 1e-4 * float(np.ptp(reference))


def test_saved_model_gives_the_same_output_as_a_fresh_fit(files, state, tmp_path: Path) -> None:
    again = tmp_path / "again"
    assert main(["fit", str(files["lr"]), str(files["hr"]), "-o", str(again), "--library-size", "1000"]) == 0
    assert main(["enhance", str(state), str(files["lr"]), "-o", str(tmp_path / "a.tif")]) == 0
    assert main(["enhance", str(again), str(files["lr"]), "-o", str(tmp_path / "b.tif")]) == 0
    np.testing.assert_array_equal(read_image(tmp_path / "a.tif").data, read_image(tmp_path / "b.tif").data)


def test_enhance_refuses_to_overwrite_an_input(files, state, tmp_path: Path, capsys) -> None:
    target = tmp_path / "frame.tif"
    target.write_bytes(files["lr"].read_bytes())
    assert main(["enhance", str(state), str(target), "-o", str(target)]) == 2
    assert "refusing to overwrite an input" in capsys.readouterr().err
    assert target.read_bytes() == files["lr"].read_bytes()


def test_evaluate_writes_json_csv_and_png(files, tmp_path: Path, capsys) -> None:
    paths = {k: tmp_path / f"e.{k}" for k in ("json", "csv", "png")}
    code = main(["evaluate", str(files["lr"]), str(files["hr"]), "--no-in-sample", "--methods", "paired,original",
                 "--json", str(paths["json"]), "--csv", str(paths["csv"]), "--plot", str(paths["png"])])
    out = capsys.readouterr().out
    assert code == 0
    assert "bicubic" in out and "paired" in out and "dPSNR" in out
    report = json.loads(paths["json"].read_text())
    row = next(r for r in report["summary"] if r["method"] == "paired" and r["sample"] == "out")
    assert isinstance(row["d_psnr"], float) and np.isfinite(row["d_psnr"])
    assert report["scale"] == 2 and report["factor"] == pytest.approx(2.0)
    assert report["geometry"]["score"] > 0.5 and report["settings"]["in_sample"] is False
    assert len(report["results"]) == 2 * 3  # 2 methods x 3 out-of-sample subimages
    assert paths["csv"].read_text().splitlines()[0].startswith("method,sample,n,")
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_peers_scores_tuned_blur_and_nlm_beside_the_methods(files, tmp_path: Path, capsys) -> None:
    out_json = tmp_path / "peers.json"
    code = main(["evaluate", str(files["lr"]), str(files["hr"]), "--no-in-sample", "--methods", "paired", "--peers",
                 "--json", str(out_json)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "peer blur: setting" in printed and "peer nlm: setting" in printed
    report = json.loads(out_json.read_text())
    methods = {r["method"] for r in report["summary"] if r["sample"] == "out"}
    assert {"paired", "blur", "nlm"} <= methods and report["settings"]["peers"] is True
    for name in ("blur", "nlm"):
        row = next(r for r in report["summary"] if r["method"] == name and r["sample"] == "out")
        assert np.isfinite(row["d_psnr"]) and row["n"] == 3


def test_enhance_outputs_carry_provenance(files, state: Path, tmp_path: Path) -> None:
    import hashlib

    from refscope.daemon.state.store import state_sha256

    source_sha = hashlib.sha256(files["lr"].read_bytes()).hexdigest()
    for method, expected_model in (("paired", f"library:{state_sha256(state, 'library')[:12]}"), ("bicubic", None)):
        out = tmp_path / f"{method}.tif"
        assert main(["enhance", str(state), str(files["lr"]), "-o", str(out), "--method", method]) == 0
        extra = read_image(out).metadata.extra
        assert extra["source_sha256"] == source_sha and extra["method"] == method
        assert extra["refscope_version"] and extra["refscope_version"] != ""
        assert extra.get("model_id") == expected_model


def test_demo_prints_the_table(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--offline", "--small", "--seed", "2", "--workdir", str(tmp_path), "--json",
                 str(tmp_path / "d.json")]) == 0
    out = capsys.readouterr().out
    assert "paired" in out and "bicubic" in out and str(tmp_path) in out
    assert (tmp_path / "lr_x2.tif").is_file() and (tmp_path / "model" / "library.json").is_file()
    assert json.loads((tmp_path / "d.json").read_text())["summary"]


def _bad(files: dict[str, Path], state: Path, out: Path) -> dict[str, tuple[list[str], str]]:
    """Case -> (argv, text the one-line error must contain)."""
    lr, hr = str(files["lr"]), str(files["hr"])
    return {
        "text file": (["fit", str(files["text"]), hr, "-o", str(out)], str(files["text"])),
        "truncated tiff": (["fit", lr, str(files["truncated"]), "-o", str(out)], str(files["truncated"])),
        "rgb": (["enhance", str(state), str(files["rgb"]), "-o", str(out / "x.tif")], str(files["rgb"])),
        "scale above factor": (["fit", lr, hr, "-o", str(out), "--scale", "4"], "mismatched scale"),
        "hr not finer": (["evaluate", lr, hr, "--hr-pixel-size", "10"], hr),
        "other scene": (["fit", lr, str(files["other_hr"]), "-o", str(out)], str(files["other_hr"])),
        "hr field larger": (["evaluate", lr, str(files["big_hr"])], str(files["big_hr"])),
        "constant": (["fit", lr, str(files["constant"]), "-o", str(out)], str(files["constant"])),
        "no pixel size": (["fit", lr, str(files["uncalibrated"]), "-o", str(out)], "--hr-pixel-size"),
        "missing file": (["evaluate", str(out / "nope.tif"), hr], "nope.tif"),
        "missing state": (["enhance", str(out / "nostate"), lr, "-o", str(out / "x.tif")], "nostate"),
        "unknown method": (["enhance", str(state), lr, "-o", str(out / "x.tif"), "--method", "magic"], "magic"),
        "unknown methods": (["evaluate", lr, hr, "--methods", "paired,magic"], "magic"),
    }


@pytest.mark.parametrize("case", ["text file", "truncated tiff", "rgb", "scale above factor", "hr not finer",
                                  "other scene", "hr field larger", "constant", "no pixel size", "missing file",
                                  "missing state", "unknown method", "unknown methods"])
def test_bad_input_gives_one_line_and_exit_code_2(case: str, files, state, tmp_path: Path, capsys) -> None:
    argv, expected = _bad(files, state, tmp_path)[case]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"refscope {argv[0]}: error: ") and expected in lines[0]
    assert "Traceback" not in captured.err and not (tmp_path / "x.tif").exists()


def test_bench_reports_ratios_against_the_exact_baseline(state, capsys) -> None:
    assert main(["bench", str(state), "--size", "96x64", "--runs", "1", "--networks", "compact"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("  ")[0]: line.split() for line in out.splitlines() if line.startswith(("paired", "compact"))}
    assert set(rows) == {"paired, exact NumPy (baseline)", "paired, served (onnx)", "compact network, ONNX Runtime"}
    assert float(rows["paired, exact NumPy (baseline)"][-2]) == 1.0  # the baseline's own ratio, no agreement
    served = rows["paired, served (onnx)"]
    assert served[-1] == "dB" and float(served[-3]) > 0 and float(served[-2]) > 60  # ratio, PSNR(exact, served)
    assert main(["bench", "--size", "95x64"]) == 2  # not a multiple of the scale
    assert "multiple" in capsys.readouterr().err


def test_help_and_version(capsys) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("refscope ")
    for command in ("fit", "enhance", "evaluate", "demo"):
        assert main([command, "--help"]) == 0
        assert f"usage: refscope {command}" in capsys.readouterr().out
    assert main([]) == 2


def test_entry_point_runs_as_a_module() -> None:
    result = subprocess.run([sys.executable, "-m", "refscope.daemon.cli", "--help"], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0
    for command in ("fit", "enhance", "evaluate", "demo"):
        assert command in result.stdout


def test_output_paths_are_checked_before_the_work(tmp_path, capsys):
    """Issue 15.4: `evaluate --plot /nonexistent/x.png` failed after the evaluation, `fit -o` to an impossible place
    after the fit, and `enhance -o /nonexistent/out.tif` silently created folders."""
    import time

    missing = tmp_path / "no" / "such"
    start = time.perf_counter()
    assert main(["evaluate", "lr.tif", "hr.tif", "--plot", str(missing / "x.png")]) == 2
    assert main(["fit", "lr.tif", "hr.tif", "-o", str(missing / "state")]) == 2
    assert main(["enhance", str(tmp_path), "in.tif", "-o", str(missing / "out.tif")]) == 2
    assert time.perf_counter() - start < 5  # refused up front: the inputs (which do not exist) were never read
    err = capsys.readouterr().err
    assert err.count(f"folder {missing} does not exist") + err.count(f"folder {missing.parent} does not exist") >= 2
    assert "--plot" in err and not missing.exists() and not missing.parent.exists()
    (tmp_path / "afile").write_text("x")
    assert main(["fit", "lr.tif", "hr.tif", "-o", str(tmp_path / "afile")]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err


def test_a_frame_outside_the_models_domain_gets_a_warning_and_strict_refuses_it(files, state, tmp_path, capsys):
    """Issue 15.2: a model fitted on one microscope's frames met another's (8-bit, another pixel size) silently."""
    from refscope.daemon.state.model_store import load_domain

    domain = load_domain(state)
    assert domain is not None and domain.pixel_size_nm == pytest.approx(10.0) and domain.dtype == "float32"
    lr = read_image(files["lr"]).data
    foreign = tmp_path / "zeiss_like.tif"
    write_tiff(foreign, np.clip(lr * 250, 0, 255).astype(np.uint8), pixel_size_nm=4.0)
    assert main(["enhance", str(state), str(foreign), "-o", str(tmp_path / "a.tif")]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and "outside the model's domain" in err
    assert "pixel size 4 nm, the model's 10 nm" in err and "pixel type uint8, the model's float32" in err
    assert main(["enhance", str(state), str(foreign), "-o", str(tmp_path / "b.tif"), "--strict"]) == 2
    assert "(--strict)" in capsys.readouterr().err and not (tmp_path / "b.tif").exists()
    assert main(["enhance", str(state), str(files["lr"]), "-o", str(tmp_path / "c.tif"), "--strict"]) == 0  # in it
    assert "warning" not in capsys.readouterr().err


def test_an_fei_frame_enhanced_into_ome_tiff_keeps_its_pixel_type_pixel_size_and_acquisition(state, tmp_path,
                                                                                           shared_data, capsys):
    """Issue 15.3: outputs were ImageJ float32 whatever was asked, and the vendor metadata was dropped."""
    import xml.etree.ElementTree as ET

    source = shared_data / "sem_pairs" / "raw" / "96336e__NiO_DC_5000x_E.tif"
    out = tmp_path / "out.ome.tif"
    assert main(["enhance", str(state), str(source), "-o", str(out), "--method", "bicubic"]) == 0
    capsys.readouterr()
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome and tif.pages[0].dtype == np.uint16
        root = ET.fromstring(tif.ome_metadata)
    pixels = next(e for e in root.iter() if e.tag.endswith("Pixels"))
    assert float(pixels.get("PhysicalSizeX")) == pytest.approx(26.9792 / 2 / 1e3, rel=1e-4)  # µm
    assert pixels.get("PhysicalSizeXUnit") == "µm"
    pairs = {v.get("K"): v.text for v in root.iter() if v.tag.endswith("}M")}
    assert json.loads(pairs["hv_V"]) == 5000.0 and json.loads(pairs["working_distance_m"]) == pytest.approx(0.0134907)
    assert json.loads(pairs["dwell_s"]) == pytest.approx(3e-05) and pairs["detector"] == "ETD"
    assert json.loads(pairs["stage_xy_m"]) == pytest.approx([-0.0141488, -0.0146303])
    again = read_image(out)  # refscope reads its own OME output back with the pixel size
    assert again.pixel_size_nm == pytest.approx(26.9792 / 2, rel=1e-4) and again.data.dtype == np.uint16
    assert main(["enhance", str(state), str(source), "-o", str(tmp_path / "f.tif"), "--method", "bicubic",
                 "--dtype", "float32"]) == 0
    assert read_image(tmp_path / "f.tif").data.dtype == np.float32
