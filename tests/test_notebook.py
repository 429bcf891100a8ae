"""The Colab quickstart runs headlessly (nbclient) on a shortened config and shows the reward curve."""

import os

import nbformat
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "colab", "r1_zero_quickstart.ipynb")


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("R1JAX_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("R1JAX_NOTEBOOK_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the reward / accuracy plot
    assert os.path.exists(tmp_path / "work" / "demo_results.json")
    # The notebook only imports r1jax: no trainer code copied into it.
    source = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")
    assert "def " not in source and "jax.jit" not in source
