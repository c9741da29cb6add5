"""What differs between the databases for the email unique index, known from a database
URL alone: usable before SQLAlchemy loads (an import's validating child never loads it)."""

from __future__ import annotations

from collections.abc import Callable

# Whose collations PAD SPACE: "a@example.com " is "a@example.com" to the unique email index
# (only another program can store the first; a restore keeps it).
PAD_SPACE_DIALECTS = frozenset({"mysql", "mariadb"})


def dialect_of(url: str) -> str:
    """The name of the SQLAlchemy dialect a database URL names (`mariadb+mariadbconnector://`
    is mariadb), without loading SQLAlchemy."""
    return url.partition(":")[0].partition("+")[0].lower()


def email_key(dialect: str) -> Callable[[str], str]:
    """What makes two emails one address to the database's unique index, and to usersctl:
    case never counts; on MariaDB trailing spaces do not either (PAD_SPACE_DIALECTS)."""
    if dialect in PAD_SPACE_DIALECTS:
        return lambda email: email.lower().rstrip(" ")
    return str.lower
