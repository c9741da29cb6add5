"""Hash passwords, add role, is_active and timestamps, bound every VARCHAR.

Plaintext passwords of the tutorial schema are hashed with argon2id in place, then moved to
`password_hash`, and the plaintext column is dropped. On adoption (the tutorial app's
database) every value is plaintext and is hashed, even one that looks like a hash; on a
database usersctl downgraded to 0001, the `password` column holds the hashes the downgrade
put there, which are kept. Emails are lowercased and names trimmed; the upgrade refuses,
changing nothing, when that would merge two accounts, a name does not fit, or a value is
missing (NULL). Values usersctl's own validators would refuse (an email such as
`admin@localhost`, a control character in a name) are kept and listed as warnings.

Re-runnable (MariaDB commits each DDL statement on its own, so a killed upgrade may have
done part of this): every step checks what is already there. The in-place hashing is
committed together with the first DDL statement, so a rerun finds either every password
plaintext or every one hashed, and hashes each exactly once.

The downgrade keeps every user and their password *hash* (in the old `password` column;
plaintext cannot be recovered). It refuses when a user has a role other than 'user' or is
disabled, because revision 0001 cannot say so and would silently re-enable the account
(unless the downgrade goes on to base, which drops the table).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import context, op

from usersctl import migration_ops as ops
from usersctl import passwords
from usersctl.errors import InvalidData
from usersctl.models import UTCDateTime, utcnow

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TUTORIAL_VARCHAR = sa.String().with_variant(sa.String(255), "mysql", "mariadb")
NAME_LENGTH = 200
EMAIL_LENGTH = 320
MAX_PROBLEMS = 10

Row = tuple[int, str | None, str | None, str | None]


def _progress() -> Callable[[int], Callable[[int], None]] | None:
    factory = context.config.attributes.get("progress")
    return factory  # type: ignore[no-any-return]


def _adopting() -> bool:
    """Upgrading the tutorial app's database: every `password` value is plaintext."""
    return bool(context.config.attributes.get("adopting"))


def _warn(message: str) -> None:
    warnings = context.config.attributes.get("warnings")
    if isinstance(warnings, list):
        warnings.append(message)


def _check_upgradable(rows: Sequence[Row], has_password: bool) -> None:
    problems: list[str] = []
    owner: dict[str, int] = {}
    for user_id, name, email, password in rows:
        missing = [
            field
            for field, value in (("name", name), ("email", email), ("password", password))
            if value is None and (field != "password" or has_password)
        ]
        if missing:
            problems.append(f"user {user_id}: no {' and no '.join(missing)} (NULL)")
        if name is not None and (not name.strip() or len(name.strip()) > NAME_LENGTH):
            problems.append(f"user {user_id}: name must be 1-{NAME_LENGTH} characters")
        if email is None:
            continue
        key = email.strip().lower()
        if key in owner:
            problems.append(f"users {owner[key]} and {user_id} share email {key!r}")
        owner.setdefault(key, user_id)
        if len(key) > EMAIL_LENGTH:
            problems.append(f"user {user_id}: email longer than {EMAIL_LENGTH} characters")
    if problems:
        more = f" (and {len(problems) - MAX_PROBLEMS} more)" if len(problems) > MAX_PROBLEMS else ""
        raise InvalidData(
            "cannot upgrade to 0002, nothing changed: "
            + "; ".join(problems[:MAX_PROBLEMS])
            + more
            + ". Fix these rows with the old application, then run `usersctl db upgrade` again."
        )


def _warn_about_values(rows: Sequence[Row], hashing: set[int]) -> None:
    """Values kept although usersctl's validators would refuse them if given today."""
    from usersctl.schemas import clean_name, normalize_email

    for user_id, name, email, password in rows:
        for field, value, check in (("name", name, clean_name), ("email", email, normalize_email)):
            try:
                check(value or "")
            except ValueError as exc:
                reason = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(exc))
                kept = f"user {user_id}: {field} {value!r} kept"
                _warn(f"{kept}, though usersctl refuses it: {reason}")
        if user_id in hashing and password is not None and len(password) > passwords.MAX_LENGTH:
            _warn(
                f"user {user_id}: password longer than {passwords.MAX_LENGTH} characters, "
                "hashed as it is; usersctl verify-password cannot check it: set a new one "
                "with `usersctl passwd`"
            )


def _hash_all(values: list[str]) -> list[str]:
    """Hash the values on every core, with a progress display when usersctl gave one."""
    factory = _progress()
    advance = factory(len(values)) if factory and values else None
    return passwords.hash_many(values, enforce_policy=False, advance=advance)


USERS = sa.table(
    "users",
    sa.column("id", sa.Integer),
    sa.column("name", sa.String),
    sa.column("email", sa.String),
    sa.column("password", sa.String),
    sa.column("password_hash", sa.String),
    sa.column("created_at", UTCDateTime()),
    sa.column("updated_at", UTCDateTime()),
)


def upgrade() -> None:
    offline = context.is_offline_mode()
    reader = ops.reader()
    columns = ops.column_names("users")  # (a dry run from base: no table yet)
    has_password = "password" in columns
    rows: Sequence[Row] = []
    if columns:
        password = USERS.c.password if has_password else sa.null()
        query = sa.select(USERS.c.id, USERS.c.name, USERS.c.email, password).order_by(USERS.c.id)
        rows = [tuple(row) for row in reader.execute(query)]  # type: ignore[misc]
    _check_upgradable(rows, has_password)
    hashing = {
        user_id
        for user_id, _, _, password in rows
        if has_password
        and password  # an empty one is kept empty: no password (usersctl passwd sets one)
        and (_adopting() or not passwords.is_supported_hash(password))
    }
    _warn_about_values(rows, hashing)
    for user_id, _, _, password in rows:
        if has_password and password == "":
            _warn(
                f"user {user_id}: empty password: the account now has no password (it cannot "
                "log in with an empty one); give it one with `usersctl passwd`"
            )

    # 1. Data, before any DDL: trim names, lowercase emails, hash plaintext in place. On
    #    MariaDB the next DDL statement commits this together with the revision before it.
    if offline:
        op.get_context().impl.static_output(
            f"-- data step, run row by row: hash {len(hashing)} plaintext password(s) with "
            "argon2id in place, trim names, lowercase emails"
        )
    else:
        _clean_rows(op.get_bind(), rows, hashing)

    # 2. The tutorial's table on a latin1 MariaDB server becomes utf8mb4.
    ops.convert_to_utf8mb4("users")

    # 3. New columns, then the hashes and timestamps into them.
    with op.batch_alter_table("users") as batch:
        for column in (
            sa.Column("password_hash", sa.String(255), nullable=True),
            sa.Column("role", sa.String(32), nullable=False, server_default="user"),
            sa.Column("is_active", sa.Boolean(), nullable=False, server_default=sa.true()),
            sa.Column("created_at", UTCDateTime(), nullable=True),
            sa.Column("updated_at", UTCDateTime(), nullable=True),
        ):
            ops.add_column_if_missing("users", column, batch)
    if has_password or offline:
        now = sa.bindparam("now", utcnow(), type_=UTCDateTime())
        op.execute(
            sa.update(USERS)
            .where(USERS.c.password_hash.is_(None))
            .values(password_hash=USERS.c.password, created_at=now, updated_at=now)
        )

    # 4. The plaintext column goes; every VARCHAR gets its bound.
    with op.batch_alter_table("users") as batch:
        ops.drop_index_if_present("ix_users_id", "users", batch)
        ops.drop_column_if_present("users", "password", batch)
        batch.alter_column(
            "name", existing_type=TUTORIAL_VARCHAR, type_=sa.String(NAME_LENGTH), nullable=False
        )
        batch.alter_column(
            "email", existing_type=TUTORIAL_VARCHAR, type_=sa.String(EMAIL_LENGTH), nullable=False
        )
        batch.alter_column("password_hash", existing_type=sa.String(255), nullable=False)
        batch.alter_column("created_at", existing_type=UTCDateTime(), nullable=False)
        batch.alter_column("updated_at", existing_type=UTCDateTime(), nullable=False)


def _clean_rows(bind: sa.Connection, rows: Sequence[Row], hashing: set[int]) -> None:
    """Trimmed names, lowercased emails and (for the ids in `hashing`) the password hashed."""
    todo = [(user_id, password) for user_id, _, _, password in rows if user_id in hashing]
    hashed = dict(
        zip(
            [user_id for user_id, _ in todo],
            _hash_all([str(password) for _, password in todo]),
            strict=True,
        )
    )
    changes = [
        {
            "b_id": user_id,
            "b_name": str(name).strip(),
            "b_email": str(email).strip().lower(),
            "b_pw": hashed.get(user_id, password),
        }
        for user_id, name, email, password in rows
    ]
    changes = [
        change
        for change, (_, name, email, password) in zip(changes, rows, strict=True)
        if (change["b_name"], change["b_email"], change["b_pw"]) != (name, email, password)
    ]
    if not changes:
        return
    values = {"name": sa.bindparam("b_name"), "email": sa.bindparam("b_email")}
    if hashing:
        values["password"] = sa.bindparam("b_pw")
    bind.execute(sa.update(USERS).where(USERS.c.id == sa.bindparam("b_id")).values(values), changes)


def downgrade() -> None:
    users = sa.table(
        "users",
        sa.column("id", sa.Integer),
        sa.column("email", sa.String),
        sa.column("role", sa.String),
        sa.column("is_active", sa.Boolean),
        sa.column("password_hash", sa.String),
        sa.column("password", sa.String),
    )
    # Going on to base drops the table anyway: nothing can be silently re-enabled.
    columns = ops.column_names("users")
    blocked: list[tuple[int, str]] = []
    if {"role", "is_active"} <= columns and not context.config.attributes.get("to_base", False):
        not_plain = sa.or_(users.c.role != "user", users.c.is_active == sa.false())
        query = sa.select(users.c.id, users.c.email).where(not_plain).order_by(users.c.id)
        blocked = [(uid, email) for uid, email in ops.reader().execute(query.limit(11))]
    if blocked:
        named = ", ".join(f"{email} (id {uid})" for uid, email in blocked[:10])
        more = " and more" if len(blocked) > 10 else ""
        raise InvalidData(
            f"cannot downgrade below 0002, nothing changed: these users have a role other "
            f"than 'user' or are disabled, which revision 0001 cannot represent (the accounts "
            f"would silently become enabled plain users): {named}{more}. Change them first "
            "(usersctl update USER --role user; usersctl enable USER)."
        )

    with op.batch_alter_table("users") as batch:
        ops.add_column_if_missing("users", sa.Column("password", TUTORIAL_VARCHAR), batch)
    if "password_hash" in columns or context.is_offline_mode():
        op.execute(
            sa.update(users)
            .where(users.c.password.is_(None))
            .values(password=users.c.password_hash)
        )
    with op.batch_alter_table("users") as batch:
        for name in ("updated_at", "created_at", "is_active", "role", "password_hash"):
            ops.drop_column_if_present("users", name, batch)
        batch.alter_column("password", existing_type=TUTORIAL_VARCHAR, nullable=False)
        batch.alter_column("name", existing_type=sa.String(NAME_LENGTH), type_=TUTORIAL_VARCHAR)
        batch.alter_column("email", existing_type=sa.String(EMAIL_LENGTH), type_=TUTORIAL_VARCHAR)
        if "ix_users_id" not in ops.index_names("users"):
            batch.create_index("ix_users_id", ["id"], unique=False)
