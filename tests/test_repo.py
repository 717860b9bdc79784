"""The repository's own contracts: CI runs exactly README's test command after README's install steps."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_readme_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    test_cmd = next(c for c in re.findall(r"```bash\n(.*?)\n```", readme, re.S) if "pytest" in c)
    assert ci[-1] == test_cmd
    assert "pip install -q torch==2.13.0" in ci and "pip install -q -r requirements-dev.txt" in ci
    assert "pip install torch==2.13.0 && pip install -r requirements-dev.txt" in readme


SHARED = ROOT.parent / "shared"


@pytest.mark.parametrize("name", ["SPEC-mup.md", "paper_tables.md"])
@pytest.mark.skipif(not SHARED.is_dir(), reason=f"no shared specification directory at {SHARED}")
def test_docs_hold_the_current_specification(name):
    """docs/ carries the parameterization spec and the published tables for readers of the repository;
    where the project's shared copy is present, the two must not have drifted apart."""
    assert (ROOT / "docs" / name).read_text() == (SHARED / name).read_text()
