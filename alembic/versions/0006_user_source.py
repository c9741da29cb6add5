"""Who owns a user: its source (sync or SCIM) and external id.

`source` is the `usersctl sync --source NAME` or SCIM provisioning that created or adopted
the user (NULL for users managed by hand); `external_id` is the identity provider's id for
the user (SCIM's externalId). Both are NULL for every existing
user; `source` is indexed, since sync reads every user one source owns.

MariaDB commits each ALTER as it runs, so every step first checks whether it is already
done (usersctl.migration_ops): a run interrupted half-way is finished by running it again.

The downgrade drops both columns. It refuses while any user has a source or an external id
(that ownership would be lost without a word): release them first with
`usersctl update USER --no-source`, which clears both.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from usersctl import migration_ops as ops
from usersctl.errors import InvalidData
from usersctl.models import EXTERNAL_ID_LENGTH, SOURCE_LENGTH

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_users_source"


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        for column in (
            sa.Column("source", sa.String(SOURCE_LENGTH)),
            sa.Column("external_id", sa.String(EXTERNAL_ID_LENGTH)),
        ):
            ops.add_column_if_missing("users", column, batch)
    ops.create_index_if_missing(INDEX, "users", ["source"])


def downgrade() -> None:
    existing = ops.column_names("users")
    if {"source", "external_id"} <= existing:
        users = sa.table(
            "users", sa.column("source", sa.String), sa.column("external_id", sa.String)
        )
        owned = (
            ops.reader()
            .execute(
                sa.select(sa.func.count())
                .select_from(users)
                .where(sa.or_(users.c.source.is_not(None), users.c.external_id.is_not(None)))
            )
            .scalar_one()
        )
        if owned:
            raise InvalidData(
                f"cannot downgrade below 0006, nothing changed: {owned} user(s) are owned by a "
                "sync source or SCIM, which revision 0005 cannot represent. Release them "
                "first (usersctl update USER --no-source)."
            )
    ops.drop_index_if_present(INDEX, "users")
    with op.batch_alter_table("users") as batch:
        ops.drop_column_if_present("users", "external_id", batch)
        ops.drop_column_if_present("users", "source", batch)
