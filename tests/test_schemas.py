"""The fast email path must never disagree with email-validator."""

from __future__ import annotations

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from usersctl.schemas import _simple_email, normalize_email

ATOM = st.text(alphabet="abcXYZ09_+-.!#", min_size=1, max_size=12)
LABEL = st.text(alphabet="abcdeXYZ019-", min_size=1, max_size=12)
TLD = st.sampled_from(["com", "ORG", "io", "c0m", "x", "local", "test", "arpa", "onion", "invalid"])
EMAILS = st.builds(
    lambda local, labels, tld: f"{local}@{'.'.join(labels)}.{tld}",
    ATOM,
    st.lists(LABEL, min_size=1, max_size=3),
    TLD,
)


def reference(value: str) -> str | None:
    try:
        return validate_email(value, check_deliverability=False).normalized.lower()
    except EmailNotValidError:
        return None


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(EMAILS)
def test_fast_path_accepts_only_what_email_validator_accepts_identically(value: str) -> None:
    fast = _simple_email(value)
    if fast is not None:
        assert reference(value) == fast


@pytest.mark.parametrize(
    "value",
    ["Ada@Example.com", "a.b+c@mail.example.org", "x_y-z@sub-domain.example.io"],
)
def test_fast_path_takes_the_common_addresses(value: str) -> None:
    assert _simple_email(value) == value.lower() == reference(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("  Ada@Example.COM ", "ada@example.com"),
        ("josé@Example.com", "josé@example.com"),
        ("用户@例子.广告", "用户@例子.广告"),
    ],
)
def test_normalize_email_falls_back_to_email_validator(value: str, expected: str) -> None:
    assert normalize_email(value) == expected


@pytest.mark.parametrize("value", ["a..b@example.com", "a@example.invalid", "a@x", "@example.com"])
def test_normalize_email_rejects(value: str) -> None:
    with pytest.raises(ValueError):
        normalize_email(value)
