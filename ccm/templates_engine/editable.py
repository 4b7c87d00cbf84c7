"""Editable regions: what a reviewer may change in a message before approving it.

    {% editable "greeting" %}Dear {{ customer.name }},{% endeditable %}

renders its body as usual, unless the message carries an edit for "greeting" (`message.edits`): then the
reviewer's text stands in its place. Everything outside the regions is locked. In HTML parts the edit is
sanitized (a few formatting tags, https and mailto links, nothing else); in text parts (subject, SMS, plain
text) it is text. An edit is never a template: nothing in it is evaluated.
"""

from __future__ import annotations

import re
from typing import Any

import nh3
from jinja2 import Environment, nodes
from jinja2.ext import Extension
from jinja2.parser import Parser
from jinja2.runtime import Context
from markupsafe import Markup

REGION_NAME = re.compile(r"^[a-z][a-z0-9_\-]{0,63}$")
MAX_EDIT = 20_000
_TAGS = {"p", "br", "strong", "em", "b", "i", "u", "ul", "ol", "li", "a", "span"}
_ATTRIBUTES = {"a": {"href"}}


def sanitize_html(text: str) -> str:
    return nh3.clean(
        text,
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        url_schemes={"https", "mailto"},
        link_rel="noopener noreferrer",
    )


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
        edits = message.get("edits") if isinstance(message, dict) else None
        if isinstance(edits, dict) and isinstance(edits.get(name), str):
            text: str = edits[name]
            if context.eval_ctx.autoescape:
                return Markup(sanitize_html(text))  # noqa: S704 - cleaned by nh3 to a short list of tags
            return text
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
