"""`usersctl sync`: make the users a source of truth (an HR export) owns match its file."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Annotated, Any

import typer

from usersctl.cli.bulk import (
    DelimiterOption,
    EncodingOption,
    FormatOption,
    IgnoreColumnsOption,
    UpdatePasswordsOption,
    run_rows,
)
from usersctl.cli.options import Output
from usersctl.cli.render import OutputFormat, Renderer, to_json
from usersctl.cli.text import say
from usersctl.errors import UsageError
from usersctl.escaping import printable


class Prune(StrEnum):
    none = "none"
    disable = "disable"
    delete = "delete"


SUMMARY = ("created", "updated", "unchanged", "absent", "disabled", "deleted", "blank_rows")
_MARKS = {"create": "+", "update": "~", "disable": "-", "delete": "-", "keep": "?"}


def _value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return printable(str(value))


def plan_line(entry: dict[str, Any], prune: str = "none") -> str:
    """One change of a dry run's plan: `+ EMAIL  field: value, ...` (create), `~ EMAIL  field:
    old -> new, ...` (update), `- EMAIL  disable|delete` (prune), `? EMAIL  absent (kept)`
    (`prune`: the run's --prune, which says why an absent user is kept)."""
    change, email = entry["change"], printable(entry["email"])
    mark = _MARKS[change]
    if change == "create":
        fields = ", ".join(f"{name}: {_value(value)}" for name, value in entry["fields"].items())
        return f"{mark} {email}  {fields}"
    if change == "update":
        parts = []
        for name, value in entry["fields"].items():
            if isinstance(value, dict):
                parts.append(f"{name}: {_value(value['before'])} -> {_value(value['after'])}")
            else:  # the password: only ever "set" or "changed"
                parts.append(f"{name}: {value}")
        return f"{mark} {email}  {', '.join(parts)}"
    if change == "keep":
        why = "already disabled" if prune == "disable" else f"kept: --prune {prune}"
        return f"{mark} {email}  absent from the file ({why})"
    return f"{mark} {email}  {change}"


def _show_plan(
    entries: Iterable[dict[str, Any]], summary: dict[str, Any], output: Any, prune: str
) -> None:
    """The plan on stdout: lines then the counts, or the same as data."""
    if output == OutputFormat.table:
        for entry in entries:
            typer.echo(plan_line(entry, prune))
        typer.echo(", ".join(f"{name.replace('_', ' ')} {summary[name]}" for name in SUMMARY))
        return
    if output == OutputFormat.jsonl:
        for entry in entries:
            typer.echo(to_json(entry))
        typer.echo(to_json({"summary": summary}))
        return
    typer.echo('{"changes": [', nl=False)
    for index, entry in enumerate(entries):
        typer.echo(("" if index == 0 else ",") + "\n  " + to_json(entry), nl=False)
    typer.echo(f'\n], "summary": {to_json(summary)}}}')


def sync(
    ctx: typer.Context,
    source_file: Annotated[
        str, typer.Argument(metavar="FILE|-", help="The source's export, or - for stdin.")
    ],
    source: Annotated[
        str,
        typer.Option(
            "--source",
            metavar="NAME",
            help="The source of truth (e.g. hr): the users it owns are made to match FILE.",
        ),
    ],
    prune: Annotated[
        Prune,
        typer.Option(
            "--prune",
            help="Users NAME owns that FILE no longer lists: none (report them), disable or "
            "delete them.",
            case_sensitive=False,
        ),
    ] = Prune.none,
    max_prune: Annotated[
        str,
        typer.Option(
            "--max-prune",
            metavar="N|P%",
            help="Refuse (exit 9, nothing changed) to prune more than N users or P% of the "
            "users NAME owns.",
        ),
    ] = "10%",
    adopt: Annotated[
        bool,
        typer.Option(
            "--adopt",
            help="Take over users FILE lists that NAME does not own (managed by hand or by "
            "another source) instead of refusing them (exit 4).",
        ),
    ] = False,
    update_passwords: UpdatePasswordsOption = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print the plan (+ create, ~ update, - prune) and the counts; write nothing. "
            "Exits as the real run would.",
        ),
    ] = False,
    fmt: FormatOption = None,
    encoding: EncodingOption = None,
    delimiter: DelimiterOption = None,
    ignore_columns: IgnoreColumnsOption = None,
    output: Output = OutputFormat.table,
) -> None:
    """Make the users NAME owns match FILE (CSV, JSON or JSONL), in one transaction.

    Rows create users (owned by NAME) or update the name, role, active and expires_at of
    users NAME owns; a password only for new users, unless --update-passwords. Users NAME
    does not own (the admin, other sources) are never changed or pruned. Every change is
    in the audit trail (action sync).

    \b
    Example:
      usersctl sync /srv/hr/users.csv --source hr --prune disable --dry-run
    """
    from usersctl.bulk import ReadCounts
    from usersctl.bulk_job import Job, Limit, PlanWriter, PruneRefused, check_source

    job = Job(
        source=check_source(source),
        prune=prune.value,
        max_prune=Limit.parse(max_prune),
        adopt=adopt,
        update_passwords=update_passwords,
        dry_run=dry_run,
    )
    if dry_run and output in (OutputFormat.csv, OutputFormat.plain):
        # (Its lines and counts have no one row shape: the real run's -o plain is counts.)
        raise UsageError(f"a sync plan has no {output.value} form: use -o json, jsonl or table")
    counts = ReadCounts()
    plan = PlanWriter() if dry_run else None

    def summary_of(outcome: Any) -> dict[str, Any]:
        summary = {name: getattr(outcome, name) for name in SUMMARY[:-1]}
        return {**summary, "dry_run": dry_run, "blank_rows": counts.blank_rows}

    try:
        outcome = run_rows(
            ctx, source_file, fmt, job=job, encoding=encoding, delimiter=delimiter,
            ignore_columns=ignore_columns, counts=counts, plan=plan,
        )  # fmt: skip
        if plan is not None:
            say("Dry run: nothing was written.")
            _show_plan(plan.entries(), summary_of(outcome), output, job.prune)
            return
        summary = summary_of(outcome)
        Renderer(output).one(summary, fields=list(summary))
    except PruneRefused as exc:
        if plan is not None:  # a dry run shows what the real run would refuse
            _show_plan(plan.entries(), summary_of(exc.outcome), output, job.prune)
        raise
    finally:
        if plan is not None:
            plan.close()
