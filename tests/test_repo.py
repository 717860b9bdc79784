"""The repository's own contracts: CI runs the linter and exactly README's test command after README's install
steps; every link, figure and command of README.md and docs/*.md points at something that exists."""

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_ci_runs_readme_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    test_cmd = next(c for c in re.findall(r"```bash\n(.*?)\n```", readme, re.S) if "pytest" in c)
    assert ci[-1] == test_cmd
    assert "pip install -q torch==2.13.0" in ci and "pip install -q -r requirements-dev.txt" in ci
    assert "pip install torch==2.13.0 && pip install -r requirements-dev.txt" in readme
    assert "ruff check ." in ci[ci.index("pip install -q -r requirements-dev.txt"):]  # lint, in the fresh venv


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


def anchors(page: Path) -> set[str]:
    """The #anchors of a page's headings, as GitHub makes them."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", page.read_text(), flags=re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def broken_links(page: Path) -> list[str]:
    """The page's links and images whose file or #anchor does not exist."""
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(target)
    return broken


def commands(text: str) -> list[list[str]]:
    """The command lines of a page's bash blocks, continuation lines joined, comments and variables dropped."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = [w for w in shlex.split(line, comments=True) if not re.fullmatch(r"[A-Z_]+=\S*", w)]
            if words:
                lines.append(words)
    return lines


def module_exists(name: str) -> bool:
    """`python -m name` finds something: a module or a package with __main__ here, or an installed module."""
    path = ROOT.joinpath(*name.split("."))
    if (ROOT / name.split(".")[0]).exists() or (ROOT / f"{name.split('.')[0]}.py").exists():
        return path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()
    return importlib.util.find_spec(name.split(".")[0]) is not None


def missing_targets(words: list[str]) -> list[str]:
    """What a command names that does not exist: its `python -m` module, its scripts and its configs."""
    missing = []
    if words[0].startswith("python") and "-m" in words:
        module = words[words.index("-m") + 1]
        missing += [] if module_exists(module) else [f"-m {module}"]
    for word in words[1:]:
        local = word.endswith((".py", ".sh")) or word.startswith("configs/")
        if local and not (ROOT / word).exists():
            missing.append(word)
    return missing


def test_the_checks_catch_what_is_missing(tmp_path):
    page = ("see [a](nowhere.md), [b](#no-such-heading), ![c](figure.png)\n\n# A heading\n\n"
            "```bash\npython scripts/nowhere.py configs/none.yaml --out DIR   # a comment\n"
            "OMP_NUM_THREADS=1 python -m mup.nowhere \\\n    configs/default.yaml\npython -m acceptance --smoke\n```\n")
    (tmp_path / "page.md").write_text(page)
    (tmp_path / "other.md").write_text("[b](page.md#no-such-heading) [c](page.md#a-heading) [d](page.md)")
    assert broken_links(tmp_path / "page.md") == ["nowhere.md", "#no-such-heading", "figure.png"]
    assert broken_links(tmp_path / "other.md") == ["page.md#no-such-heading"]
    found = [missing_targets(words) for words in commands(page)]
    assert found == [["scripts/nowhere.py", "configs/none.yaml"], ["-m mup.nowhere"], []]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_and_figures_exist(page):
    assert broken_links(page) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_documented_commands_name_scripts_modules_and_configs_that_exist(page):
    lines = commands(page.read_text())
    assert [(" ".join(words), missing) for words in lines if (missing := missing_targets(words))] == []


def test_readme_is_read_in_five_minutes_and_links_every_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert {p.name for p in PAGES[1:]} <= set(re.findall(r"\]\(docs/([^)#]+)\)", readme))
    assert sum(len(commands(p.read_text())) for p in PAGES) > 50  # the pages above were read
