"""Hash passwords, add role, is_active and timestamps, bound every VARCHAR.

Plaintext passwords of the tutorial schema are hashed with argon2id (values that already
are argon2/bcrypt hashes, as left by a downgrade, are kept) and the plaintext column is
dropped. Emails are lowercased and names trimmed; the upgrade refuses, changing nothing,
when that would merge two accounts or a name does not fit.

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


def _progress() -> Callable[[int], Callable[[int], None]] | None:
    factory = context.config.attributes.get("progress")
    return factory  # type: ignore[no-any-return]


def _check_upgradable(rows: Sequence[sa.Row[tuple[int, str, str]]]) -> None:
    problems: list[str] = []
    owner: dict[str, int] = {}
    for user_id, name, email in rows:
        key = email.strip().lower()
        if key in owner:
            problems.append(f"users {owner[key]} and {user_id} share email {key!r}")
        owner.setdefault(key, user_id)
        if not name.strip() or len(name.strip()) > NAME_LENGTH:
            problems.append(f"user {user_id}: name must be 1-{NAME_LENGTH} characters")
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


def _hash_all(values: list[str]) -> list[str]:
    """Hash the plaintext values on every core; values that already are hashes (left by a
    downgrade) are kept."""
    todo = [i for i, value in enumerate(values) if not passwords.is_supported_hash(value)]
    factory = _progress()
    advance = factory(len(todo)) if factory and todo else None
    hashed = passwords.hash_many([values[i] for i in todo], enforce_policy=False, advance=advance)
    result = list(values)
    for index, value in zip(todo, hashed, strict=True):
        result[index] = value
    return result


def _reader() -> sa.Connection:
    """A live connection for reads, also when the SQL is only rendered (dry run, offline)."""
    if context.is_offline_mode():
        return context.config.attributes["connection"]  # type: ignore[no-any-return]
    return op.get_bind()


def upgrade() -> None:
    offline = context.is_offline_mode()
    reader = _reader()
    old = sa.table(
        "users",
        sa.column("id", sa.Integer),
        sa.column("name", sa.String),
        sa.column("email", sa.String),
        sa.column("password", sa.String),
    )
    rows: Sequence[sa.Row[tuple[int, str, str]]] = []
    if not offline or sa.inspect(reader).has_table("users"):  # (a dry run from base: not yet)
        rows = reader.execute(sa.select(old.c.id, old.c.name, old.c.email).order_by(old.c.id)).all()
    _check_upgradable(rows)

    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("password_hash", sa.String(255), nullable=True))
        batch.add_column(sa.Column("role", sa.String(32), nullable=False, server_default="user"))
        batch.add_column(
            sa.Column("is_active", sa.Boolean(), nullable=False, server_default=sa.true())
        )
        batch.add_column(sa.Column("created_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("updated_at", UTCDateTime(), nullable=True))

    if offline:
        op.get_context().impl.static_output(
            f"-- data step, run row by row: hash {len(rows)} plaintext password(s) with "
            "argon2id into password_hash, trim names, lowercase emails, set timestamps"
        )
    else:
        _hash_passwords(op.get_bind(), old, rows)

    with op.batch_alter_table("users") as batch:
        batch.drop_index("ix_users_id")
        batch.drop_column("password")
        batch.alter_column(
            "name", existing_type=TUTORIAL_VARCHAR, type_=sa.String(NAME_LENGTH), nullable=False
        )
        batch.alter_column(
            "email", existing_type=TUTORIAL_VARCHAR, type_=sa.String(EMAIL_LENGTH), nullable=False
        )
        batch.alter_column("password_hash", existing_type=sa.String(255), nullable=False)
        batch.alter_column("created_at", existing_type=UTCDateTime(), nullable=False)
        batch.alter_column("updated_at", existing_type=UTCDateTime(), nullable=False)


def _hash_passwords(
    bind: sa.Connection, old: sa.TableClause, rows: Sequence[sa.Row[tuple[int, str, str]]]
) -> None:
    new = sa.table(
        "users",
        sa.column("id", sa.Integer),
        sa.column("name", sa.String),
        sa.column("email", sa.String),
        sa.column("password_hash", sa.String),
        sa.column("created_at", UTCDateTime()),
        sa.column("updated_at", UTCDateTime()),
    )
    secrets = bind.execute(sa.select(old.c.id, old.c.password).order_by(old.c.id)).all()
    hashes = _hash_all([password for _, password in secrets])
    now = utcnow()
    by_id = {user_id: (name, email) for user_id, name, email in rows}
    if secrets:
        bind.execute(
            sa.update(new)
            .where(new.c.id == sa.bindparam("b_id"))
            .values(
                name=sa.bindparam("b_name"),
                email=sa.bindparam("b_email"),
                password_hash=sa.bindparam("b_hash"),
                created_at=sa.bindparam("b_now", type_=UTCDateTime()),
                updated_at=sa.bindparam("b_now", type_=UTCDateTime()),
            ),
            [
                {
                    "b_id": user_id,
                    "b_name": by_id[user_id][0].strip(),
                    "b_email": by_id[user_id][1].strip().lower(),
                    "b_hash": hashed,
                    "b_now": now,
                }
                for (user_id, _), hashed in zip(secrets, hashes, strict=True)
            ],
        )


def downgrade() -> None:
    users = sa.table(
        "users",
        sa.column("role", sa.String),
        sa.column("is_active", sa.Boolean),
        sa.column("password_hash", sa.String),
        sa.column("password", sa.String),
    )
    # Going on to base drops the table anyway: nothing can be silently re-enabled.
    blocked = 0
    if not context.config.attributes.get("to_base", False):
        not_plain = sa.or_(users.c.role != "user", users.c.is_active == sa.false())
        blocked = _reader().execute(sa.select(sa.func.count()).where(not_plain)).scalar_one()
    if blocked:
        raise InvalidData(
            f"cannot downgrade below 0002, nothing changed: {blocked} user(s) have a role "
            "other than 'user' or are disabled, which revision 0001 cannot represent (the "
            "accounts would silently become enabled plain users). Change them first."
        )

    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("password", TUTORIAL_VARCHAR, nullable=True))
    op.execute(sa.update(users).values(password=users.c.password_hash))
    with op.batch_alter_table("users") as batch:
        batch.drop_column("updated_at")
        batch.drop_column("created_at")
        batch.drop_column("is_active")
        batch.drop_column("role")
        batch.drop_column("password_hash")
        batch.alter_column("password", existing_type=TUTORIAL_VARCHAR, nullable=False)
        batch.alter_column("name", existing_type=sa.String(NAME_LENGTH), type_=TUTORIAL_VARCHAR)
        batch.alter_column("email", existing_type=sa.String(EMAIL_LENGTH), type_=TUTORIAL_VARCHAR)
        batch.create_index("ix_users_id", ["id"], unique=False)
