"""Execute every notebook under notebooks/ (they teach with the public API; they must run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import fixtures_dir

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat", reason="nbformat is needed to read notebooks")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is needed to run notebooks")
    pytest.importorskip("ipykernel", reason="ipykernel is needed to run notebooks")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(path, as_version=4)
    needs = notebook.metadata.get("kldiv", {}).get("needs_fixtures", [])
    missing = [f for f in needs if not (fixtures_dir() / f).is_dir()]
    if missing:
        pytest.skip(f"{path.name} reproduces real TensorRT caches from the shared fixtures; "
                    f"{', '.join(missing)} not found under {fixtures_dir()} (set KLDIV_FIXTURES)")
    # the notebooks find the fixtures the way the tests do
    monkeypatch.setenv("KLDIV_FIXTURES", str(fixtures_dir()))
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},  # notebooks may not write the repo
    )
    client.execute()
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors
    source = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    assert "plt.show()" not in source, "notebooks render figures with the Agg backend"


def test_notebooks_exist() -> None:
    assert NOTEBOOKS, "notebooks/ has no .ipynb files"
