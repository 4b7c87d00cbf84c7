"""Editable regions: what a reviewer may change in a message before approving it.

    {% editable "greeting" %}Dear {{ customer.name }},{% endeditable %}

renders its body as usual, unless the message carries an edit for "greeting" (`message.edits`): then the
reviewer's text stands in its place. Everything outside the regions is locked, and only a communication's own
parts may declare regions (not layouts or snippets, whose text is shared). An edit is text: in HTML parts
it is escaped (quotes included, so that it cannot leave an attribute it sits in), its line breaks kept as
<br>; in text parts (subject, SMS, plain text) it is as written. It is never evaluated as a template.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from jinja2 import Environment, nodes
from jinja2.ext import Extension
from jinja2.parser import Parser
from jinja2.runtime import Context
from markupsafe import Markup, escape

REGION_NAME = re.compile(r"^[a-z][a-z0-9_\-]{0,63}$")
MAX_EDIT = 20_000


def _html_part(name: str | None) -> bool:
    """The engine names a part's template "<prefix>/<part file>/<locale>": email.html, print.html..."""
    segments = (name or "").split("/")
    return len(segments) >= 2 and segments[1].endswith("html")


def as_html(text: str) -> Markup:
    return escape(text).replace("\n", Markup("<br>\n"))


class EditableExtension(Extension):
    tags = {"editable"}  # noqa: RUF012 - Jinja's own declaration, read from the class

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        name = parser.parse_expression()
        if not (
            isinstance(name, nodes.Const) and isinstance(name.value, str) and REGION_NAME.match(name.value)
        ):
            parser.fail(
                'an editable region needs a name in quotes, such as {% editable "greeting" %}', lineno
            )
        body = parser.parse_statements(("name:endeditable",), drop_needle=True)
        for inner in body:
            if _is_region(inner) or any(_is_region(node) for node in inner.find_all(nodes.CallBlock)):
                parser.fail("editable regions cannot be nested", lineno)
        call = self.call_method("region", [name, nodes.ContextReference()], lineno=lineno)
        return nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def region(self, name: str, context: Context, caller: Any) -> Any:
        message = context.get("message")
        edits = message.get("edits") if isinstance(message, Mapping) else None
        if isinstance(edits, dict) and isinstance(edits.get(name), str):
            text: str = edits[name]
            # By the part, not by the autoescape setting, which the template itself can turn off.
            return as_html(text) if _html_part(context.name) else text
        return caller()


def _is_region(node: nodes.Node) -> bool:
    if not isinstance(node, nodes.CallBlock):
        return False
    call = node.call
    return (
        isinstance(call, nodes.Call)
        and isinstance(call.node, nodes.ExtensionAttribute)
        and call.node.name == "region"
    )


def regions(environment: Environment, source: str) -> list[str]:
    """The editable regions a part's source declares, in order."""
    found = []
    for node in environment.parse(source).find_all(nodes.CallBlock):
        if _is_region(node) and isinstance(node.call, nodes.Call):
            first = node.call.args[0]
            if isinstance(first, nodes.Const) and isinstance(first.value, str):
                found.append(first.value)
    return found
