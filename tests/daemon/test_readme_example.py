"""The README's Python example runs as printed (on a synthetic pair written as calibrated TIFFs)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from refscope.daemon.tiff_io import write_tiff
from refscope.models.synthetic import make_pair

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_python_example_of_the_readme_runs(tmp_path: Path, monkeypatch) -> None:
    (code,) = [block for block in re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if "fit(" in block]
    pair = make_pair(rng=np.random.default_rng(5), lr_shape=(96, 120), factor=2.0, lr_pixel_size_nm=10.0)
    write_tiff(tmp_path / "LR.tif", pair.lr.astype(np.float32), pixel_size_nm=10.0)
    write_tiff(tmp_path / "HR.tif", pair.hr.astype(np.float32), pixel_size_nm=5.0)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - our own documentation
    assert namespace["sr"].shape == (2 * 96, 2 * 120) and np.isfinite(namespace["sr"]).all()
    assert namespace["model"].scale == 2 and len(namespace["model"].library) > 0
