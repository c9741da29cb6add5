"""SCIM filters (RFC 7644 3.4.2.2) as SQLAlchemy expressions on the users table.

scim2-models parses the filter (its own grammar, `ScimFilter`) and walks the tree with its
`FilterVisitor`; this visitor turns each node into a SQLAlchemy clause, so the database
does the matching and the paging (never raw SQL, never a filter over rows in Python).

Attribute names are case-insensitive and may carry the core User schema's URN. What each
attribute is stored as:

    userName, emails, emails.value   users.email (stored lowercased: caseExact false)
    emails.type, emails.primary      always "work" and true (one address per user)
    displayName, name.formatted      users.name (caseExact false)
    externalId                       users.external_id (caseExact true)
    active                           users.is_active
    roles, roles.value               users.role (caseExact true)
    id                               users.id
    meta.created, meta.lastModified  users.created_at, users.updated_at

Anything else is refused with scimType invalidFilter (400), as is an operator the
attribute's type does not take (co on active, gt on a boolean...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from scim2_models import InvalidFilterException, ScimFilter
from scim2_models.path import (
    AttrPath,
    CompareOperator,
    Comparison,
    FilterVisitor,
    LogicalExpr,
    LogicalOperator,
    Not,
    Present,
    ValuePath,
)
from sqlalchemy import ColumnElement, and_, false, func, not_, or_, true

from usersctl import rules
from usersctl.crud import stored_form
from usersctl.models import User

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
MAX_FILTER_LENGTH = 4096

Clause = ColumnElement[bool]


class FilterProblem(Exception):
    """A filter usersctl cannot evaluate: scimType invalidFilter."""


@dataclass(frozen=True)
class _Attribute:
    kind: str  # text, lowered (stored lowercased), exact, bool, id, time, const
    column: Any = None
    nullable: bool = False
    constant: Any = None


_ATTRIBUTES: dict[str, _Attribute] = {
    "username": _Attribute("lowered", User.email),
    "emails": _Attribute("lowered", User.email),
    "emails.value": _Attribute("lowered", User.email),
    "emails.type": _Attribute("const", constant="work"),
    "emails.primary": _Attribute("const", constant=True),
    "displayname": _Attribute("text", User.name),
    "name.formatted": _Attribute("text", User.name),
    "externalid": _Attribute("exact", User.external_id, nullable=True),
    "active": _Attribute("bool", User.is_active),
    "roles": _Attribute("exact", User.role),
    "roles.value": _Attribute("exact", User.role),
    "roles.primary": _Attribute("const", constant=True),
    "id": _Attribute("id", User.id),
    "meta.created": _Attribute("time", User.created_at),
    "meta.lastmodified": _Attribute("time", User.updated_at),
}
MULTI_VALUED = ("emails", "roles")

_ORDERING = {
    CompareOperator.gt: lambda c, v: c > v,
    CompareOperator.ge: lambda c, v: c >= v,
    CompareOperator.lt: lambda c, v: c < v,
    CompareOperator.le: lambda c, v: c <= v,
}
_TEXT: dict[CompareOperator, Callable[[Any, Any], Clause]] = {
    CompareOperator.eq: lambda c, v: c == v,
    CompareOperator.ne: lambda c, v: c != v,
    CompareOperator.co: lambda c, v: c.contains(v, autoescape=True),
    CompareOperator.sw: lambda c, v: c.startswith(v, autoescape=True),
    CompareOperator.ew: lambda c, v: c.endswith(v, autoescape=True),
    **_ORDERING,
}


def _name(path: AttrPath, parent: str | None) -> str:
    if path.uri is not None and path.uri.lower() != USER_SCHEMA.lower():
        raise FilterProblem(f"unknown schema in filter: {path.uri}")
    name = path.attr.lower()
    if path.sub_attr:
        name += "." + path.sub_attr.lower()
    if parent is not None:
        name = f"{parent}.{name}"
    if name not in _ATTRIBUTES:
        raise FilterProblem(f"cannot filter on {str(path)!r}: {ATTRIBUTE_LIST}")
    return name


ATTRIBUTE_LIST = (
    "filter on userName, emails.value, displayName, name.formatted, externalId, active, "
    "roles.value, id, meta.created or meta.lastModified"
)


def _constant(value: Any, op: CompareOperator, expected: Any) -> Clause:
    if op is CompareOperator.eq:
        return true() if _loose_equal(value, expected) else false()
    if op is CompareOperator.ne:
        return false() if _loose_equal(value, expected) else true()
    raise FilterProblem(f"operator {op.value} is not supported here")


def _loose_equal(stored: Any, given: Any) -> bool:
    if isinstance(stored, bool):
        return _boolean(given) is stored
    return isinstance(given, str) and given.lower() == str(stored).lower()


def _boolean(value: Any) -> bool:
    """A boolean, also as the strings Microsoft Entra sends ("True", "false")."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise FilterProblem("a boolean attribute compares with true or false")


def _time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise FilterProblem("a dateTime attribute compares with a quoted ISO-8601 time")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise FilterProblem(f"not an ISO-8601 time: {value[:40]!r}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


class _ToSql(FilterVisitor[Clause]):
    def __init__(self, parent: str | None = None) -> None:
        self.parent = parent

    def visit_logical_expr(self, node: LogicalExpr) -> Clause:
        terms = [self.visit(term) for term in node.terms]
        return and_(*terms) if node.op is LogicalOperator.and_ else or_(*terms)

    def visit_not(self, node: Not) -> Clause:
        return not_(self.visit(node.expr))

    def visit_value_path(self, node: ValuePath) -> Clause:
        if self.parent is not None or node.sub_attr is not None:
            raise FilterProblem("nested value filters are not supported")
        name = _name(node.attr_path, None)
        if name not in MULTI_VALUED:
            raise FilterProblem(f"{node.attr_path} is not multi-valued")
        return _ToSql(parent=name).visit(node.val_filter)

    def visit_present(self, node: Present) -> Clause:
        attribute = _ATTRIBUTES[_name(node.attr_path, self.parent)]
        if attribute.nullable:
            return and_(attribute.column.is_not(None), attribute.column != "")
        return true()

    def visit_comparison(self, node: Comparison) -> Clause:
        name = _name(node.attr_path, self.parent)
        attribute = _ATTRIBUTES[name]
        op, value, column = node.op, node.value, attribute.column
        if attribute.kind == "const":
            return _constant(attribute.constant, op, value)
        if attribute.kind == "bool":
            if op not in (CompareOperator.eq, CompareOperator.ne):
                raise FilterProblem(f"operator {op.value} does not apply to {node.attr_path}")
            wanted = _boolean(value)
            clause: Clause = column == wanted if op is CompareOperator.eq else column != wanted
            return clause
        if attribute.kind == "time":
            if op not in (CompareOperator.eq, CompareOperator.ne, *_ORDERING):
                raise FilterProblem(f"operator {op.value} does not apply to {node.attr_path}")
            return _TEXT[op](column, _time(value))
        if attribute.kind == "id":
            return self._id(op, value)
        if not isinstance(value, str):
            raise FilterProblem(f"{node.attr_path} compares with a quoted string")
        if rules.lone_surrogate(value) is not None:  # no database could even be asked
            raise FilterProblem(f"{node.attr_path} compares with text that is not Unicode")
        if attribute.kind == "text":
            column, value = func.lower(column), value.lower()
        elif attribute.kind == "lowered" and op in (CompareOperator.eq, CompareOperator.ne):
            value = stored_form(value)  # as create stored it: `userName eq` finds that user
        elif attribute.kind == "lowered":
            value = value.lower()
        clause = _TEXT[op](column, value)
        if attribute.nullable and op is CompareOperator.ne:
            clause = or_(column.is_(None), clause)
        return clause

    def _id(self, op: CompareOperator, value: Any) -> Clause:
        text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
        number = int(text) if text.isdecimal() and text.isascii() and len(text) < 12 else None
        if op in (CompareOperator.eq, CompareOperator.ne):
            matches = User.id == number if number is not None else false()
            return matches if op is CompareOperator.eq else not_(matches)
        if op in _ORDERING and number is not None:
            return _ORDERING[op](User.id, number)  # type: ignore[no-any-return]
        raise FilterProblem(f"operator {op.value} does not apply to id")


def to_clause(text: str) -> Clause:
    """The WHERE clause for a SCIM filter; FilterProblem for anything unsupported."""
    if len(text) > MAX_FILTER_LENGTH:
        raise FilterProblem(f"filter too long: at most {MAX_FILTER_LENGTH} characters")
    try:
        parsed: ScimFilter[Any] = ScimFilter(text)
    except InvalidFilterException as exc:
        raise FilterProblem(f"invalid filter: {exc.detail}") from None
    except (ValueError, RecursionError):
        raise FilterProblem("invalid filter") from None
    return _ToSql().visit(parsed.ast)
