"""The ``--where`` language: a small recursive-descent parser, into a syntax tree.

Grammar (keywords are case-insensitive)::

    expr       := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | "(" expr ")" | comparison
    comparison := NAME op literal | literal op NAME
                | NAME ["not"] "in" "(" literal ("," literal)* ")"
    op         := "==" | "!=" | "<" | "<=" | ">" | ">="
    literal    := NUMBER | 'string' | "string" | true | false | null

Nothing else is accepted: the text never reaches SQL. The tree is turned into
SQLAlchemy expressions with bound parameters (:mod:`tuner.queries._compile`), so a
string like ``'x; drop table trials'`` is only ever a value to compare with.

>>> parse("optimizer == 'adam' and dropout > 0.3")
And(items=(Compare(name='optimizer', op='==', value='adam', pos=1), \
Compare(name='dropout', op='>', value=0.3, pos=25)))
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

from tuner.errors import UsageError
from tuner.storage import DB_INT_MAX

Literal = Union[int, float, str, bool, None]  # noqa: UP007 (a runtime alias on Python 3.10)

OPERATORS = ("==", "!=", "<=", ">=", "<", ">")
_FLIP = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
_KEYWORDS = {"and", "or", "not", "in"}
_CONSTANTS: dict[str, Literal] = {"true": True, "false": False, "null": None, "none": None}

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.]))
  | (?P<string>'[^']*'|"[^"]*")
  | (?P<name>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<op>==|!=|<=|>=|<|>)
  | (?P<punct>[(),])
""", re.VERBOSE)


class FilterError(UsageError):
    """A ``--where`` filter that cannot be parsed or does not fit the study."""


@dataclass(frozen=True)
class Compare:
    name: str
    op: str
    value: Literal
    pos: int  # 1-based position of the column name in the filter text


@dataclass(frozen=True)
class In:
    name: str
    values: tuple[Literal, ...]
    negated: bool
    pos: int


@dataclass(frozen=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    item: Node


Node = Union[Compare, In, And, Or, Not]  # noqa: UP007


@dataclass(frozen=True)
class _Token:
    kind: str  # number, string, name, keyword, constant, op, punct, end
    text: str
    pos: int  # 0-based offset
    value: Literal = None


def _error(source: str, pos: int, what: str) -> FilterError:
    shown = source if len(source) <= 80 else f"{source[:60]}…"
    return FilterError(f"--where {shown!r}: {what} at position {pos + 1}")


def tokenize(source: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(source):
        match = _TOKEN.match(source, pos)
        if match is None:
            char = source[pos]
            if char == "=":
                raise _error(source, pos, "unexpected '=' (compare with ==)")
            if char in "'\"":
                raise _error(source, pos, f"unclosed string {source[pos:]!r}")
            if char.isdigit() or char in ".+-":
                raise _error(source, pos, f"malformed number {source[pos:].split()[0]!r}")
            raise _error(source, pos, f"unexpected {char!r}")
        kind, text = match.lastgroup or "", match.group()
        if kind == "number":
            number = float(text)
            # An integer past the databases' 64-bit integers compares as the real number.
            whole = (re.fullmatch(r"[-+]?\d{1,19}", text) is not None
                     and abs(int(text)) <= DB_INT_MAX)
            value: Literal = int(text) if whole else number
            tokens.append(_Token("number", text, pos, value))
        elif kind == "string":
            tokens.append(_Token("string", text, pos, text[1:-1]))
        elif kind == "name" and text.lower() in _KEYWORDS:
            tokens.append(_Token("keyword", text.lower(), pos))
        elif kind == "name" and text.lower() in _CONSTANTS:
            tokens.append(_Token("constant", text, pos, _CONSTANTS[text.lower()]))
        elif kind != "space":
            tokens.append(_Token(kind, text, pos))
        pos = match.end()
    tokens.append(_Token("end", "", len(source)))
    return tokens


# Bounds on a filter, well past any written by hand: its length, its nesting (brackets
# and `not`, which the parser recurses into), and its comparisons (each is a few nodes of
# the database's expression tree, which SQLite caps at a depth of 1000).
MAX_LENGTH = 10_000
MAX_DEPTH = 50
MAX_COMPARISONS = 200


class _Parser:
    def __init__(self, source: str) -> None:
        if len(source) > MAX_LENGTH:
            raise FilterError(f"--where: a filter is at most {MAX_LENGTH:,} characters, "
                              f"but got {len(source):,}")
        self.source = source
        self.tokens = tokenize(source)
        self.i = 0
        self.depth = 0
        self.comparisons = 0

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def at(self, kind: str, text: str | None = None) -> bool:
        token = self.peek()
        return token.kind == kind and (text is None or token.text == text)

    def fail(self, token: _Token, expected: str) -> FilterError:
        found = "the end" if token.kind == "end" else repr(token.text)
        return _error(self.source, token.pos, f"expected {expected}, found {found}")

    def expect(self, kind: str, text: str, expected: str) -> None:
        if not self.at(kind, text):
            raise self.fail(self.peek(), expected)
        self.take()

    def parse(self) -> Node:
        if self.at("end"):
            raise _error(self.source, 0, "empty filter")
        node = self.expr()
        if not self.at("end"):
            raise self.fail(self.peek(), "`and`, `or` or the end of the filter")
        return node

    def expr(self) -> Node:
        items = [self.and_expr()]
        while self.at("keyword", "or"):
            self.take()
            items.append(self.and_expr())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def and_expr(self) -> Node:
        items = [self.not_expr()]
        while self.at("keyword", "and"):
            self.take()
            items.append(self.not_expr())
        return items[0] if len(items) == 1 else And(tuple(items))

    def not_expr(self) -> Node:
        if self.at("keyword", "not") or self.at("punct", "("):
            token = self.take()
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise _error(self.source, token.pos, f"more than {MAX_DEPTH} nested "
                             "brackets or `not`s")
            if token.text == "not":
                node: Node = Not(self.not_expr())
            else:
                node = self.expr()
                self.expect("punct", ")", "`)`")
            self.depth -= 1
            return node
        self.comparisons += 1
        if self.comparisons > MAX_COMPARISONS:
            raise _error(self.source, self.peek().pos, f"more than {MAX_COMPARISONS} "
                         "comparisons (use `in (...)` for a list of values)")
        return self.comparison()

    def literal(self) -> Literal:
        token = self.peek()
        if token.kind not in ("number", "string", "constant"):
            raise self.fail(token, "a number, a quoted string, true, false or null")
        return self.take().value

    def comparison(self) -> Node:
        token = self.peek()
        if token.kind == "name":
            name = self.take()
            if self.at("keyword", "in") or self.at("keyword", "not"):
                negated = self.take().text == "not"
                if negated:
                    self.expect("keyword", "in", "`in` after `not`")
                return In(name.text, self.values(), negated, name.pos + 1)
            if not self.at("op"):
                raise self.fail(self.peek(), "a comparison (==, !=, <, <=, >, >=) or `in`")
            op = self.take().text
            return Compare(name.text, op, self.literal(), name.pos + 1)
        if token.kind in ("number", "string", "constant"):
            value = self.literal()
            if not self.at("op"):
                raise self.fail(self.peek(), "a comparison (==, !=, <, <=, >, >=)")
            op = self.take().text
            if not self.at("name"):
                raise self.fail(self.peek(), "a column name")
            name = self.take()
            return Compare(name.text, _FLIP[op], value, name.pos + 1)
        raise self.fail(token, "a column name, `not` or `(`")

    def values(self) -> tuple[Literal, ...]:
        self.expect("punct", "(", "`(` after `in`")
        values = [self.literal()]
        while self.at("punct", ","):
            self.take()
            values.append(self.literal())
        self.expect("punct", ")", "`,` or `)`")
        return tuple(values)


def parse(source: str) -> Node:
    """Parse a ``--where`` filter into its syntax tree, or raise :class:`FilterError`."""
    return _Parser(source).parse()


def names(node: Node) -> list[str]:
    """The column names a filter mentions, in order of first appearance."""
    if isinstance(node, Compare | In):
        return [node.name]
    children = node.items if isinstance(node, And | Or) else (node.item,)
    seen: dict[str, None] = {}
    for child in children:
        seen.update(dict.fromkeys(names(child)))
    return list(seen)
