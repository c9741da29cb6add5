"""Streaming import and `usersctl sync`: validated rows in, changes out, in batches inside
the caller's one transaction, so that memory stays flat whatever the file size.

One engine serves both commands. Each batch of valid rows is compared with the database
(one query per 500 emails) and sorted into create / update / unchanged / skip; its writes
and audit entries go out at once. Nothing is written once any row was bad: the rest of the
input is still read and checked so that every bad row is reported, and the caller's
transaction is then rolled back (`finish` raises). Duplicate emails across the whole input
are dropped before (bulk_job.unique, with validation), found with a scratch index in a
private temporary SQLite file (bounded memory, exact); a sync keeps one of its own of the
emails listed, for what it prunes.

A sync (`Job.source`) makes the users that source owns match the input: rows create or
update only users it owns (another owner's email is a conflict unless `adopt`), and the
owned users absent from the input are reported, disabled or deleted (`prune`), within the
`max_prune` safety limit. No front-end code here: the CLI parses and renders.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select, update

from usersctl.audit import PASSWORD_SET, Trail, diff, last_to_change, snapshot
from usersctl.bulk import Problems, Validated
from usersctl.bulk_job import Job, Outcome, PlanWriter, PruneRefused, Seen
from usersctl.crud import (
    Existing,
    ImportPlan,
    apply_import,
    existing_users,
    import_changes,
    take_bulk_lock,
)
from usersctl.errors import Conflict, InvalidData
from usersctl.models import User, utcnow
from usersctl.timestamps import iso_utc

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from usersctl.schemas import UserImport


def _created_fields(row: UserImport) -> dict[str, Any]:
    fields: dict[str, Any] = {"name": row.name, "role": row.role, "active": row.active}
    if row.expires_at is not None:
        fields["expires_at"] = iso_utc(row.expires_at)
    if row.gives_password:
        fields["password"] = PASSWORD_SET
    return fields


class Run:
    """One import or sync in the caller's transaction (`session`, `trail`). Feed it batches
    of validated rows (`add`), each email once (bulk_job.unique drops the rows that repeat
    one, by the same `key`), then `finish` (raises if anything was bad: the caller's
    transaction then rolls back; in a dry run nothing is written anyway)."""

    def __init__(
        self,
        session: Session,
        trail: Trail,
        job: Job,
        validated: Validated,
        *,
        key: Callable[[str], str],
        hasher: Callable[[Sequence[str]], list[str]] | None = None,
        plan: PlanWriter | None = None,
    ) -> None:
        self.session = session
        self.trail = trail
        self.job = job
        # Bad rows (exit 5), invalid or repeating an earlier row, counted by validation
        # (bulk.validate, bulk_job.unique; maybe in a child process: bulk_worker).
        self.validated = validated
        self.hasher = hasher
        self.plan = plan
        self.outcome = Outcome()
        # A sync's emails so far, for what it prunes (the users it owns that none names).
        self.listed = Seen() if job.source is not None else None
        self.key = key  # what makes two emails one (dialects.email_key)
        take_bulk_lock(session)
        # Into an empty table (a first load) no row can meet an existing user: only one
        # created by an earlier row, which is a duplicate (dropped before: bulk_job.unique).
        # No lookups then.
        self.empty = session.scalar(select(User.id).limit(1)) is None
        if job.restore and not self.empty:
            raise Conflict("--restore needs an empty users table (it keeps ids and timestamps)")
        if job.source is not None:
            owned = select(func.count()).select_from(User).where(User.source == job.source)
            self.outcome.owned = int(session.scalar(owned) or 0)

    @property
    def clean(self) -> bool:
        validated = self.validated
        return not (
            validated.bad.count or validated.duplicates.count or self.outcome.conflicts.count
        )

    def close(self) -> None:
        if self.listed is not None:
            self.listed.close()

    def _pruned_before(
        self, rows: list[tuple[int, UserImport]], existing: dict[str, Existing]
    ) -> set[int]:
        """The disabled users this source owns that the rows list without an `active`
        column and that a sync disabled (pruned, or a row of the source said so): they come
        back active. One disabled by anyone else (`usersctl disable`, the API) stays so."""
        if self.job.source is None:
            return set()
        candidates = [
            found.id
            for _, row in rows
            if (found := existing.get(row.email)) is not None
            and not found.active
            and found.source == self.job.source
            and "active" not in row.given
        ]
        if not candidates:
            return set()
        last = last_to_change(self.session, "active", candidates)
        return {user_id for user_id, change in last.items() if change == ("sync", False)}

    def add(self, rows: list[tuple[int, UserImport]]) -> None:
        """Plan one batch and, while every row so far was good, write it."""
        job, outcome = self.job, self.outcome
        if self.listed is not None:
            key = self.key
            self.listed.add("emails", ((key(row.email), line) for line, row in rows))
        existing = (
            {}
            if self.empty
            else existing_users(session=self.session, emails=[row.email for _, row in rows])
        )
        pruned = self._pruned_before(rows, existing)
        plan = ImportPlan()
        for line, row in rows:
            found = existing.get(row.email)
            if found is None:
                plan.create.append((line, row))
                continue
            take_over = None
            if job.source is not None:
                if found.source != job.source:
                    if not job.adopt:
                        owner = (
                            "no source (managed by hand)"
                            if found.source is None
                            else (f"source {found.source}")
                        )
                        outcome.conflicts.add(
                            line,
                            f"{row.email} (user {found.id}) is not owned by {job.source}: "
                            f"it has {owner}; --adopt takes it over",
                        )
                        continue
                    take_over = job.source
            elif job.on_conflict == "skip":
                plan.skip.append((line, row, found.id))
                continue
            elif job.on_conflict == "error":
                outcome.conflicts.add(line, f"email already taken: {row.email} (user {found.id})")
                continue
            changes = import_changes(
                row,
                found,
                update_passwords=job.update_passwords,
                source=take_over,
                reactivate=found.id in pruned,
            )
            if changes:
                plan.update.append((line, row, found.id, changes))
            else:
                plan.unchanged.append((line, row, found.id))
        outcome.created += len(plan.create)
        outcome.updated += len(plan.update)
        outcome.unchanged += len(plan.unchanged)
        outcome.skipped += len(plan.skip)
        if self.plan is not None:  # in the input's order
            entries: list[dict[str, Any]] = [
                {"change": "create", "line": line, "email": row.email,
                 "fields": _created_fields(row)}
                for line, row in plan.create
            ] + [
                {"change": "update", "line": line, "email": row.email, "user_id": user_id,
                 "fields": changes}
                for line, row, user_id, changes in plan.update
            ]  # fmt: skip
            for entry in sorted(entries, key=lambda entry: int(entry["line"])):
                self.plan.write(entry)
        if job.dry_run or not self.clean:
            return  # nothing is written once a row was bad: the run will be rolled back
        self._write(plan)

    def _write(self, plan: ImportPlan) -> None:
        hashes: dict[str, str] = {}
        plaintext: list[tuple[str, str]] = []
        for _, row in plan.create:
            if row.password_hash is not None:
                hashes[row.email] = row.password_hash
            elif row.password is not None:
                plaintext.append((row.email, row.password))
        for _, row, _, changes in plan.update:
            if "password" in changes:
                if row.password_hash is not None:
                    hashes[row.email] = row.password_hash
                elif row.password is not None:
                    plaintext.append((row.email, row.password))
        if plaintext:
            if self.hasher is None:  # pragma: no cover - the CLI always gives one
                raise RuntimeError("no hasher")
            self.outcome.to_hash += len(plaintext)
            hashed = self.hasher([password for _, password in plaintext])
            pairs = zip(plaintext, hashed, strict=True)
            hashes.update((email, value) for (email, _), value in pairs)
        apply_import(
            session=self.session,
            plan=plan,
            hashes=hashes,
            restore=self.job.restore,
            trail=self.trail,
            action=self.job.action,
            source=self.job.source,
        )
        self.session.expunge_all()  # nothing of a batch stays in the identity map

    def finish(self) -> Outcome:
        """Prune (a sync), then raise if anything was bad or a safety limit is exceeded."""
        job, outcome = self.job, self.outcome
        outcome.passwords_missing = self.validated.passwords_missing
        bad = Problems()  # (validation has finished)
        bad.extend(self.validated.bad)
        bad.extend(self.validated.duplicates)
        if bad.count:
            raise InvalidData(
                f"{bad.count} bad row(s); nothing "
                f"{'changed' if job.source else 'imported'}, the database is unchanged",
                bad.details(),
            )
        if outcome.conflicts.count:
            if job.source is not None:
                message = (
                    f"{outcome.conflicts.count} row(s) name users {job.source} does not own; "
                    "nothing changed (--adopt takes them over)"
                )
            else:
                message = (
                    f"{outcome.conflicts.count} email(s) already exist; nothing imported "
                    "(use --on-conflict skip or update)"
                )
            raise Conflict(message, outcome.conflicts.details())
        if job.source is not None:
            self._prune()
        return outcome

    def _absent(self) -> Iterator[list[tuple[int, str, bool]]]:
        """The users the source owns whose email is not in the input: (id, email, active),
        in batches, by id (keyset pages: no cursor stays open across writes)."""
        last = 0
        while True:
            query = (
                select(User.id, User.email, User.is_active)
                .where(User.source == self.job.source, User.id > last)
                .order_by(User.id)
                .limit(1000)
            )
            rows = self.session.execute(query)
            page = [(uid, email, bool(active)) for uid, email, active in rows]
            if not page:
                return
            last = page[-1][0]
            assert self.listed is not None  # (a sync)
            listed = self.listed.first_lines("emails", [self.key(email) for _, email, _ in page])
            yield [user for user in page if self.key(user[1]) not in listed]

    def _prune(self) -> None:
        job, outcome = self.job, self.outcome
        targets = array("q")
        for page in self._absent():
            for uid, email, active in page:
                outcome.absent += 1
                if job.prune == "delete" or (job.prune == "disable" and active):
                    targets.append(uid)
                    change = job.prune
                else:
                    change = "keep"
                if self.plan is not None:
                    self.plan.write(
                        {"change": change, "email": email, "user_id": uid, "active": active}
                    )
        if job.prune == "disable":
            outcome.disabled = len(targets)
        elif job.prune == "delete":
            outcome.deleted = len(targets)
        allowed = job.max_prune.allowed(outcome.owned)
        if len(targets) > allowed:
            verb = "disable" if job.prune == "disable" else "delete"
            share = f" ({_percent(len(targets), outcome.owned)})" if outcome.owned else ""
            raise PruneRefused(
                outcome,
                f"refused: the sync would {verb} {len(targets)} of the {outcome.owned} users "
                f"{job.source} owns{share}, more than --max-prune {job.max_prune.text} allows "
                f"({allowed}); nothing changed",
            )
        if job.dry_run or not targets:
            return
        for start in range(0, len(targets), 500):
            chunk = list(targets[start : start + 500])
            if job.prune == "disable":
                self._disable(chunk)
            else:
                self._delete(chunk)

    def _disable(self, ids: list[int]) -> None:
        emails = self.session.execute(select(User.id, User.email).where(User.id.in_(ids)))
        entries = [
            (uid, email, {"active": {"before": True, "after": False}}) for uid, email in emails
        ]
        self.session.execute(
            update(User).where(User.id.in_(ids)).values(is_active=False, updated_at=utcnow())
        )
        self.trail.record_many(self.session, "sync", entries)

    def _delete(self, ids: list[int]) -> None:
        users = list(self.session.scalars(select(User).where(User.id.in_(ids))))
        last = [(u.id, u.email, snapshot(u)) for u in users]
        gone = [(uid, email, diff(values, dict.fromkeys(values))) for uid, email, values in last]
        self.session.expunge_all()
        self.session.execute(delete(User).where(User.id.in_(ids)))
        self.trail.record_many(self.session, "sync", gone)


def _percent(part: int, whole: int) -> str:
    """A share in words that never reads as none, or as all, when it is not: 250 of
    100,000 is 0.25%, not 0%."""
    share = part * 100 / whole
    if share >= 1 or share == 0:
        whole_share = f"{share:.0f}%"
        return "99%" if whole_share == "100%" and part < whole else whole_share
    return f"{share:.2g}%"
