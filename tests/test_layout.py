"""The import rule (docs/ARCHITECTURE.md): data flows down the list of packages below,
so a package imports only packages earlier in it (or itself), and no module reaches
into another module's private names.

The rule is read off the source: every `import` and `from ... import` of every module,
including those inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# the flow, first to last: `version`, `compilation_cache` and `distributed` are leaves
# every package may read
FLOW = (
    "version",
    "compilation_cache",
    "distributed",
    "model",
    "io",
    "data",
    "circuits",
    "activations",
    "causal",
    "features",
    "representations",
    "dynamics",
    "train",
    "views",
    "cli",
)
FACADES = ("mechjax", "mechjax.__main__")  # the top-level names users call; may import all


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_of(path: Path) -> str:
    name = _module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def imports_of(path: Path, source: str | None = None):
    """`(line, imported module, names)` for every import in the file, relative imports
    resolved to absolute module names. Names are those of `from X import a, b`."""
    tree = ast.parse(source if source is not None else path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(path).split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module, tuple(a.name for a in node.names)))
    return found


def _stage(module: str) -> int | None:
    """Position in FLOW of a `mechjax.<package>...` module; None for the façade."""
    parts = module.split(".")
    if parts[0] != "mechjax" or len(parts) == 1:
        return None
    return FLOW.index(parts[1]) if parts[1] in FLOW else None


def upward_imports(path: Path, source: str | None = None) -> list[str]:
    """The imports of a library module that break the flow."""
    me = _module_name(path)
    if me in FACADES:
        return []
    mine = _stage(me)
    problems = []
    for line, module, names in imports_of(path, source):
        if module == "mechjax" or module.startswith("mechjax."):
            targets = [module]
            if module == "mechjax" or (module.count(".") == 1 and module.split(".")[1] in FLOW):
                # `from mechjax import heads` / `from mechjax.causal import sweep`
                targets = [f"{module}.{n}" for n in names] if module == "mechjax" else targets
            for target in targets:
                theirs = _stage(target)
                if theirs is None:
                    problems.append(f"{me}:{line} imports the package façade ({target})")
                elif mine is None or theirs > mine:
                    problems.append(f"{me}:{line} imports {target}, later in the flow")
    return problems


def private_imports(path: Path, source: str | None = None) -> list[str]:
    """Private names (one leading underscore) taken from another module, by import or
    by attribute of an imported module."""
    source = source if source is not None else path.read_text()
    tree = ast.parse(source)
    problems, imported = [], set()
    for line, module, names in imports_of(path, source):
        for name in names:
            if name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
                problems.append(f"{path.name}:{line} imports {module}.{name}")
        if any(part.startswith("_") and not part.startswith("__") for part in module.split(".")):
            problems.append(f"{path.name}:{line} imports the private module {module}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported |= {a.asname or a.name for a in node.names}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in imported
            and node.attr.startswith("_")
            and not (node.attr.startswith("__") and node.attr.endswith("__"))
        ):
            problems.append(f"{path.name}:{node.lineno} reaches {node.value.id}.{node.attr}")
    return problems


LIBRARY = sorted((ROOT / "mechjax").rglob("*.py"))
EVERYWHERE = LIBRARY + sorted(
    p for folder in ("experiments", "tests", "toy_models") for p in (ROOT / folder).rglob("*.py")
)


def test_every_package_is_in_the_flow():
    packages = {p.name for p in (ROOT / "mechjax").iterdir() if (p / "__init__.py").exists()}
    assert packages <= set(FLOW), f"add {packages - set(FLOW)} to FLOW and ARCHITECTURE.md"


def test_imports_follow_the_flow():
    problems = [p for path in LIBRARY for p in upward_imports(path)]
    assert not problems, "\n".join(problems)


def test_no_private_name_crosses_a_module():
    problems = [p for path in EVERYWHERE for p in private_imports(path)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "module, planted",
    [
        ("mechjax/model/transformer.py", "from ..causal import sweep\n"),  # model -> causal
        ("mechjax/activations/heads.py", "from ..train import loop\n"),  # analysis -> training
        ("mechjax/train/loop.py", "    from ..views.run_report import build_report\n"),
        ("mechjax/circuits/weights.py", "import mechjax.views.figures\n"),  # absolute form
        ("mechjax/io/runs.py", "from .. import heads\n"),  # through the façade
    ],
)
def test_a_planted_upward_import_is_caught(module, planted):
    path = ROOT / module
    source = path.read_text()
    assert not upward_imports(path, source)
    if planted.startswith("    "):  # a lazy import inside a function body
        source += "\n\ndef _planted():\n" + planted
    else:
        source = planted + source
    assert upward_imports(path, source)


def test_a_planted_private_import_is_caught():
    path = ROOT / "mechjax/causal/tracing.py"
    source = path.read_text()
    assert not private_imports(path, source)
    assert private_imports(path, "from ..model.transformer import _block\n" + source)
    assert private_imports(path, source + "\nx = sweep._check\n")


def test_the_run_format_records_scores_the_detectors_compute():
    from mechjax.activations.heads import SCORE_NAMES
    from mechjax.io.runs import HEAD_SCORES

    assert set(HEAD_SCORES) <= set(SCORE_NAMES)
