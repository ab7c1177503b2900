"""The README's Python example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no python example"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert namespace["grid"].shape == (2, 32, 4, 64)
    assert namespace["dla"].shape[0] == len(namespace["labels"])


def test_readme_starts_with_the_two_commands():
    commands = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    assert commands[0].strip() == "pip install -e . && mechjax train"
    assert (
        commands[1].strip() == "pip install -c constraints.txt torch==2.13.0 && "
        'pip install -c constraints.txt -e ".[test]" && python -m pytest -n auto'
    )
    ci = (README.parent / ".ci" / "run").read_text()
    assert commands[1].strip() in ci
