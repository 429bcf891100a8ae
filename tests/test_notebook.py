"""The Colab notebooks run headlessly (nbclient) on shortened configs and show their curves."""

import os
import re

import nbformat
from nbclient import NotebookClient

from r1jax.data import formats
from r1jax.models import toy
from r1jax.tokenizer import TEMPLATES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "colab", "r1_zero_quickstart.ipynb")
REAL_CHECKPOINT_NOTEBOOK = os.path.join(REPO, "colab", "r1_zero_real_checkpoint.ipynb")


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


def _install_url(notebook: str) -> str:
    nb = nbformat.read(notebook, as_version=4)
    (url,) = re.findall(r'R1JAX_URL = "([^"]+)"', nb.cells[1].source)
    return url


def test_install_cells_use_the_address_setup_py_defines():
    (url,) = re.findall(r'url="([^"]+)"', open(os.path.join(REPO, "setup.py")).read())
    assert _install_url(NOTEBOOK) == url
    assert _install_url(REAL_CHECKPOINT_NOTEBOOK) == url


def test_real_checkpoint_notebook_executes_on_a_gsm8k_file(tmp_path, monkeypatch):
    """The second notebook on a toy Qwen2-family checkpoint (random weights, byte-level BPE) and a GSM8K Hub export
    written in the real layout, in place of a downloaded Qwen2.5-0.5B and GSM8K."""
    samples = formats.write_samples(str(tmp_path / "data"), n=8)
    texts = [r["question"] + " " + r["solution"] for r in formats.load(samples["gsm8k"], "gsm8k", split="train")]
    checkpoint = toy.write_toy_checkpoint(str(tmp_path / "toy"), texts + list(TEMPLATES.values()) * 4)
    monkeypatch.setenv("R1JAX_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("R1JAX_MODEL_DIR", checkpoint)
    monkeypatch.setenv("R1JAX_DATA_DIR", samples["gsm8k"])
    monkeypatch.setenv("R1JAX_NOTEBOOK_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    nb = nbformat.read(REAL_CHECKPOINT_NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("8 training and 8 test problems" in o.get("text", "") for o in outputs)
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert os.path.exists(tmp_path / "work" / "model" / "config.json")
