"""From a ``--where`` syntax tree to a SQLAlchemy condition with bound parameters.

Semantics follow SQL's: a trial that lacks a parameter (a conditional one, such as
``momentum`` when the optimizer is ``adam``) matches no comparison on it, except
``== null``. A categorical parameter is stored as the index of its choice, so a
comparison on it becomes a test of the index against the choices that satisfy it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from sqlalchemy import and_, false, not_, or_
from sqlalchemy.sql.elements import ColumnElement

from tuner.queries._columns import Column, StudyColumns
from tuner.queries._filter import And, Compare, FilterError, In, Literal, Node, Not, Or
from tuner.queries.schema import STATES

_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
    ">": operator.gt, ">=": operator.ge}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _holds(choice: Any, op: str, value: Literal) -> bool:
    """``choice op value`` with Python's rules, where bools are not numbers."""
    if op in ("==", "!="):
        same = (type(choice) is type(value) or (_is_number(choice) and _is_number(value))
                ) and choice == value
        return same if op == "==" else not same
    comparable = (_is_number(choice) and _is_number(value)) or (
        isinstance(choice, str) and isinstance(value, str))
    return comparable and bool(_OPS[op](choice, value))


def _describe(value: Literal) -> str:
    return "null" if value is None else repr(value)


class _Compiler:
    def __init__(self, columns: StudyColumns, source: str) -> None:
        self.columns = columns
        self.source = source

    def fail(self, col: Column, pos: int, what: str) -> FilterError:
        return FilterError(f"--where {self.source!r}: {what} (column {col.name!r} at "
                           f"position {pos})")

    def node(self, node: Node) -> ColumnElement[bool]:
        if isinstance(node, And):
            return and_(*(self.node(n) for n in node.items))
        if isinstance(node, Or):
            return or_(*(self.node(n) for n in node.items))
        if isinstance(node, Not):
            return not_(self.node(node.item))
        try:
            col = self.columns.column(node.name, node.pos)
        except FilterError as exc:
            raise FilterError(f"--where {self.source!r}: {exc}") from None
        if isinstance(node, In):
            values = node.values
            if col.kind == "number":
                self.check_numbers(col, node.pos, values)
                condition: ColumnElement[bool] = col.expr.in_(
                    [v for v in values if v is not None])
                if None in values:
                    condition = or_(condition, col.expr.is_(None))
                return not_(condition) if node.negated else condition
            if col.kind == "state":
                states = [self.state(col, node.pos, v) for v in values]
                return col.expr.not_in(states) if node.negated else col.expr.in_(states)
            indexes = set().union(*(self.matching(col, node.pos, "==", v) for v in values))
            if node.negated:
                indexes = set(range(len(col.choices))) - indexes
            return col.expr.in_(sorted(indexes)) if indexes else false()
        return self.compare(col, node)

    def compare(self, col: Column, node: Compare) -> ColumnElement[bool]:
        op, value = node.op, node.value
        if col.kind == "number":
            self.check_numbers(col, node.pos, (value,))
            if value is None:
                if op not in ("==", "!="):
                    raise self.fail(col, node.pos, "null can only be compared with == or !=")
                return col.expr.is_(None) if op == "==" else col.expr.is_not(None)
            return _OPS[op](col.expr, value)
        if col.kind == "state":
            if op not in ("==", "!="):
                raise self.fail(col, node.pos, "a state can only be compared with == or !=")
            return _OPS[op](col.expr, self.state(col, node.pos, value))
        if value is None and None not in col.choices and op in ("==", "!="):
            # null means "the trial has no such parameter" (a conditional one).
            return col.expr.is_(None) if op == "==" else col.expr.is_not(None)
        indexes = self.matching(col, node.pos, op, value)
        return col.expr.in_(sorted(indexes)) if indexes else false()

    def matching(self, col: Column, pos: int, op: str, value: Literal) -> set[int]:
        """The indexes of the choices that satisfy ``choice op value``."""
        found = {i for i, c in enumerate(col.choices) if _holds(c, op, value)}
        choices = ", ".join(map(_describe, col.choices))
        if op in ("==", "!=") and not any(_holds(c, "==", value) for c in col.choices):
            raise self.fail(col, pos, f"{_describe(value)} is not one of its choices: {choices}")
        if op not in ("==", "!=") and not any(
                _holds(c, o, value) for c in col.choices for o in ("==", "<", ">")):
            raise self.fail(col, pos, f"{op} cannot compare its choices ({choices}) with "
                                      f"{_describe(value)}")
        return found

    def check_numbers(self, col: Column, pos: int, values: tuple[Literal, ...]) -> None:
        for value in values:
            if value is not None and not _is_number(value):
                raise self.fail(col, pos, f"a number is compared with {_describe(value)}")

    def state(self, col: Column, pos: int, value: Literal) -> str:
        if not isinstance(value, str) or value.lower() not in STATES:
            raise self.fail(col, pos, f"{_describe(value)} is not a state: "
                                      f"{', '.join(STATES)}")
        return value.upper()


def compile_filter(node: Node, columns: StudyColumns, source: str) -> ColumnElement[bool]:
    """The SQL condition for a parsed filter; parameters it names are joined as needed."""
    return _Compiler(columns, source).node(node)
