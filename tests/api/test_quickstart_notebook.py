"""The example notebook ``examples/quickstart.ipynb`` runs (issue 15, item 8): its code cells are executed in order
in one namespace, as a kernel would run them (no Jupyter needed), and what it shows is checked."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "quickstart.ipynb"


def test_the_quickstart_notebook_runs_and_shows_a_model_an_enhanced_frame_and_a_figure(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    document = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    assert document["nbformat"] == 4
    cells = [c for c in document["cells"] if c["cell_type"] == "code"]
    assert cells and all(not c.get("outputs") for c in cells)  # committed without outputs
    namespace: dict = {"__name__": "__main__"}
    for index, cell in enumerate(cells):
        source = "".join(cell["source"])
        exec(compile(source, f"{NOTEBOOK.name}[code cell {index}]", "exec"), namespace)  # noqa: S102
    lr, sr, model = namespace["lr"], namespace["sr"], namespace["model"]
    assert sr.shape == (2 * lr.data.shape[0], 2 * lr.data.shape[1]) and model.scale == 2
    assert not np.array_equal(sr, namespace["bicubic"])
    png = namespace["work"] / "evaluation.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and len(namespace["figure"].axes) == 2 + 4
