"""Prompts on a real (pseudo-)terminal: hidden password entry and delete confirmation."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SCRIPT = Path(sys.executable).parent / "usersctl"


class Terminal:
    """usersctl running with a pseudo-terminal as its controlling terminal."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: becomes usersctl
            os.execve(str(SCRIPT), [str(SCRIPT), *args], env)
        self.pid, self.fd, self.screen = pid, fd, b""

    def expect(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text.encode() not in self.screen:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self.fd], [], [], max(remaining, 0))
            if not ready:
                raise AssertionError(f"timed out waiting for {text!r}; screen: {self.screen!r}")
            try:
                self.screen += os.read(self.fd, 4096)
            except OSError:  # the child exited: nothing more will come
                raise AssertionError(f"{text!r} never appeared; screen: {self.screen!r}") from None

    def type(self, line: str) -> None:
        os.write(self.fd, line.encode() + b"\r")

    def finish(self) -> int:
        while True:
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            self.screen += chunk
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("USERSCTL_")}
    (tmp_path / "users.db").touch(mode=0o600)  # an empty database (initialised on first use)
    return {**keep, "HOME": str(tmp_path), "TERM": "dumb", "COLUMNS": "120",
            "USERSCTL_DATABASE_URL": f"sqlite:///{tmp_path / 'users.db'}"}  # fmt: skip


# click prints "Password:" and then getpass(" ") turns echo off (flushing anything typed
# ahead) and prints the space: type only once the space is there, as a person would.
PASSWORD_PROMPT = "Password: "
REPEAT_PROMPT = "Repeat for confirmation: "


def create_with_prompt(env: dict[str, str], password: str, confirm: str) -> Terminal:
    term = Terminal(["create", "--name", "Ada", "--email", "ada@example.com", "-o", "json"], env)
    term.expect(PASSWORD_PROMPT)
    term.type(password)
    term.expect(REPEAT_PROMPT)
    term.type(confirm)
    return term


def test_password_prompt_is_hidden_and_confirmed(env: dict[str, str]) -> None:
    secret = "prompted-secret-42"
    term = create_with_prompt(env, secret, secret)
    assert term.finish() == 0, term.screen
    assert secret.encode() not in term.screen  # never echoed
    assert b'"email": "ada@example.com"' in term.screen

    check = Terminal(["verify-password", "ada@example.com"], env)
    check.expect(PASSWORD_PROMPT)
    check.type(secret)
    assert check.finish() == 0, check.screen
    assert secret.encode() not in check.screen


def test_mismatched_confirmation_asks_again(env: dict[str, str]) -> None:
    term = create_with_prompt(env, "first-password-1", "other-password-2")
    term.expect("do not match")
    term.expect("match.\r\n" + PASSWORD_PROMPT)
    term.type("final-password-3")
    term.expect("match.\r\n" + PASSWORD_PROMPT + "\r\n" + REPEAT_PROMPT)
    term.type("final-password-3")
    assert term.finish() == 0, term.screen


def test_delete_asks_on_a_terminal(env: dict[str, str]) -> None:
    create_with_prompt(env, "prompted-secret-42", "prompted-secret-42").finish()
    declined = Terminal(["delete", "ada@example.com"], env)
    declined.expect("Delete 1 user(s): ada@example.com (id 1)? [y/N]:")
    declined.type("n")
    assert declined.finish() == 1
    assert b"aborted, nothing changed" in declined.screen

    accepted = Terminal(["delete", "ada@example.com", "-o", "plain"], env)
    accepted.expect("[y/N]:")
    accepted.type("y")
    assert accepted.finish() == 0, accepted.screen
    assert b"ada@example.com" in accepted.screen

    gone = Terminal(["get", "ada@example.com"], env)
    assert gone.finish() == 3


def test_long_errors_wrap_between_words_on_a_terminal_and_stay_one_line_in_a_pipe(
    env: dict[str, str],
) -> None:
    args = ["list", "--sort", "no-such-column-for-sorting"]
    piped = subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True)
    assert piped.returncode == 2
    message = piped.stderr.strip()
    assert "\n" not in message and len(message) > 80  # scripts get one line to read

    term = Terminal(args, {**env, "COLUMNS": "80"})
    assert term.finish() == 2
    lines = term.screen.decode().replace("\r\n", "\n").strip().split("\n")
    assert len(lines) > 1
    assert all(len(line) <= 80 for line in lines)
    assert all(line.startswith("  ") for line in lines[1:])  # continuation lines indented
    assert " ".join(line.strip() for line in lines) == message  # no word cut in two
