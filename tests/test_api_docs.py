"""The API reference builds from the docstrings (pdoc), one page per module, so it
cannot rot unnoticed: a module that fails to import or a docstring pdoc cannot read
fails here."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _api_script():
    spec = importlib.util.spec_from_file_location("api_docs", ROOT / "docs" / "api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_reference_builds_a_page_for_every_module(tmp_path):
    api = _api_script()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pdoc warns about what it cannot document
        index = api.build(tmp_path)
    assert index.is_file()
    names = api.module_names()
    assert "mechjax.model.transformer" in names and "mechjax.io.run_checkpoints" in names
    missing = [n for n in names if not (tmp_path / (n.replace(".", "/") + ".html")).is_file()]
    assert not missing, missing
    page = (tmp_path / "mechjax" / "model" / "transformer.html").read_text()
    assert "run_from" in page and "The forward pass every analysis builds on" in page
