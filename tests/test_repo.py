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


def tracked_text_files():
    import subprocess

    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / n for n in names if n.endswith((".py", ".md", ".yaml", ".sh", ".txt", ".toml")) or "/" not in n]


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout to list its files")
def test_the_repository_stands_alone():
    """Nothing points outside the repository: a user's clone has only what git holds."""
    outside = ["../" + "shar" + "ed", "DESIGN" + ".md"]  # spelt in pieces, so this file does not match itself
    hits = [f"{p.relative_to(ROOT)}: {word}" for p in tracked_text_files() if p.is_file()
            for word in outside if word in p.read_text(errors="replace")]
    assert hits == []


def test_readme_links_and_figures_exist():
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(((?:docs|configs|data|bench|scripts)/[^)#]+)\)", readme)
    assert targets and [t for t in targets if not (ROOT / t).exists()] == []
