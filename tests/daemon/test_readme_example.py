"""The README's Python example runs as printed (on a synthetic pair written as calibrated TIFFs)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from refscope.daemon.images import write_tiff
from refscope.models.synthetic import make_pair

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_python_examples_of_the_readme_run(tmp_path: Path, monkeypatch) -> None:
    """Both: the API of ``import refscope`` and the layers underneath (``refscope.models`` + the file reader)."""
    blocks = [block for block in re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if "fit(" in block]
    assert len(blocks) == 2 and "import refscope\n" in blocks[0]
    pair = make_pair(rng=np.random.default_rng(5), lr_shape=(96, 120), factor=2.0, lr_pixel_size_nm=10.0)
    write_tiff(tmp_path / "LR.tif", pair.lr.astype(np.float32), pixel_size_nm=10.0)
    write_tiff(tmp_path / "HR.tif", pair.hr.astype(np.float32), pixel_size_nm=5.0)
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        namespace: dict = {}
        exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - our own documentation
        assert namespace["sr"].shape == (2 * 96, 2 * 120) and np.isfinite(namespace["sr"]).all()
        model = namespace["model"]
        assert model.scale == 2 and len(getattr(model, "fitted", model).library) > 0
    assert (tmp_path / "state" / "library.json").is_file() and (tmp_path / "evaluation.png").is_file()
