"""Reading templates before they run: syntax, forbidden constructs, what they include, what data they use,
and where a render error happened."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from jinja2 import Environment, TemplateSyntaxError, nodes

from ccm.templates_engine.schemas import Parts


@dataclass(frozen=True)
class SubPart:
    """One renderable source of a version: `email.html`, `sms.body`, `body`..."""

    name: str  # "email.html"
    pointer: str  # JSON pointer into the version body: "/parts/email/html" or "/locales/fr/email/html"
    source: str


# print.css is a stylesheet, not a template: it is never rendered, so it cannot run anything.
RENDERED_FIELDS: dict[str, tuple[str, ...]] = {
    "email": ("subject", "html", "text"),
    "sms": ("body",),
    "print": ("html",),
    "portal": ("title", "html"),
}


def sub_parts(parts: Parts, prefix: str) -> Iterator[SubPart]:
    for channel, fields in RENDERED_FIELDS.items():
        part = getattr(parts, channel)
        if part is None:
            continue
        for field in fields:
            source = getattr(part, field)
            if source is not None:
                yield SubPart(f"{channel}.{field}", f"{prefix}/{channel}/{field}", source)
    if parts.body is not None:
        yield SubPart("body", f"{prefix}/body", parts.body)


@dataclass(frozen=True)
class Finding:
    line: int | None
    message: str
    variable: str | None = None


class TemplateProblem(Exception):
    """A template's source cannot be accepted: syntax, a forbidden construct, a reference that cannot be."""

    def __init__(self, finding: Finding) -> None:
        super().__init__(finding.message)
        self.finding = finding


def parse(environment: Environment, source: str) -> nodes.Template:
    try:
        return environment.parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(Finding(exc.lineno, exc.message or "syntax error")) from None
    except RecursionError:
        raise TemplateProblem(Finding(None, "expressions are nested too deeply to be read")) from None


def check_safety(tree: nodes.Template) -> None:
    """Refuse, before anything runs, what the sandbox would refuse at render time anyway: private names."""
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter, nodes.NSRef)):
        name: Any = None
        if isinstance(node, nodes.Getattr | nodes.NSRef):
            name = node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            name = node.arg.value
        elif isinstance(node, nodes.Filter) and node.name == "attr" and node.args:
            first = node.args[0]
            name = first.value if isinstance(first, nodes.Const) else None
        if isinstance(name, str) and name.startswith("_"):
            raise TemplateProblem(
                Finding(node.lineno, f"'{name}' is private: templates cannot use names that start with _")
            )


def references(tree: nodes.Template) -> list[tuple[str, int]]:
    """The layouts and snippets a template names, with their lines. Only literal names are allowed, so that
    a version can pin exactly what it was approved with."""
    found = []
    for node in tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
        target = getattr(node, "template", None)
        if not (isinstance(target, nodes.Const) and isinstance(target.value, str)):
            raise TemplateProblem(
                Finding(node.lineno, "extends, include and import must name a layout or snippet in quotes")
            )
        found.append((target.value, node.lineno))
    return found


def _dotted(node: nodes.Node) -> str | None:
    if isinstance(node, nodes.Name):
        return node.name
    if isinstance(node, nodes.Getattr):
        base = _dotted(node.node)
        return f"{base}.{node.attr}" if base else None
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        key = node.arg.value
        base = _dotted(node.node)
        return f"{base}.{key}" if base and isinstance(key, str) else None
    return None


def data_paths(tree: nodes.Template) -> list[tuple[str, int]]:
    """`data.x.y` paths a template reads, longest chains only, with their first line."""
    seen: dict[str, int] = {}
    children: set[int] = set()
    chain = [
        n
        for n in tree.find_all((nodes.Getattr, nodes.Getitem))
        if isinstance(n, nodes.Getattr | nodes.Getitem)
    ]
    for node in chain:
        children.add(id(node.node))
    for node in chain:
        if id(node) in children:
            continue  # part of a longer chain
        path = _dotted(node)
        if path and path.startswith("data.") and path not in seen:
            seen[path] = node.lineno
    return sorted(seen.items(), key=lambda item: item[1])


def undeclared(path: str, schema: dict[str, Any] | None) -> bool:
    """True when the schema says nothing that allows `data.<path>`."""
    if schema is None:
        return True
    node: Any = schema
    for name in path.split(".")[1:]:
        if not isinstance(node, dict):
            return False
        properties = node.get("properties")
        if not isinstance(properties, dict):
            return node.get("additionalProperties") is False
        if name not in properties:
            return node.get("additionalProperties") is not True
        node = properties[name]
    return False


_UNDEFINED_NAME = re.compile(r"'([^']+)' is undefined")
_UNDEFINED_ATTR = re.compile(r"has no (?:attribute|element) '?([^']+?)'?$")


def error_location(exc: BaseException, names: set[str]) -> tuple[str, int] | None:
    """The innermost frame of one of our templates in the traceback: (template name, line)."""
    found = None
    tb: TracebackType | None = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename in names or "@" in filename:
            found = (filename, tb.tb_lineno)
        tb = tb.tb_next
    return found


def undefined_variable(message: str, tree: nodes.Template | None, line: int | None) -> str | None:
    """The full path of the variable a StrictUndefined error is about, such as `data.account.number`."""
    match = _UNDEFINED_NAME.search(message)
    if match:
        return match.group(1)
    match = _UNDEFINED_ATTR.search(message)
    if not match:
        return None
    attribute = match.group(1)
    if tree is not None:
        for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
            if line is not None and node.lineno != line:
                continue
            if isinstance(node, nodes.Getattr):
                name: Any = node.attr
            elif isinstance(node, nodes.Getitem):
                name = getattr(node.arg, "value", None)
            else:
                continue
            if str(name) == attribute:
                path = _dotted(node)
                if path:
                    return path
    return attribute
