"""Atomic writes leave either the old or the complete new file; saved state round-trips and detects corruption."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from refscope.daemon.atomic import TEMP_MARKER, atomic_write_bytes, atomic_write_json, atomic_writer
from refscope.daemon.errors import RefscopeError, StateError
from refscope.daemon.state.store import has_state, load_arrays, save_arrays, state_paths

# ------------------------------------------------------------------------------------------------- atomic


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_bytes_creates_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert _names(tmp_path) == ["a.bin"]


def test_atomic_writer_temp_file_lives_beside_target(tmp_path: Path) -> None:
    target = tmp_path / "out.tif"
    with atomic_writer(target) as handle:
        temp = Path(handle.name)
        assert temp.parent == tmp_path
        assert temp.name.startswith(f".out.tif{TEMP_MARKER}")
        handle.write(b"x" * 10)
        assert not target.exists()  # nothing visible until the block ends
    assert target.read_bytes() == b"x" * 10
    assert not temp.exists()
    assert _names(tmp_path) == ["out.tif"]


def test_atomic_writer_text_mode(tmp_path: Path) -> None:
    target = tmp_path / "t.txt"
    with atomic_writer(target, "w") as handle:
        handle.write("µm\n")
    assert target.read_text(encoding="utf-8") == "µm\n"


@pytest.mark.parametrize("existing", [None, b"old content"])
def test_atomic_writer_failure_midway_leaves_target_untouched(tmp_path: Path, existing: bytes | None) -> None:
    target = tmp_path / "state.npz"
    if existing is not None:
        target.write_bytes(existing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_writer(target) as handle:
            handle.write(b"partial " * 1000)
            handle.flush()
            raise RuntimeError("disk on fire")
    if existing is None:
        assert not target.exists()
        assert _names(tmp_path) == []
    else:
        assert target.read_bytes() == existing
        assert _names(tmp_path) == ["state.npz"]


def test_atomic_writer_failure_in_replace_removes_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "x.json"
    target.write_text("{}")

    def broken_replace(src, dst):
        raise OSError("replace refused")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="replace refused"):
        atomic_write_bytes(target, b"new")
    assert target.read_text() == "{}"
    assert _names(tmp_path) == ["x.json"]


def test_atomic_writer_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        atomic_write_bytes(tmp_path / "no" / "such.bin", b"x")


def test_atomic_write_json(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    atomic_write_json(target, {"scale": np.int64(4), "px": np.float32(2.5), "shape": (3, 4), "p": tmp_path})
    assert json.loads(target.read_text()) == {"scale": 4, "px": 2.5, "shape": [3, 4], "p": str(tmp_path)}
    with pytest.raises(ValueError):
        atomic_write_json(target, {"bad": float("nan")})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    assert json.loads(target.read_text())["scale"] == 4  # failed writes left the previous file
    assert _names(tmp_path) == ["m.json"]


# -------------------------------------------------------------------------------------------------- state


def _arrays(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "lr_patches": rng.normal(size=(50, 7, 7)).astype(np.float32),
        "hr_patches": rng.integers(0, 65535, size=(50, 28, 28), dtype=np.uint16),
        "scale": np.array(4),
        "file": np.arange(3),  # a name that np.savez(file, **arrays) could not take
    }


def test_state_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    arrays = _arrays(rng)
    manifest = {"method": "library", "scale": 4, "lr_pixel_nm": 112.413, "pairs": ["pair00", "pair01"]}
    written = save_arrays(tmp_path / "state", "library", arrays, manifest)
    npz_path, manifest_path = state_paths(tmp_path / "state", "library")
    assert written == manifest_path and npz_path.is_file()
    assert _names(tmp_path / "state") == ["library.json", "library.npz"]
    assert has_state(tmp_path / "state", "library")

    loaded, loaded_manifest = load_arrays(tmp_path / "state", "library")
    assert loaded_manifest == manifest
    assert sorted(loaded) == sorted(arrays)
    for key, value in arrays.items():
        assert loaded[key].dtype == value.dtype
        np.testing.assert_array_equal(loaded[key], value)
    # The .npz is an ordinary numpy archive.
    with np.load(npz_path, allow_pickle=False) as plain:
        np.testing.assert_array_equal(plain["hr_patches"], arrays["hr_patches"])


def test_state_overwrite(tmp_path: Path) -> None:
    save_arrays(tmp_path, "m", {"a": np.zeros(3)}, {"v": 1})
    save_arrays(tmp_path, "m", {"b": np.ones(2)}, {"v": 2})
    arrays, manifest = load_arrays(tmp_path, "m")
    assert list(arrays) == ["b"] and manifest == {"v": 2}


def test_missing_state(tmp_path: Path) -> None:
    assert not has_state(tmp_path, "library")
    with pytest.raises(StateError, match=r"no state named 'library' in .*; run `refscope fit` first"):
        load_arrays(tmp_path, "library")


def test_corrupted_npz_detected(tmp_path: Path, rng: np.random.Generator) -> None:
    save_arrays(tmp_path, "library", _arrays(rng), {"method": "library"})
    npz_path, _ = state_paths(tmp_path, "library")
    data = bytearray(npz_path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the array data
    npz_path.write_bytes(bytes(data))
    with pytest.raises(StateError, match="checksum mismatch, the file is corrupt") as info:
        load_arrays(tmp_path, "library")
    assert str(npz_path) in str(info.value)
    assert isinstance(info.value, RefscopeError)


def test_truncated_npz_detected(tmp_path: Path, rng: np.random.Generator) -> None:
    save_arrays(tmp_path, "library", _arrays(rng), {})
    npz_path, _ = state_paths(tmp_path, "library")
    npz_path.write_bytes(npz_path.read_bytes()[:100])
    with pytest.raises(StateError, match="checksum mismatch"):
        load_arrays(tmp_path, "library")


def test_interrupted_save_keeps_a_whole_state(tmp_path: Path, rng: np.random.Generator,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash before the manifest (the commit point) leaves the previous state loadable, one after it the new
    state -- never mixed arrays, never an unloadable folder (the daemon must restart on it)."""
    save_arrays(tmp_path, "library", {"a": np.zeros(4)}, {"v": 1})
    import refscope.daemon.state.store as store

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(store, "atomic_write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        save_arrays(tmp_path, "library", {"a": np.ones(4)}, {"v": 2})
    arrays, manifest = load_arrays(tmp_path, "library")
    assert manifest == {"v": 1} and not arrays["a"].any()

    monkeypatch.undo()
    renames = []
    real_replace = os.replace

    def crash_at_third_rename(*args, **kwargs):  # the new arrays' temp file, the manifest's, then the commit
        renames.append(args)
        if len(renames) == 3:
            raise KeyboardInterrupt("power cut")
        return real_replace(*args, **kwargs)

    monkeypatch.setattr(os, "replace", crash_at_third_rename)  # the manifest written, the arrays not renamed yet
    with pytest.raises(KeyboardInterrupt):
        save_arrays(tmp_path, "library", {"a": np.full(4, 3.0)}, {"v": 3})
    monkeypatch.undo()
    arrays, manifest = load_arrays(tmp_path, "library")
    assert manifest == {"v": 3} and (arrays["a"] == 3).all()
    save_arrays(tmp_path, "library", {"a": np.full(4, 4.0)}, {"v": 4})  # the next save completes normally
    assert _names(tmp_path) == ["library.json", "library.npz"] and load_arrays(tmp_path, "library")[1] == {"v": 4}


def test_npz_without_manifest(tmp_path: Path) -> None:
    npz_path, manifest_path = state_paths(tmp_path, "library")
    save_arrays(tmp_path, "library", {"a": np.zeros(2)}, {})
    manifest_path.unlink()
    with pytest.raises(StateError, match="interrupted save.*run `refscope fit` first"):
        load_arrays(tmp_path, "library")


def test_bad_manifest(tmp_path: Path) -> None:
    save_arrays(tmp_path, "library", {"a": np.zeros(2)}, {})
    _, manifest_path = state_paths(tmp_path, "library")
    manifest_path.write_text("{truncated")
    with pytest.raises(StateError, match="library.json: is not a valid JSON manifest"):
        load_arrays(tmp_path, "library")


def test_invalid_arguments_leave_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid state name"):
        save_arrays(tmp_path, "../escape", {"a": np.zeros(2)}, {})
    with pytest.raises(ValueError, match="dtype object"):
        save_arrays(tmp_path, "m", {"a": np.array([{}, None], dtype=object)}, {})
    with pytest.raises(ValueError):
        save_arrays(tmp_path, "m", {"a": np.zeros(2)}, {"x": float("nan")})
    assert _names(tmp_path) == []
