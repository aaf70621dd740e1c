"""The README's "Testing your own app through real HTTPS" example, run exactly as printed, so
the documentation cannot drift from what the plugin does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from user_project import UserProject

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"
HEADING = "## Testing your own app through real HTTPS"


def readme_section() -> str:
    text = README.read_text(encoding="utf-8")
    assert HEADING in text, f"README.md lost its section {HEADING!r}"
    return text.split(HEADING, 1)[1].split("\n## ", 1)[0]


def test_readme_example_passes_as_written(project: UserProject) -> None:
    section = readme_section()
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 1, "the section should have one complete example"
    file_name = re.search(r"Save this as `(test_\w+\.py)`", section)
    assert file_name is not None, "the section should say where to save the example"
    project.write(file_name.group(1), blocks[0])
    tests = len(re.findall(r"^(?:async )?def test_", blocks[0], re.MULTILINE))
    assert tests >= 4
    project.run().assert_outcomes(passed=tests)
