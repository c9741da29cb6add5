"""The README's console examples are real output: each section replayed with `usersctl`.

The model and the masks are in scripts/readme_examples.py; after a change of messages,
`python scripts/readme_examples.py --update` rewrites the stale blocks.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_examples_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "readme_examples", ROOT / "scripts/readme_examples.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["readme_examples"] = module
    spec.loader.exec_module(module)
    return module


examples = load_examples_module()
README = (ROOT / "README.md").read_text(encoding="utf-8")
SECTIONS = examples.sections(README)


@pytest.mark.slow
@pytest.mark.parametrize("title", list(SECTIONS))
def test_console_examples_are_real_output(title: str, tmp_path: Path) -> None:
    outcomes = list(examples.replay_section(SECTIONS[title], tmp_path))
    problems = examples.report(outcomes)
    assert not problems, problems


def test_every_console_block_runs_or_says_why_not() -> None:
    blocks = examples.blocks(README)
    skipped = {block.line: block.skip for block in blocks if block.skip is not None}
    run = [block for block in blocks if block.skip is None]
    assert all(reason.strip() for reason in skipped.values()), skipped
    # The tour, bulk import, audit trail, dry runs and migrations all run.
    assert {block.section for block in run} >= {
        "A tour of the commands",
        "Bulk import and export",
        "Audit trail and dry runs",
        "Migrations",
    }
    assert all(block.steps for block in run)


STALE = """\
# A project

## Section

<!-- readme-test: skip (needs a server) -->
```console
$ false
anything at all
```

```console
$ printf '%s\\n' "$PASSWORD" | wc -c; echo oops >&2
19
wrong
$ cat in.txt
first line
$ wc -l < in.txt
1
```
"""


def test_a_stale_block_fails_with_a_diff_naming_its_line(tmp_path: Path) -> None:
    sections = examples.sections(STALE)
    assert [block.line for block in sections["Section"]] == [11]  # the skipped one is out
    outcomes = list(examples.replay_section(sections["Section"], tmp_path))
    problems = examples.report(outcomes)
    assert "--- README.md line 11 (Section)" in problems
    assert "\n-wrong\n+oops\n" in problems
    assert "scripts/readme_examples.py --update" in problems
    # The file a `cat` shows was written from the block, and stdin carried $PASSWORD.
    assert (tmp_path / "home" / "ada" / "in.txt").read_text() == "first line\n"

    fixed = examples.rewrite(STALE, outcomes)
    assert fixed == STALE.replace("19\nwrong\n", "19\noops\n")
    again = list(examples.replay_section(examples.sections(fixed)["Section"], tmp_path / "2"))
    assert examples.report(again) == ""


def test_masks_cover_generated_values_only() -> None:
    readme = [
        "created_at   2026-11-24T20:32:53Z",
        "Generated password (shown only this once):",
        "tRemMCp3tFx35bYK1TiH_1Xr",
        '{"email": "a@example.com", "password": "tRemMCp3tFx35bYK1TiH_1Xr"}',
        "hash $argon2id$v=19$m=65536,t=3,p=4$abc$def, took 0.52 s",
        "in /home/ada",
    ]
    real = [
        "created_at   2027-01-02T03:04:05Z",
        "Generated password (shown only this once):",
        "Zz9Zz9Zz9Zz9Zz9Zz9Zz9Zz9",
        '{"email": "a@example.com", "password": "Zz9Zz9Zz9Zz9Zz9Zz9Zz9Zz9"}',
        "hash $argon2id$v=19$m=65536,t=3,p=4$xyz$uvw, took 1.7 s",
        "in /home/ada",
    ]
    assert examples.mask(readme) == examples.mask(real)
    for index, changed in [(0, "created_at   2026-11-24"), (3, '{"email": "b@example.com"}')]:
        assert examples.mask(readme) != examples.mask([*real[:index], changed, *real[index + 1 :]])


@pytest.mark.parametrize(
    ("directive", "message"),
    [
        ("<!-- readme-test: skip -->", "write `readme-test: skip (the reason)`"),
        ("<!-- readme-test: setup nonsense x -->", "unknown setup 'nonsense'"),
        ("<!-- readme-test: run faster -->", "unknown readme-test directive"),
    ],
)
def test_a_bad_directive_names_its_line(directive: str, message: str) -> None:
    text = f"## S\n\n{directive}\n```console\n$ true\n```\n"
    with pytest.raises(ValueError, match="README.md line 3") as raised:
        examples.blocks(text)
    assert message in str(raised.value)


def test_a_command_that_hangs_is_stopped_and_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(examples, "TIMEOUT", 0.5)
    text = "## S\n\n```console\n$ cat\nhello\n$ sleep 600 | cat\n```\n"
    started = time.monotonic()
    outcomes = list(examples.replay_section(examples.sections(text)["S"], tmp_path))
    assert time.monotonic() - started < 300  # the whole pipeline was stopped
    # `cat` alone reads the closed stdin: it prints nothing, whatever the block says.
    assert outcomes[0].actual == [
        "$ cat",
        "$ sleep 600 | cat",
        "<still running after 0.5 seconds: stopped>",
    ]
