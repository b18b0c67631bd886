"""Parse a small, safe filter language ("split == 'test' and width > 9") into Arrow expressions."""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from typing import Any

import pyarrow.compute as pc

from schemas.errors import ConfigError

_COMPARISONS: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


def _literal(node: ast.expr, text: str) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise ConfigError(
            f"--where {text!r}: expected a literal, got {ast.unparse(node)!r}"
        ) from None


def _field(node: ast.expr, columns: set[str], text: str) -> pc.Expression:
    if not isinstance(node, ast.Name):
        raise ConfigError(
            f"--where {text!r}: left side must be a column name, got {ast.unparse(node)!r}"
        )
    if node.id not in columns:
        raise ConfigError(
            f"--where {text!r}: unknown column {node.id!r}; columns: {sorted(columns)}"
        )
    return pc.field(node.id)


def _compare(node: ast.Compare, columns: set[str], text: str) -> pc.Expression:
    if len(node.ops) != 1:
        raise ConfigError(f"--where {text!r}: chain comparisons with 'and'")
    operation, right = node.ops[0], node.comparators[0]
    column = _field(node.left, columns, text)
    if isinstance(operation, (ast.In, ast.NotIn)):
        values = _literal(right, text)
        if not isinstance(values, (list, tuple, set)):
            raise ConfigError(f"--where {text!r}: 'in' needs a list, got {ast.unparse(right)!r}")
        expression = column.isin(list(values))
        return ~expression if isinstance(operation, ast.NotIn) else expression
    if isinstance(operation, (ast.Is, ast.IsNot)):
        if _literal(right, text) is not None:
            raise ConfigError(f"--where {text!r}: only 'is None' / 'is not None' are supported")
        return column.is_null() if isinstance(operation, ast.Is) else column.is_valid()
    comparison = _COMPARISONS.get(type(operation))
    if comparison is None:
        raise ConfigError(f"--where {text!r}: unsupported operator {type(operation).__name__}")
    return comparison(column, _literal(right, text))  # type: ignore[no-any-return]


def _convert(node: ast.expr, columns: set[str], text: str) -> pc.Expression:
    if isinstance(node, ast.BoolOp):
        parts = [_convert(value, columns, text) for value in node.values]
        combined = parts[0]
        for part in parts[1:]:
            combined = combined & part if isinstance(node.op, ast.And) else combined | part
        return combined
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return ~_convert(node.operand, columns, text)
    if isinstance(node, ast.Compare):
        return _compare(node, columns, text)
    raise ConfigError(f"--where {text!r}: unsupported expression {ast.unparse(node)!r}")


def parse_where(text: str, columns: set[str]) -> pc.Expression:
    """Turn a where-string into a pyarrow compute expression without evaluating any code.

    Supports comparisons (== != < <= > >=), `in [...]`, `not in`, `is None`, `is not None`,
    `and`, `or`, `not` and parentheses, over the given column names and Python literals.

    Raises:
        ConfigError: a syntax error, an unknown column or an unsupported construct.
    """
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as error:
        raise ConfigError(f"--where {text!r}: syntax error ({error.msg})") from None
    return _convert(tree.body, columns, text)
