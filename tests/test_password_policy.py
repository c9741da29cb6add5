"""The password policy (NIST SP 800-63B-4 3.1.1.2, OWASP ASVS 5.0 V6): length in code
points after NFKC, default minimum 15 (configurable, never below 8), common and
context-guessable passwords refused with a one-line reason, on create, passwd, the prompt
and plaintext import rows; --random-password passes by construction."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import SEED_PASSWORD, Cli, assert_error
from usersctl import password_policy
from usersctl.errors import InvalidData

STRONG = "violet quokka harbour 7731"


def config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    monkeypatch.setenv("USERSCTL_CONFIG", str(path))


def create(cli: Cli, password: str, email: str = "ada@example.com") -> object:
    return cli(
        "create", "--name", "Ada Lovelace", "--email", email, "--password-stdin",
        input=password + "\n",
    )  # fmt: skip


# The examples, and more of the same kinds, with the minimum lowered to 8 so that
# it is the guessability check that refuses them.
WEAK = [
    ("password", "common password"),
    ("12345678", "common password"),
    ("aaaaaaaa", "repeats"),
    ("passwordpassword", "repeats"),
    ("qwertyuiop123", "common password"),
    ("Ada Lovelace 1815!!", "your name, email"),
    ("adalovelace12345678", "your name, email"),
    ("usersctl-usersctl!", "your name, email or the service name"),
]


@pytest.mark.parametrize(("password", "reason"), WEAK)
def test_common_and_context_passwords_are_refused(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, password: str, reason: str
) -> None:
    config(monkeypatch, tmp_path, "password_min_length = 8\n")
    result = create(cli, password)
    assert_error(result, 5, "password too easy to guess", reason, "try a passphrase")
    assert password not in result.stderr.replace("password", "")  # never echoed
    assert cli.ok("list", "--count").stdout == "0\n"


def test_default_minimum_is_15_code_points_after_nfkc(cli: Cli) -> None:
    assert_error(create(cli, "Zq7#vK2!mW9$pL4"[:14]), 5, "too short: 14 characters", "15")
    # 15 code points as typed, 14 after NFKC (e + combining acute = é): still too short.
    decomposed = "Zq7#vK2!mW9$pe\u0301"
    assert len(decomposed) == 15
    assert_error(create(cli, decomposed), 5, "too short: 14 characters")
    # A ligature expands: 13 typed, 15 after NFKC.
    assert password_policy.length("Zq7#vK2!mW9\ufb03p") == 15
    cli.ok("create", "--name", "Ada", "--email", "ada@example.com", "--password-stdin",
           input="Zq7#vK2!mW9\ufb03p\n")  # fmt: skip


def test_minimum_is_configurable_but_never_below_8(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config(monkeypatch, tmp_path, "password_min_length = 10\n")
    cli.ok("create", "--name", "Ada", "--email", "ada@example.com", "--password-stdin",
           input="Zq7#vK2!mW\n")  # fmt: skip
    config(monkeypatch, tmp_path, "password_min_length = 7\n")
    assert_error(create(cli, STRONG, "bob@example.com"), 2, "password_min_length", "8")


def test_long_passwords_are_kept_whole(cli: Cli) -> None:
    import hashlib

    password = "".join(hashlib.sha256(str(i).encode()).hexdigest() for i in range(16))
    assert len(password) == 1024
    cli.ok("create", "--name", "Ada", "--email", "ada@example.com", "--password-stdin",
           input=password + "\n")  # fmt: skip
    check = "verify-password", "ada@example.com", "--password-stdin"
    assert cli(*check, input=password + "\n").exit_code == 0
    assert cli(*check, input=password[:-1] + "\n").exit_code == 6


def test_good_passwords_and_random_ones_pass(cli: Cli) -> None:
    for n, password in enumerate([SEED_PASSWORD, STRONG, "Zq7#vK2!mW9$pL4x"]):
        cli.ok("create", "--name", "Ada", "--email", f"u{n}@example.com", "--password-stdin",
               input=password + "\n")  # fmt: skip
    from usersctl.passwords import generate_password

    for _ in range(50):
        password_policy.check(generate_password(), user_inputs=("Ada", "ada@example.com"))
    password_policy.check(generate_password(64), min_length=64)


def test_passwd_applies_the_policy_with_the_users_context(cli: Cli) -> None:
    cli.create("Ada Lovelace", "ada@example.com")
    result = cli("passwd", "ada@example.com", "--password-stdin", input="lovelace ada 2024!\n")
    assert_error(result, 5, "your name, email")
    cli.ok("passwd", "ada@example.com", "--password-stdin", input=STRONG + "\n")


def test_prompt_asks_again_up_to_three_times(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("usersctl.cli.password_input.stdin_is_terminal", lambda: True)
    args = ("create", "--name", "Ada", "--email", "ada@example.com")
    answers = ["password", STRONG, STRONG]  # refused at once: never typed twice
    result = cli(*args, input="\n".join(answers) + "\n")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("please choose another") == 1
    three_bad = ["12345678"] * 3
    result = cli(*args[:4], "bob@example.com", input="\n".join(three_bad) + "\n")
    assert result.exit_code == 5
    assert result.stderr.count("please choose another") == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: password too")


def test_import_refuses_weak_plaintext_rows_with_line_numbers(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "users.csv"
    path.write_text(
        "name,email,password\n"
        f"Ada,ada@example.com,{STRONG}\n"
        "Bob,bob@example.com,password\n"
        "Cy,cy@example.com,cy cy cy cy cy cy cy\n"
    )
    result = cli("import", str(path))
    assert result.exit_code == 5
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("line 3: password too short")
    assert lines[1].startswith("line 4: password too easy to guess")
    assert cli.ok("list", "--count").stdout == "0\n"


def test_check_never_echoes_and_names_what_is_accepted() -> None:
    with pytest.raises(InvalidData) as caught:
        password_policy.check("monkey123456789")
    message = caught.value.message
    assert "monkey" not in message and "\n" not in message
    assert "--random-password" in message
