"""Build the API reference from the docstrings with pdoc: `python docs/api.py [OUT]`
writes `docs/api/index.html` (or OUT/index.html) and one page per module.

Every module of the package is documented, in the order of the data flow
(docs/ARCHITECTURE.md), whatever a package's `__all__` re-exports.
"""

from __future__ import annotations

import pkgutil
import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent


def module_names() -> list[str]:
    """`mechjax` and every module below it, packages before their modules."""
    import mechjax

    names = ["mechjax"]
    for info in pkgutil.walk_packages(mechjax.__path__, prefix="mechjax."):
        if not info.name.endswith("__main__"):
            names.append(info.name)
    return names


def build(out: Path) -> Path:
    """Write the reference into `out`; returns the index page."""
    import pdoc
    import pdoc.render

    pdoc.render.configure(docformat="markdown", search=True, show_source=True)
    with warnings.catch_warnings():
        # a package without `__all__` already brings its modules; naming them again is fine
        warnings.filterwarnings("ignore", message="The module specification .* adds a module")
        pdoc.pdoc(*module_names(), output_directory=Path(out))
    return Path(out) / "index.html"


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "api"
    print(f"API reference: {build(out)}")
