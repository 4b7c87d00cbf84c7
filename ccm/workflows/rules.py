"""Rule expressions: checked when a workflow is saved, evaluated in the sandbox for each message.

A rule sees `customer` (the profile a template sees), `data` (the trigger's data) and `template` (key, name,
category, version). A missing value is false (`customer.attributes.vulnerable` for a customer without that
attribute), but comparing one is an error (`data.amount > 100` without an amount), so that a rule meant to
catch something never passes it by silently.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import ChainableUndefined, TemplateSyntaxError, nodes
from jinja2.exceptions import TemplateError
from jinja2.parser import Parser

from ccm.templates_engine import analysis
from ccm.templates_engine.filters import FILTERS
from ccm.templates_engine.sandbox import RenderLimitError, TemplateEnvironment, run_with_time_limit

ROOTS = ("customer", "data", "template")
OUTPUT_LIMIT = 100_000
TIME_LIMIT = 1.0


class _NoTemplates(Exception):
    pass


def _no_source(name: str) -> str:
    raise _NoTemplates(f"a rule cannot load '{name}'")


def _no_include(name: str, parent: str) -> str:
    raise _NoTemplates(f"a rule cannot include '{name}'")


class _Missing(ChainableUndefined):
    """A missing value: false, and its attributes missing too; but comparing it (==, !=, <, in...) is an
    error, so that `data.status != "closed"` cannot quietly be true for a message without a status."""

    __slots__ = ()
    __eq__ = __ne__ = ChainableUndefined._fail_with_undefined_error
    __hash__ = ChainableUndefined.__hash__


def _environment() -> TemplateEnvironment:
    environment = TemplateEnvironment(
        source_lookup=_no_source,
        include_resolver=_no_include,
        output_limit=OUTPUT_LIMIT,
        time_limit=TIME_LIMIT,
    )
    environment.add_filters(FILTERS)
    environment.undefined = _Missing
    return environment


_ENVIRONMENT = _environment()


@dataclass(frozen=True)
class ExpressionProblem:
    message: str
    column: int | None  # 1-based character position in the expression, where it can be told


def _parse(source: str) -> nodes.Expr:
    parser = Parser(_ENVIRONMENT, source, state="variable")
    expression = parser.parse_expression()
    if not parser.stream.eos:
        token = parser.stream.current
        raise TemplateSyntaxError(f"unexpected '{token.value}' after the expression", token.lineno)
    return expression


def _tokens(source: str) -> tuple[list[tuple[int, int]], int | None]:
    """(start, end) of each token Jinja reads, in order; and where it stopped reading, if it could not go on
    (an unbalanced bracket, a character it does not know, an unterminated string)."""
    spans: list[tuple[int, int]] = []
    cursor = 0
    try:
        for _, _, value in _ENVIRONMENT.lexer.tokeniter(source, None, state="variable"):
            text = str(value)
            start = source.find(text, cursor) if text else cursor
            if start < 0:
                break
            spans.append((start, start + len(text)))
            cursor = start + len(text)
    except TemplateSyntaxError as exc:
        found = _AT.search(exc.message or "")
        if found:
            return spans, int(found.group(1))
        rest = source[cursor:]
        return spans, cursor + len(rest) - len(rest.lstrip())
    return spans, None


_AT = re.compile(r" at (\d+)$")


def _column(source: str) -> int | None:
    """Where a syntax error is. Jinja reports only a line, so the expression is parsed again with each token
    on a line of its own: the line of the error is the token's number. Where Jinja could not even read the
    tokens, the place it stopped."""
    spans, stopped = _tokens(source)
    if stopped is not None:
        return stopped + 1
    if any("\n" in source[start:end] for start, end in spans):
        return None  # a string spanning lines: the count would be off
    try:
        _parse("\n".join(source[start:end] for start, end in spans))
    except TemplateSyntaxError as exc:
        if exc.lineno is not None and 1 <= exc.lineno <= len(spans):
            return spans[exc.lineno - 1][0] + 1
        return len(source.rstrip()) + 1
    except RecursionError:
        return None
    return None


def _names(expression: nodes.Expr) -> Iterator[str]:
    for node in [expression, *expression.find_all(nodes.Name)]:
        if isinstance(node, nodes.Name):
            yield node.name


def check(source: str) -> ExpressionProblem | None:
    """Why this expression cannot be a rule's `when`, or None. Everything Jinja would refuse later is
    refused now: syntax, names other than customer/data/template, private attributes, unknown filters."""
    try:
        expression = _parse(source)
    except TemplateSyntaxError as exc:
        message = _AT.sub("", exc.message or "") or "not a valid expression"
        return ExpressionProblem(message, _column(source))
    except RecursionError:
        return ExpressionProblem("the expression is nested too deeply to be read", None)
    unknown = sorted({name for name in _names(expression) if name not in ROOTS})
    if unknown:
        return ExpressionProblem(
            f"unknown name '{unknown[0]}': a rule sees customer, data and template",
            _position(source, unknown[0]),
        )
    try:
        analysis.check_safety(nodes.Template([nodes.Output([expression])]))
        _ENVIRONMENT.compile_expression(source)
    except analysis.TemplateProblem as problem:
        return ExpressionProblem(problem.finding.message, None)
    except TemplateSyntaxError as exc:  # an unknown filter or test
        return ExpressionProblem(exc.message or "cannot be compiled", None)
    return None


def _position(source: str, word: str) -> int | None:
    """Where a name is used as a name, not as an attribute (`data.secret or secret`: the second)."""
    found = re.search(rf"(?<![\w.]){re.escape(word)}\b", source)
    return found.start() + 1 if found else None


def paths(source: str) -> list[str]:
    """The `customer.x`, `data.y.z`, `template.key` values an expression reads, longest chains only."""
    expression = _parse(source)
    chains: dict[int, str] = {}
    inner: set[int] = set()
    # find_all yields the nodes below the root only: the root may be a chain itself.
    for node in [expression, *expression.find_all((nodes.Getattr, nodes.Getitem))]:
        if not isinstance(node, nodes.Getattr | nodes.Getitem):
            continue
        path = _chain(node)
        if path is not None:
            chains[id(node)] = path
            inner.add(id(node.node))
    found = [path for key, path in chains.items() if key not in inner]
    found += [name for name in _names(expression) if not any(p.startswith(f"{name}.") for p in found)]
    return sorted(set(found))


def _chain(node: nodes.Node) -> str | None:
    parts: list[str] = []
    while isinstance(node, nodes.Getattr | nodes.Getitem):
        if isinstance(node, nodes.Getattr):
            parts.append(node.attr)
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str | int):
            parts.append(str(node.arg.value))
        else:
            return None
        node = node.node
    if isinstance(node, nodes.Name) and node.name in ROOTS:
        return ".".join([node.name, *reversed(parts)])
    return None


def value_at(context: Mapping[str, Any], path: str) -> Any:
    """The value a path names in the context, or None where it is missing."""
    value: Any = context
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


class RuleError(Exception):
    """A rule could not be evaluated for this message (a missing value compared, a value of the wrong type,
    a runaway expression): the message is refused rather than passed by the rule."""


@functools.lru_cache(maxsize=1024)
def _compiled(source: str) -> Any:
    return _ENVIRONMENT.compile_expression(source, undefined_to_none=False)


def evaluate(source: str, context: Mapping[str, Any]) -> bool:
    compiled = _compiled(source)

    def run() -> Any:
        return compiled(**context)

    try:
        result = run_with_time_limit(run, TIME_LIMIT, "the rule")
        return bool(result)
    except (TemplateError, RenderLimitError) as exc:
        raise RuleError(str(exc) or type(exc).__name__) from None
    except Exception as exc:  # noqa: BLE001 - any fault of the expression (a TypeError, a KeyError...)
        raise RuleError(f"{type(exc).__name__}: {exc}") from None
