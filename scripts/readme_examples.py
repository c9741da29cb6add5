"""Replay the README's console examples with the real `usersctl`, or rewrite them.

python scripts/readme_examples.py           # check: exit 1 with a diff for each stale block
python scripts/readme_examples.py --update  # rewrite the stale blocks from real output
python scripts/readme_examples.py --section Tour  # only sections whose title has "Tour"

What runs (tests/test_readme.py does the same check, one test per section):

- Every ```console block of README.md, unless an HTML comment on the lines just above it
  says `<!-- readme-test: skip (why) -->` (a server, a TLS proxy, ...).
- Each `## ` section starts in a fresh HOME (`/home/ada` in the README), which is also the
  working directory; its blocks run in document order and share that HOME, its default
  database and its files, as one admin's session would.
- Each `$ ` line (continued by a trailing backslash) runs through `bash -c` with stdin
  closed and a fixed environment (ENVIRONMENT below: PASSWORD, NEW_PASSWORD, USER=ada, UTC,
  no USERSCTL_* variables), so pipelines, redirections, `; echo $?` and `$PASSWORD` work.
  stdout and stderr are shown together, in the order written, as a script sees them (off a
  terminal).
- `$ cat FILE` of a file that does not exist yet writes the block's text to FILE first, so
  the README shows the input files its examples use.
- `$ export NAME=VALUE` (e.g. `export TOKEN=$(usersctl token create deploy)`) also sets
  NAME for the section's later steps, as in one shell.
- `$ COMMAND &` (a server) runs in the background until the section ends (then SIGTERM);
  its output up to the line that says it is ready (`Uvicorn running on`) is shown. Port
  8765 in commands is a free port in fact, shown as 8765 (parallel runs never collide).
- `<!-- readme-test: setup NAME ARGS -->` above a block runs a named setup step (SETUPS
  below) that the reader need not see, e.g. a database made by the tutorial app.

Compared after masking what differs from run to run (MASKS: timestamps, generated
passwords, hashes, durations); the HOME path is shown as /home/ada. `--update` rewrites
only blocks whose masked text differs, keeping the commands and writing the real output.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SHOWN_HOME = "/home/ada"
ENVIRONMENT = {
    "USER": "ada",
    "LOGNAME": "ada",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "TZ": "UTC",
    "PYTHONUNBUFFERED": "1",  # stdout and stderr interleave as they would on a terminal
    "PASSWORD": "cobol-forever-1959",
    "NEW_PASSWORD": "analytical-engine-1843",
}
DIRECTIVE = re.compile(r"^<!--\s*readme-test:\s*(?P<body>.*?)\s*-->$")
TIMEOUT = 120

# (pattern, replacement): applied to the README's text and the real output alike.
MASKS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)?"), "<time>"),
    (re.compile(r"\$(?:argon2id?|argon2d|2[aby])\$[^\s\"]+"), "<hash>"),
    (re.compile(r'("password":\s*)"[^"]*"'), r'\1"<password>"'),
    (re.compile(r"\b\d+(?:\.\d+)?\s?(?:ms|s)\b(?!\w)"), "<duration>"),
    (re.compile(r"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT"), "<http-date>"),
    (re.compile(r"server process \[\d+\]"), "server process [<pid>]"),
]
SHOWN_PORT = "8765"
READY = "Uvicorn running on"
# A line holding only a generated password follows this one.
PASSWORD_HEADER = "Generated password (shown only this once):"


@dataclass
class Step:
    command: list[str]  # the README's lines: "$ cmd \", "  more"
    output: list[str]

    @property
    def shell(self) -> str:
        text = "\n".join(self.command)
        return text[2:] if text.startswith("$ ") else text


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    section: str
    body: list[str]  # the lines between the fences
    skip: str | None = None
    setups: list[list[str]] = field(default_factory=list)

    @property
    def steps(self) -> list[Step]:
        steps: list[Step] = []
        continued = False
        for offset, text in enumerate(self.body):
            if continued:
                steps[-1].command.append(text)
            elif text.startswith("$ "):
                steps.append(Step([text], []))
            elif steps:
                steps[-1].output.append(text)
            else:
                raise ValueError(
                    f"README.md line {self.line + 1 + offset}: a console block must start "
                    f"with a `$ ` command line"
                )
            continued = (continued or text.startswith("$ ")) and text.endswith("\\")
        return steps


def blocks(text: str) -> list[Block]:
    """Every ```console block, with its section and the readme-test directives above it."""
    found: list[Block] = []
    lines = text.splitlines()
    section = ""
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("## "):
            section = line[3:].strip()
        if line.strip() == "```console":
            indent = line[: len(line) - len(line.lstrip())]
            end = index + 1
            while lines[end].strip() != "```":
                end += 1
            body = [entry.removeprefix(indent) for entry in lines[index + 1 : end]]
            block = Block(line=index + 1, section=section, body=body)
            above = index - 1
            while above >= 0 and (match := DIRECTIVE.match(lines[above].strip())):
                directive(block, match["body"], above + 1)
                above -= 1
            found.append(block)
            index = end
        index += 1
    return found


def directive(block: Block, body: str, line: int) -> None:
    if body.startswith("skip"):
        reason = re.fullmatch(r"skip\s*\((.+)\)", body)
        if not reason:
            raise ValueError(f"README.md line {line}: write `readme-test: skip (the reason)`")
        block.skip = reason[1]
    elif body.startswith("setup "):
        words = body.split()[1:]
        if words[0] not in SETUPS:
            raise ValueError(f"README.md line {line}: unknown setup {words[0]!r}")
        block.setups.insert(0, words)
    else:
        raise ValueError(f"README.md line {line}: unknown readme-test directive {body!r}")


def tutorial_db(home: Path, path: str) -> None:
    """A users.db as the tutorial app leaves it: revision 0001's table, no alembic_version."""
    connection = sqlite3.connect(home / path)
    connection.executescript(
        """
        CREATE TABLE users (
            id INTEGER NOT NULL, name VARCHAR NOT NULL, email VARCHAR NOT NULL,
            password VARCHAR NOT NULL, PRIMARY KEY (id)
        );
        CREATE INDEX ix_users_id ON users (id);
        CREATE UNIQUE INDEX ix_users_email ON users (email);
        INSERT INTO users (name, email, password) VALUES
            ('Ada Lovelace', 'ada@example.com', 'correct-horse-1'),
            ('Grace Hopper', 'grace@example.com', 'cobol-forever-1959');
        """
    )
    connection.commit()
    connection.close()
    (home / path).chmod(0o644)


SETUPS: dict[str, Callable[..., None]] = {"tutorial-db": tutorial_db}


def mask(lines: list[str]) -> list[str]:
    masked: list[str] = []
    after_header = False
    for line in lines:
        line = line.rstrip()
        if after_header and line:
            line = "<password>"
        else:
            for pattern, replacement in MASKS:
                line = pattern.sub(replacement, line)
        after_header = line == PASSWORD_HEADER
        masked.append(line)
    return masked


class Session:
    """A fresh HOME, in which one section's commands run."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.home.mkdir(parents=True)
        bindir = Path(sys.executable).parent
        if not (bindir / "usersctl").exists():
            raise RuntimeError(f"no usersctl next to {sys.executable}: pip install -e . first")
        self.env = {
            **ENVIRONMENT,
            "HOME": str(home),
            "PATH": f"{bindir}:/usr/local/bin:/usr/bin:/bin",
            "TMPDIR": str(home.parent),
        }
        self.port = str(free_port())
        self.background: list[subprocess.Popen[bytes]] = []

    def shown(self, output: bytes) -> list[str]:
        text = output.decode("utf-8", errors="replace")
        text = text.replace(str(self.home), SHOWN_HOME).replace(self.port, SHOWN_PORT)
        return [line.rstrip() for line in text.splitlines()]

    def run(self, step: Step) -> list[str]:
        target = re.fullmatch(r"cat (\S+)", step.shell)
        if target and not (self.home / target[1]).exists():
            (self.home / target[1]).write_text("\n".join(step.output) + "\n", encoding="utf-8")
        shell = step.shell.replace(SHOWN_PORT, self.port)
        if shell.endswith(" &"):
            return self.start(shell.removesuffix("&").strip())
        exported = re.fullmatch(r"export (\w+)=.*", shell, re.DOTALL)
        reading, writing = os.pipe()  # where an export's value goes (not its stdout)
        if exported:
            shell += f'; printf %s "${exported[1]}" >&{writing}'
        try:
            process = subprocess.Popen(
                ["bash", "-c", shell],
                cwd=self.home,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, every process of a pipeline
                pass_fds=(writing,),
            )
        finally:
            os.close(writing)
        with os.fdopen(reading, "rb") as values:
            try:
                output, _ = process.communicate(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
                return [f"<still running after {TIMEOUT} seconds: stopped>"]
            if exported:
                self.env[exported[1]] = values.read().decode()
        return self.shown(output)

    def start(self, shell: str) -> list[str]:
        """A server in the background: its output until it is ready (or has exited)."""
        process = subprocess.Popen(
            ["bash", "-c", f"exec {shell}"],
            cwd=self.home,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.background.append(process)
        assert process.stdout is not None
        lines: list[bytes] = []
        for line in process.stdout:  # blocks on the server's own output
            lines.append(line)
            if READY.encode() in line:
                break
        drain = threading.Thread(target=process.stdout.read, daemon=True)
        drain.start()
        return self.shown(b"".join(lines))

    def close(self) -> None:
        for process in self.background:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def replay(self, block: Block) -> list[str]:
        """The block as real output would write it: its commands, each with what it printed."""
        for name, *args in block.setups:
            SETUPS[name](self.home, *args)
        lines: list[str] = []
        for step in block.steps:
            lines += step.command
            lines += self.run(step)
        return lines


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Outcome:
    block: Block
    actual: list[str]

    @property
    def stale(self) -> bool:
        return mask(self.block.body) != mask(self.actual)

    def diff(self) -> str:
        """A unified diff of the masked texts: README (-) against real output (+)."""
        return "\n".join(
            difflib.unified_diff(
                mask(self.block.body),
                mask(self.actual),
                f"README.md line {self.block.line} ({self.block.section})",
                "real output",
                lineterm="",
            )
        )


def sections(text: str) -> dict[str, list[Block]]:
    """The blocks to run, by section, in document order."""
    found: dict[str, list[Block]] = {}
    for block in blocks(text):
        if block.skip is None:
            found.setdefault(block.section, []).append(block)
    return found


def replay_section(section: list[Block], workdir: Path) -> Iterator[Outcome]:
    session = Session(workdir / "home" / "ada")
    try:
        for block in section:
            yield Outcome(block, session.replay(block))
    finally:
        session.close()


def report(outcomes: list[Outcome]) -> str:
    stale = [outcome for outcome in outcomes if outcome.stale]
    if not stale:
        return ""
    parts = [
        f"{len(stale)} console block(s) of README.md differ from real output "
        "(timestamps, passwords, hashes masked); if the new output is right, run "
        "`python scripts/readme_examples.py --update`:"
    ]
    parts += [outcome.diff() for outcome in stale]
    return "\n\n".join(parts)


def rewrite(text: str, outcomes: list[Outcome]) -> str:
    lines = text.splitlines()
    # From the bottom up, so earlier line numbers stay valid.
    for outcome in sorted(outcomes, key=lambda outcome: -outcome.block.line):
        if not outcome.stale:
            continue
        first = outcome.block.line  # index of the first body line
        fence = lines[first - 1]
        indent = fence[: len(fence) - len(fence.lstrip())]
        body = [f"{indent}{line}" if line else "" for line in outcome.actual]
        lines[first : first + len(outcome.block.body)] = body
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update", action="store_true", help="rewrite stale blocks")
    parser.add_argument("--section", default="", help="only sections whose title has this")
    options = parser.parse_args()
    text = README.read_text(encoding="utf-8")
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="readme-examples-") as scratch:
        for number, (title, section) in enumerate(sections(text).items()):
            if options.section in title:
                outcomes += replay_section(section, Path(scratch) / str(number))
    if options.update:
        new = rewrite(text, outcomes)
        if new != text:
            README.write_text(new, encoding="utf-8")
        stale = [str(outcome.block.line) for outcome in outcomes if outcome.stale]
        where = f" (at lines {', '.join(stale)}; review with git diff README.md)" if stale else ""
        print(f"README.md: {len(stale)} console block(s) rewritten{where}")
        return 0
    problems = report(outcomes)
    if problems:
        print(problems)
        return 1
    print(f"README.md: {len(outcomes)} console block(s) match real output")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
