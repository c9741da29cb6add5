"""The command class every usersctl command uses: help in admin words, and the global
options accepted after the command too.

Typer's help names Python types (`<str>`, `<int range>`, `<list[str]>`) and brackets
arguments as `{USER}`; here an option's value is shown by its metavar (`--role ROLE`) and
an argument by its name (`USER...`, `[REV]` when optional).

`usersctl list --database-url X` works like `usersctl --database-url X list`: each command
also accepts --database-url, --actor and --debug (hidden from its help; the root help says
so), unless it has an option of that name itself (audit's --actor filters by actor).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from typer._click import Context, HelpFormatter, Parameter
from typer.core import TyperCommand, TyperOption

from usersctl.cli.completion import LATE_DATABASE_URL

F = TypeVar("F", bound=Callable[..., Any])


def _late_global(ctx: typer.Context, param: typer.CallbackParam, value: Any) -> Any:
    """A global option given after the command: applies as if given before it."""
    if value is None or value is False:
        return value
    from usersctl.cli.state import AppState

    attribute = (param.name or "").removeprefix("late_")
    if attribute == "database_url":
        ctx.meta[LATE_DATABASE_URL] = value  # (completion has no state to set)
    state = ctx.find_root().obj
    if isinstance(state, AppState):
        setattr(state, attribute, value)
    return value


def _late_options(
    late_database_url: Annotated[
        str | None,
        typer.Option("--database-url", hidden=True, expose_value=False, callback=_late_global),
    ] = None,
    late_actor: Annotated[
        str | None,
        typer.Option("--actor", hidden=True, expose_value=False, callback=_late_global),
    ] = None,
    late_debug: Annotated[
        bool, typer.Option("--debug", hidden=True, expose_value=False, callback=_late_global)
    ] = False,
) -> None:
    """Declares the global options as every command accepts them (never called)."""


def _late_params(taken: set[str]) -> list[Parameter]:
    from typer.main import _get_param
    from typer.utils import get_params_from_function

    params = [_get_param(meta) for meta in get_params_from_function(_late_options).values()]
    return [param for param in params if not taken.intersection(param.opts)]


def _argument_name(param: Parameter) -> str:
    return param.metavar or (param.name or "").upper()


def _argument_usage(param: Parameter) -> str:
    name = _argument_name(param)
    if param.nargs != 1 and not name.endswith("..."):
        name += "..."
    return name if param.required else f"[{name}]"


class UsersctlCommand(TyperCommand):
    def __init__(self, name: str | None, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        taken: set[str] = set()
        for param in self.params:
            taken.update(param.opts)
            if isinstance(param, TyperOption) and not param.is_flag and param.metavar is None:
                is_path = param.type_descriptor.is_path
                param.metavar = "PATH" if is_path else (param.name or "value").upper()
        self.params.extend(_late_params(taken))

    def collect_usage_pieces(self, ctx: Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        pieces += [
            _argument_usage(param)
            for param in self.get_params(ctx)
            if param.param_type_name == "argument"
        ]
        return pieces

    def format_options(self, ctx: Context, formatter: HelpFormatter) -> None:
        arguments, options = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                arguments.append((_argument_name(param), record[1]))
            else:
                options.append(record)
        for title, rows in (("Arguments", arguments), ("Options", options)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def command(app: typer.Typer, name: str) -> Callable[[F], F]:
    """`app.command(name=...)` with the usersctl command class."""
    return app.command(name=name, cls=UsersctlCommand)
