"""Guards for the repository layout the design card asks for."""

from __future__ import annotations

import ast
import importlib.util
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_top_level_platform_package() -> None:
    # A top-level `platform` package would shadow the standard library module that Django,
    # Celery and torch import at start-up; the Django project is `config/` instead.
    assert not (ROOT / "platform").exists()
    assert not (ROOT / "platform.py").exists()
    spec = importlib.util.find_spec("platform")
    assert spec is not None and spec.origin is not None
    assert Path(spec.origin).parent == Path(sysconfig.get_paths()["stdlib"])


def test_card_layout_exists() -> None:
    for name in (
        "manage.py",
        "config",
        "cytoseg",
        "core",
        "annotations",
        "review",
        "interchange",
        "inference",
        "training",
        "frontend",
        "tests",
        "bench",
        "docker-compose.yml",
        "requirements.txt",
        "README.md",
        ".ci/run",
    ):
        assert (ROOT / name).exists(), name


def test_nothing_imports_torchvision_or_timm() -> None:
    offenders = []
    for path in ROOT.rglob("*.py"):
        if any(part in {".venv", "node_modules", "var"} for part in path.parts):
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] in {"torchvision", "timm"} for n in names):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "bin/test" in readme and "bin/run" in readme
    assert "bin/test" in (ROOT / ".ci" / "run").read_text()
