"""Every command has help with an example, and the README's reference is current."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
from typer.testing import CliRunner

from usersctl.cli import app

ROOT = Path(__file__).resolve().parent.parent


def load_reference_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "cli_reference", ROOT / "scripts/cli_reference.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["cli_reference"] = module
    spec.loader.exec_module(module)
    return module


reference = load_reference_module()
COMMANDS = [path for path in reference.command_paths() if path]


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) for p in COMMANDS])
def test_every_command_has_help_and_is_in_the_readme(path: list[str]) -> None:
    result = CliRunner().invoke(app, [*path, "-h"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    summary = next(line.strip() for line in lines[1:] if line.strip())
    assert len(summary) > 10, f"usersctl {' '.join(path)} has no help text"
    name = " ".join(path)
    assert re.search(r"Examples?:", result.stdout), f"usersctl {name} help lacks an example"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"### `usersctl {' '.join(path)}`" in readme


def test_readme_reference_is_generated_from_current_help() -> None:
    current = (ROOT / "README.md").read_text(encoding="utf-8")
    assert reference.render_readme(current) == current, (
        "README.md command reference is stale: run python scripts/cli_reference.py"
    )


def test_root_help_documents_every_exit_code() -> None:
    result = CliRunner().invoke(app, ["--help"])
    for code in range(9):
        assert re.search(rf"^\s+{code}  \w", result.stdout, re.MULTILINE), code
