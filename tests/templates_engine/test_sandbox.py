"""The sandbox business users' templates run in (issue "Must show 2").

- Known Jinja template-injection / sandbox-escape payloads are refused with 422 problem JSON, at save
  (validation-error) or at preview (render-error), and run nothing: the ones that would reach a shell try to
  create a marker file, which must never appear, and no answer shows Python internals or file contents.
- Memory bombs stop at the output cap, quickly and without the process growing.
- An endless loop stops at the time limit while the same server keeps answering other requests.
- A render that timed out leaves its thread clean: the watchdog's asynchronous exception never lands later.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import resource
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from jinja2.exceptions import SecurityError

from ccm.app import create_app
from ccm.auth.models import Role
from ccm.config import Settings
from ccm.db import Database
from ccm.templates_engine.sandbox import OutputTooLarge, RenderLimitError, RenderTimedOut, TemplateEnvironment
from tests.conftest import bearer

PROBLEM_JSON = "application/problem+json"
VALIDATION_ERROR = "urn:ccm:problem:validation-error"
RENDER_ERROR = "urn:ccm:problem:render-error"

# Replaced in every payload by a shell command that creates a marker file under the test's tmp_path.
CMD = "@CMD@"

# What an answer would show if a payload had reached Python objects, a shell or a file.
LEAKS = (
    "<class '",
    "<module",
    "<function",
    "<built-in",
    "<bound method",
    "<method",
    "subprocess.",
    "/bin/sh",
    "root:x:0",
    "Traceback",
    "pwned",
)

SAMPLE_DATA: dict[str, Any] = {"k": "v", "l": [1, 2], "x": "layout"}

# A part that renders fine next to the attacked one: a failing part must not hide the others.
EMAIL_PART = {"subject": "Hello {{ customer.name }}", "html": "<p>Dear {{ customer.name }}</p>"}

U2 = "'_' * 2"  # a computed "__", which no static check can see

# (id, Jinja source, where it must be refused: "save", or "either" save or preview).
# "save": literal private names, literal or dynamic include/extends/import, syntax the sandbox lacks.
# "either": names computed at render time, str.format field access, mutation of the data; the sandbox
# refuses these at render time today, and a stricter save-time check would be welcome too.
INJECTIONS: list[tuple[str, str, str]] = [
    # --- the classic object-graph walks, with literal private names --------------------------------------
    ("mro_subclasses", "{{ ''.__class__.__mro__[1].__subclasses__() }}", "save"),
    ("base_subclasses", "{{ ''.__class__.__base__.__subclasses__() }}", "save"),
    (
        "subclasses_popen_loop",
        "{% for c in ''.__class__.__mro__[1].__subclasses__() %}{% if c.__name__ == 'Popen' %}"
        "{{ c('" + CMD + "', shell=True).communicate() }}{% endif %}{% endfor %}",
        "save",
    ),
    ("dict_base_subclasses", "{{ dict.__base__.__subclasses__() }}", "save"),
    ("cycler_globals_os", "{{ cycler.__init__.__globals__.os.popen('" + CMD + "').read() }}", "save"),
    ("joiner_globals_os", "{{ joiner.__init__.__globals__.os.popen('" + CMD + "').read() }}", "save"),
    ("lipsum_globals_os", "{{ lipsum.__globals__['os'].popen('" + CMD + "').read() }}", "save"),
    (
        "lipsum_builtins_import",
        "{{ lipsum.__globals__.__builtins__.__import__('os').system('" + CMD + "') }}",
        "save",
    ),
    ("namespace_globals_os", "{{ namespace.__init__.__globals__.os.system('" + CMD + "') }}", "save"),
    ("range_self_import", "{{ range.__self__.__import__('os').system('" + CMD + "') }}", "save"),
    ("range_self", "{{ range.__self__ }}", "save"),
    ("self_init", "{{ self.__init__ }}", "save"),
    (
        "self_init_globals_builtins",
        "{{ self.__init__.__globals__.__builtins__.__import__('os').popen('" + CMD + "').read() }}",
        "save",
    ),
    (
        "self_private_context",
        "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.system('" + CMD + "') }}",
        "save",
    ),
    (
        "config_globals_os",
        "{{ config.__class__.__init__.__globals__['os'].popen('" + CMD + "').read() }}",
        "save",
    ),
    (
        "request_application_globals",
        "{{ request.application.__globals__.__builtins__.__import__('os').popen('" + CMD + "').read() }}",
        "save",
    ),
    (
        "flask_helper_open_file",
        "{{ get_flashed_messages.__globals__.__builtins__.open('/etc/passwd').read() }}",
        "save",
    ),
    ("attr_literal", "{{ ''|attr('__class__')|attr('__mro__') }}", "save"),
    ("attr_hex_escaped", r"{{ ''|attr('\x5f\x5fclass\x5f\x5f') }}", "save"),
    ("getitem_literal", "{{ data['__class__']['__mro__'] }}", "save"),
    ("setitem_on_data", "{{ data.__setitem__('k', 'pwned') }}", "save"),
    ("do_extension", "{% do data.update({'k': 'pwned'}) %}", "save"),
    # --- reading files and other templates ----------------------------------------------------------------
    ("include_etc_passwd", "{% include '/etc/passwd' %}", "save"),
    ("include_traversal", "{% include '../../../../../../etc/passwd' %}", "save"),
    ("include_list", "{% include ['/etc/passwd', 'nothing'] %}", "save"),
    ("include_dynamic", "{% include data.x ~ '' %}", "save"),
    ("extends_dynamic", "{% extends data.x %}", "save"),
    ("import_missing", "{% import 'no_such_snippet' as y %}{{ y }}", "save"),
    ("from_import_missing", "{% from 'no_such_snippet' import m %}{{ m() }}", "save"),
    # --- names computed at render time ---------------------------------------------------------------------
    ("attr_computed", "{{ ''|attr(" + U2 + " ~ 'class' ~ " + U2 + ") }}", "either"),
    ("attr_joined", "{{ ''|attr(['_', '_', 'class', '_', '_']|join) }}", "either"),
    (
        "attr_computed_globals_os",
        "{% set u = " + U2 + " %}{{ (namespace|attr(u ~ 'init' ~ u)|attr(u ~ 'globals' ~ u))['os']"
        ".popen('" + CMD + "').read() }}",
        "either",
    ),
    ("getitem_computed", "{{ ''['_' ~ '_class__']['_' ~ '_mro__'] }}", "either"),
    ("getitem_computed_on_data", "{{ data[" + U2 + " ~ 'class' ~ " + U2 + "] }}", "either"),
    ("range_self_computed", "{{ range|attr(" + U2 + " ~ 'self' ~ " + U2 + ") }}", "either"),
    ("method_self_computed", "{{ data.items|attr(" + U2 + " ~ 'self' ~ " + U2 + ") }}", "either"),
    ("subclasses_computed", "{{ dict|attr(" + U2 + " ~ 'subclasses' ~ " + U2 + ")() }}", "either"),
    (
        "mro_loop_computed",
        "{% for c in (''|attr(" + U2 + " ~ 'class' ~ " + U2 + ")).mro() %}{{ c }}{% endfor %}",
        "either",
    ),
    ("selectattr_computed", "{{ [data]|selectattr(" + U2 + " ~ 'class' ~ " + U2 + ")|list }}", "either"),
    ("sum_attribute_computed", "{{ [data]|sum(attribute=" + U2 + " ~ 'class' ~ " + U2 + ") }}", "either"),
    # --- str.format and format_map field access (CVE-2016-10745, CVE-2019-10906, CVE-2024-56326, ...) --
    ("format_field", "{{ '{0.__class__}'.format(data) }}", "either"),
    ("format_field_mro", "{{ '{0.__class__.__mro__}'.format('') }}", "either"),
    ("format_globals_os", "{{ '{0.__init__.__globals__[os]}'.format(namespace) }}", "either"),
    ("format_map", "{{ '{x.__class__.__mro__}'.format_map({'x': data}) }}", "either"),
    ("format_stored_reference", "{% set f = '{0.__class__.__mro__}'.format %}{{ f(data) }}", "either"),
    ("format_map_stored_reference", "{% set f = '{x.__class__}'.format_map %}{{ f({'x': data}) }}", "either"),
    ("format_through_attr", "{{ ('{0.__class__}'|attr('format'))(data) }}", "either"),
    ("format_map_through_attr", "{{ ('{x.__class__}'|attr('format_map'))({'x': data}) }}", "either"),
    # --- the gadgets ccm removed, or never had --------------------------------------------------------------
    ("gadget_cycler", "{{ cycler(1, 2).next() }}", "either"),
    ("gadget_joiner", "{{ joiner(',')() }}", "either"),
    ("gadget_lipsum", "{{ lipsum(1) }}", "either"),
    ("gadget_config", "{{ config.items() }}", "either"),
    ("gadget_request", "{{ request.environ }}", "either"),
    # --- mutating the data (ImmutableSandboxedEnvironment) --------------------------------------------------
    ("dict_update", "{{ data.update({'k': 'pwned'}) }}", "either"),
    ("list_append", "{{ data.l.append('pwned') }}", "either"),
    ("dict_pop", "{% set x = data.pop('k') %}{{ x }}", "either"),
    ("dict_setdefault", "{{ data.setdefault('z', 'pwned') }}", "either"),
    ("dict_clear", "{{ data.clear() }}", "either"),
    ("customer_update", "{{ customer.update({'name': 'pwned'}) }}", "either"),
]


# --- helpers ------------------------------------------------------------------------------------------------


def create_template(client: TestClient, headers: dict[str, str], key: str) -> None:
    response = client.post("/v1/templates", json={"key": key, "name": key.title()}, headers=headers)
    assert response.status_code == 201, response.text


def save_version(
    client: TestClient,
    headers: dict[str, str],
    key: str,
    parts: dict[str, Any],
    sample_data: dict[str, Any] | None = None,
) -> Any:
    body = {"parts": parts, "sample_data": SAMPLE_DATA if sample_data is None else sample_data}
    return client.post(f"/v1/templates/{key}/versions", json=body, headers=headers)


def saved_template(client: TestClient, headers: dict[str, str], key: str, sms_body: str) -> None:
    create_template(client, headers, key)
    response = save_version(client, headers, key, {"sms": {"body": sms_body}})
    assert response.status_code == 201, response.text


def preview(client: TestClient, headers: dict[str, str], key: str) -> Any:
    return client.post(f"/v1/templates/{key}/preview", json={}, headers=headers)


def problem(response: Any, problem_type: str) -> dict[str, Any]:
    """The problem JSON of a 422 answer of the given type."""
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body: dict[str, Any] = response.json()
    assert body["type"] == problem_type, body
    assert body["status"] == 422
    assert isinstance(body["detail"], str)
    assert body["detail"]
    assert isinstance(body["errors"], list)
    assert body["errors"], body
    return body


def render_error(response: Any, part: str = "sms.body") -> dict[str, Any]:
    """The single render problem of `part` in a 422 render-error answer."""
    body = problem(response, RENDER_ERROR)
    [error] = body["errors"]
    assert set(error) == {"part", "line", "variable", "message", "path"}, error
    assert error["part"] == part
    assert error["path"] == "/parts/" + part.replace(".", "/")
    assert isinstance(error["message"], str)
    assert error["message"]
    assert part.split(".")[0] not in body["parts"], "a part that failed must not be shown as rendered"
    return error


def assert_no_leak(response: Any) -> None:
    for leak in LEAKS:
        assert leak not in response.text, f"{leak!r} in {response.text}"


@dataclass
class Memory:
    rss_growth_mb: float = 0.0
    traced_peak_mb: float = 0.0


@contextmanager
def memory_watch() -> Iterator[Memory]:
    """Peak memory while the block runs: growth of the process's peak RSS, and the peak of what Python
    allocated (tracemalloc). The RSS figure is the one operators see but only ever grows, so an earlier test
    that went high could hide a regression; the traced peak is reset here and catches one regardless."""
    memory = Memory()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    already_tracing = tracemalloc.is_tracing()
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        yield memory
    finally:
        memory.traced_peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
        if not already_tracing:
            tracemalloc.stop()
        memory.rss_growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024


@pytest.fixture
def author(role_keys: dict[Role, dict[str, str]]) -> dict[str, str]:
    return role_keys[Role.author]


@pytest.fixture
def limited_client(settings: Settings, database: Database) -> Iterator[TestClient]:
    """An app with a 0.5 s time limit and a 100,000-character output cap."""
    limited = settings.model_copy(update={"render_time_limit": 0.5, "render_output_limit": 100_000})
    with TestClient(create_app(limited, database=database), raise_server_exceptions=False) as test_client:
        yield test_client


def new_key(client: TestClient, admin: dict[str, str], role: Role) -> dict[str, str]:
    response = client.post(
        "/v1/keys", json={"name": f"sandbox {role.value}", "role": role.value}, headers=admin
    )
    assert response.status_code == 201, response.text
    return bearer(response.json()["key"])


# --- 1. injection payloads through the API ------------------------------------------------------------------


def test_payload_set_is_substantial() -> None:
    ids = [name for name, _, _ in INJECTIONS]
    assert len(ids) == len(set(ids))
    assert len(INJECTIONS) >= 20
    assert sum(CMD in source for _, source, _ in INJECTIONS) >= 10


@pytest.mark.parametrize(
    ("source", "stage"), [pytest.param(source, stage, id=name) for name, source, stage in INJECTIONS]
)
def test_injection_is_refused_and_runs_nothing(
    client: TestClient, author: dict[str, str], tmp_path: Path, source: str, stage: str
) -> None:
    marker = tmp_path / "pwned"
    source = source.replace(CMD, f"touch {marker}")
    create_template(client, author, "victim")

    saved = save_version(client, author, "victim", {"sms": {"body": source}, "email": EMAIL_PART})
    # Preview whatever was saved (the newest version), or learn that nothing was.
    response = preview(client, author, "victim")
    assert not marker.exists(), "the payload ran a shell command"
    assert_no_leak(response)

    if saved.status_code == 201:
        assert stage == "either", f"accepted at save: {saved.text}"
        error = render_error(response)
        assert error["line"] == 1
        # The harmless part next to it still rendered, and is in the answer.
        assert response.json()["parts"]["email"]["subject"] == "Hello Alex Sample"
    else:
        assert_no_leak(saved)
        body = problem(saved, VALIDATION_ERROR)
        errors = [e for e in body["errors"] if e.get("part") == "sms.body"]
        assert errors, body
        for error in errors:
            assert error["path"] == "/parts/sms/body"
            assert isinstance(error["line"], int)
            assert error["line"] >= 1
            assert isinstance(error["message"], str)
            assert error["message"]
        assert response.status_code == 422
        assert response.json()["type"] == RENDER_ERROR
        assert response.json()["detail"] == "template 'victim' has no version to preview yet"


def test_harmless_template_renders_with_the_same_setup(client: TestClient, author: dict[str, str]) -> None:
    """The control for the payload test: the same parts and data render when nothing is attacked."""
    create_template(client, author, "fine")
    saved = save_version(
        client, author, "fine", {"sms": {"body": "{{ data.k }} {{ data.l|join(',') }}"}, "email": EMAIL_PART}
    )
    assert saved.status_code == 201, saved.text
    response = preview(client, author, "fine")
    assert response.status_code == 200, response.text
    assert response.json()["parts"]["sms"]["body"] == "v 1,2"
    assert response.json()["parts"]["email"]["subject"] == "Hello Alex Sample"


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}", id="parentheses"),
        pytest.param("{{ " + "[" * 5000 + "]" * 5000 + " }}", id="lists"),
        pytest.param("{{ " + "not " * 4000 + "1 }}", id="nots"),
        pytest.param("{{ data" + ".a" * 5000 + " }}", id="attribute_chain"),
        pytest.param("{{ 1" + "|string" * 2800 + " }}", id="filter_chain"),
        pytest.param("{{ 1" + " + 1" * 4000 + " }}", id="addition_chain"),
    ],
)
def test_deeply_nested_expression_is_refused_with_422(
    client: TestClient, author: dict[str, str], source: str
) -> None:
    """Nesting deep enough to exhaust Python's recursion: a 422 like any unreadable template, not a 500."""
    create_template(client, author, "nested")
    response = save_version(client, author, "nested", {"sms": {"body": source}})
    body = problem(response, VALIDATION_ERROR)
    assert body["errors"][0]["part"] == "sms.body"


# --- mutation attempts, checked on the data object itself ------------------------------------------------


def environment(
    sources: dict[str, str], *, time_limit: float = 1.0, output_limit: int = 100_000
) -> TemplateEnvironment:
    return TemplateEnvironment(
        source_lookup=sources.__getitem__,
        include_resolver=lambda name, parent: name,
        output_limit=output_limit,
        time_limit=time_limit,
    )


MUTATIONS = [
    "{{ data.update({'k': 'pwned'}) }}",
    "{{ data.l.append('pwned') }}",
    "{{ data.l.extend(['pwned']) }}",
    "{{ data.l.insert(0, 'pwned') }}",
    "{{ data.l.sort(reverse=true) }}",
    "{% set x = data.pop('k') %}{{ x }}",
    "{{ data.popitem() }}",
    "{{ data.setdefault('z', 'pwned') }}",
    "{{ data.clear() }}",
    "{{ data.nested.s.add('pwned') }}",
    "{{ data.nested.s.discard(1) }}",
]


@pytest.mark.parametrize("source", MUTATIONS)
def test_data_cannot_be_mutated(source: str) -> None:
    env = environment({"t/sms.body/_": source})
    data: dict[str, Any] = {"k": "v", "l": [1, 2], "nested": {"s": {1}}}
    before = copy.deepcopy(data)
    with pytest.raises(SecurityError, match="unsafe"):
        env.render("t/sms.body/_", {"data": data})
    assert data == before


# --- 2. the output cap ------------------------------------------------------------------------------------

BOMBS = [
    pytest.param("{{ 'x' * 10**9 }}", id="str_times_1e9"),
    pytest.param("{{ [0] * 10**9 }}", id="list_times_1e9"),
    pytest.param("{{ 2 ** (10**9) }}", id="int_power"),
    pytest.param("{{ ((10**1000)**1000)**3 }}", id="int_power_chain"),
    pytest.param(
        "{% set ns = namespace(n=7) %}{% for i in range(64) %}{% set ns.n = ns.n * ns.n %}{% endfor %}"
        "{{ ns.n > 0 }}",
        id="int_squaring",
    ),
    pytest.param(
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
        "{{ ns.s }}",
        id="namespace_doubling_tilde",
    ),
    pytest.param(
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}"
        "{{ ns.s }}",
        id="namespace_doubling_plus",
    ),
    pytest.param("{{ ('x' * 1000000) ~ ('x' * 1000000) ~ ('x' * 1000000) }}", id="tilde_concat"),
    pytest.param("{{ range(100000)|join('x' * 1000) }}", id="join_filter"),
    pytest.param("{{ ('x' * 1000).join(['a'] * 100000) }}", id="str_join_method"),
    pytest.param("{{ 'x'|center(10**9) }}", id="center_filter"),
    pytest.param("{{ 'x'|indent(10**9, first=true) }}", id="indent_filter"),
    pytest.param("{{ 'x'.ljust(10**9) }}", id="ljust_method"),
    pytest.param("{{ ('a' * 1000)|replace('a', 'x' * 100000) }}", id="replace_filter"),
    pytest.param("{{ ('a' * 1000).replace('a', 'x' * 100000) }}", id="replace_method"),
    pytest.param("{{ '{:>1000000000}'.format(1) }}", id="str_format_width"),
    pytest.param("{{ '%1000000000d' % 1 }}", id="printf_width"),
    pytest.param("{{ '%-1000000000s'|format('x') }}", id="format_filter_width"),
    pytest.param("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", id="output_stream"),
    # Chunks each just under the default cap of 2,000,000: the output must be counted as it comes.
    pytest.param(
        "{% for i in range(100000) %}{{ 'x' * 1999999 }}{% endfor %}", id="output_stream_big_chunks"
    ),
]


@pytest.mark.parametrize("source", BOMBS)
def test_memory_bomb_stops_at_the_output_cap(
    client: TestClient, author: dict[str, str], settings: Settings, source: str
) -> None:
    saved_template(client, author, "bomb", source)
    with memory_watch() as memory:
        started = time.monotonic()
        response = preview(client, author, "bomb")
        elapsed = time.monotonic() - started
    error = render_error(response)
    assert f"output limit of {settings.render_output_limit} characters" in error["message"], error
    assert elapsed < 5, f"{elapsed:.1f}s: the bomb was built before it was refused"
    assert memory.rss_growth_mb < 500, f"the process grew by {memory.rss_growth_mb:.0f} MB"
    assert memory.traced_peak_mb < 100, f"Python allocated {memory.traced_peak_mb:.0f} MB"
    assert_no_leak(response)
    # ... and the server still renders.
    saved_template(client, author, "after", "{{ 'ab' * 3 }}")
    assert preview(client, author, "after").json()["parts"]["sms"]["body"] == "ababab"


def test_output_cap_is_exact(limited_client: TestClient, admin: dict[str, str]) -> None:
    """The cap refuses what goes over it, and nothing less: 100,000 characters render, 100,001 do not."""
    author = new_key(limited_client, admin, Role.author)
    saved_template(limited_client, author, "at_cap", "{{ 'x' * 100000 }}")
    saved_template(limited_client, author, "over_cap", "{{ 'x' * 100000 }}!")
    at_cap = preview(limited_client, author, "at_cap")
    assert at_cap.status_code == 200, at_cap.text[:500]
    assert at_cap.json()["parts"]["sms"]["body"] == "x" * 100_000
    error = render_error(preview(limited_client, author, "over_cap"))
    assert "output limit of 100000 characters" in error["message"]


# Bombs that cheap checks could miss: each would build 50 to 100 MB (hundreds of times the cap of the
# environment below) before being refused; the same templates with bigger numbers build gigabytes.
BUILT_BOMBS = [
    pytest.param("{{ '%(n)100000000d' % {'n': 1} }}", id="printf_width_after_mapping_key"),
    pytest.param("{{ '%(n)100000000d'|format(n=1) }}", id="format_filter_width_after_mapping_key"),
    pytest.param("{{ '%*d' % (100000000, 1) }}", id="printf_star_width"),
    pytest.param("{{ '{0:>{1}}'.format(1, '100000000') }}", id="str_format_nested_width_as_string"),
    pytest.param("{{ ('\t' * 1000).expandtabs(100000) }}", id="expandtabs"),
    pytest.param("{{ ('\n' * 1000)|indent(100000, blank=true) }}", id="indent_many_lines"),
    pytest.param("{{ (['x' * 100000] * 1000)|join }}", id="join_of_repeated_list"),
    pytest.param("{{ ['x' * 100000] * 1000 }}", id="printing_a_repeated_list"),
    pytest.param("{{ [[1] * 500]|tojson(indent=99999) }}", id="tojson_indent"),
    pytest.param("{{ ([[1, 2, 3]] * 500)|tojson(indent=99999) }}", id="tojson_indent_repeated"),
    pytest.param("{% set s = 'x' * 99990 %}{{ [[[s]]] * 500 }}", id="printing_nested_list"),
    pytest.param("{% set s = 'x' * 99990 %}{{ ([[[s]]] * 500)|join }}", id="join_nested_list"),
    pytest.param("{% set s = 'x' * 99990 %}{{ ([[[s]]] * 500) ~ '' }}", id="concat_nested_list"),
]


@pytest.mark.parametrize("source", BUILT_BOMBS)
def test_bomb_is_refused_before_it_is_built(source: str) -> None:
    env = environment({"t/sms.body/_": source}, time_limit=10)
    with memory_watch() as memory, pytest.raises(RenderLimitError):
        env.render("t/sms.body/_", {})
    assert memory.traced_peak_mb < 20, f"built {memory.traced_peak_mb:.0f} MB before refusing"
    assert memory.rss_growth_mb < 20


# --- 3. the time limit, while the server keeps answering ------------------------------------------------

ENDLESS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


def test_endless_loop_stops_at_the_time_limit_while_the_server_answers(
    limited_client: TestClient, admin: dict[str, str]
) -> None:
    author = new_key(limited_client, admin, Role.author)
    saved_template(limited_client, author, "endless", ENDLESS)
    saved_template(limited_client, author, "after", "{{ 1 + 1 }}")

    outcome: dict[str, Any] = {}

    def run_preview() -> None:
        outcome["started"] = time.monotonic()
        try:
            outcome["response"] = preview(limited_client, author, "endless")
        finally:
            outcome["ended"] = time.monotonic()

    calls: list[tuple[str, float, float, int]] = []  # (path, started, took, status)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    renderer = threading.Thread(target=run_preview, name="endless-preview")
    renderer.start()
    give_up = time.monotonic() + 15
    while renderer.is_alive() and time.monotonic() < give_up:
        for path, headers in (("/health", {}), ("/v1/me", admin)):
            started = time.monotonic()
            status = limited_client.get(path, headers=headers).status_code
            calls.append((path, started, time.monotonic() - started, status))
    renderer.join(timeout=5)
    assert not renderer.is_alive(), "the render did not stop"

    elapsed = outcome["ended"] - outcome["started"]
    error = render_error(outcome["response"])
    assert "0.5s time limit" in error["message"], error
    assert 0.5 <= elapsed < 10, f"{elapsed:.2f}s"
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024 < 500

    during = [c for c in calls if outcome["started"] <= c[1] and c[1] + c[2] <= outcome["ended"]]
    for path in ("/health", "/v1/me"):
        assert sum(c[0] == path for c in during) >= 2, f"too few {path} calls during the render: {calls}"
    assert all(status == 200 for _, _, _, status in calls), calls
    slowest = max(calls, key=lambda c: c[2])
    assert slowest[2] < 1, f"{slowest[0]} took {slowest[2]:.2f}s while the render ran"

    # The server renders normally afterwards, on whichever worker thread (the timed-out one included).
    for _ in range(20):
        response = preview(limited_client, author, "after")
        assert response.status_code == 200, response.text
        assert response.json()["parts"]["sms"]["body"] == "2"


# --- 4. the watchdog, at the environment level -----------------------------------------------------------

SOURCES = {
    # 10**8 steps, some 20 s of work: a watchdog that stops firing fails these tests instead of hanging them.
    "endless/sms.body/_": "{% for i in range(100000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}",
    "sum/sms.body/_": "{{ 1 + 1 }}",
    # About 0.4 s and 15 ms of pure template work.
    "busy/sms.body/_": "{% for i in range(100000) %}{% for j in range(20) %}{% endfor %}{% endfor %}done",
    "edge/sms.body/_": "{% for i in range(400) %}{% for j in range(1000) %}{% endfor %}{% endfor %}done",
}


def run_in_thread(function: Callable[[], None]) -> None:
    """Run `function` in a fresh thread and re-raise whatever it raised, BaseExceptions included."""
    failures: list[BaseException] = []

    def target() -> None:
        try:
            function()
        except BaseException as exc:  # noqa: BLE001 - a stray async exception is exactly what is looked for
            failures.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    if failures:
        raise failures[0]


def render_after_timeouts() -> None:
    env = environment(SOURCES, time_limit=0.2)
    for _ in range(3):
        started = time.monotonic()
        with pytest.raises(RenderTimedOut, match=r"0\.2s time limit"):
            env.render("endless/sms.body/_", {})
        assert time.monotonic() - started < 2
        for _ in range(50):
            assert env.render("sum/sms.body/_", {}) == "2"
        # A pending interrupt would land in any of these: a sleep, then plain Python work.
        time.sleep(0.3)
        assert sum(i for i in range(200_000)) == 19_999_900_000
    env.time_limit = 5
    assert env.render("busy/sms.body/_", {}) == "done"


@pytest.mark.parametrize("where", ["main_thread", "other_thread"])
def test_timed_out_render_leaves_its_thread_clean(where: str) -> None:
    if where == "main_thread":
        render_after_timeouts()
    else:
        run_in_thread(render_after_timeouts)


def test_renders_that_end_right_at_the_deadline_leave_no_stray_interrupt() -> None:
    """Renders lasting about as long as the limit, so that the watchdog fires on either side of their end:
    each one ends or times out, and nothing else happens, then or later."""

    def race() -> None:
        env = environment(SOURCES, time_limit=5)
        durations = []
        for _ in range(11):
            started = time.monotonic()
            assert env.render("edge/sms.body/_", {}) == "done"
            durations.append(time.monotonic() - started)
        typical = sorted(durations)[5]
        outcomes: Counter[str] = Counter()
        give_up = time.monotonic() + 5
        step = 0
        while min(outcomes["done"], outcomes["timed out"]) < 10 and time.monotonic() < give_up:
            # Limits from a fifth of the render's length to one and a half times it: the watchdog fires
            # before, during and after the render's last steps.
            env.time_limit = typical * (0.2 + 1.3 * (step % 50) / 50)
            step += 1
            try:
                outcomes[env.render("edge/sms.body/_", {})] += 1
            except RenderTimedOut:
                outcomes["timed out"] += 1
            assert env.render("sum/sms.body/_", {}) == "2"  # ... with the same short limit
        assert outcomes["done"], outcomes
        assert outcomes["timed out"], outcomes
        time.sleep(0.2)
        assert sum(i for i in range(200_000)) == 19_999_900_000

    run_in_thread(race)


def test_timeout_in_one_thread_does_not_touch_another() -> None:
    """The watchdog interrupts the thread that ran over, and not a render running next to it."""
    slow = environment(SOURCES, time_limit=5)
    quick = environment(SOURCES, time_limit=0.1)
    results: dict[str, str] = {}

    def long_render() -> None:
        text = ""
        for _ in range(3):
            text = slow.render("busy/sms.body/_", {})
        results["slow"] = text

    def timeouts() -> None:
        for _ in range(5):
            with pytest.raises(RenderTimedOut):
                quick.render("endless/sms.body/_", {})
        results["quick"] = "timed out"

    threads = [threading.Thread(target=run_in_thread, args=(f,)) for f in (long_render, timeouts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == {"slow": "done", "quick": "timed out"}


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("{{ ((10**1000)**1000)**3 > 0 }}", id="power"),
        pytest.param(
            "{% set ns = namespace(n=7) %}{% for i in range(64) %}{% set ns.n = ns.n * ns.n %}{% endfor %}x",
            id="squaring",
        ),
    ],
)
def test_big_integer_arithmetic_is_stopped_by_the_limits(source: str) -> None:
    """Big integers are computed in C holding the GIL, where no watchdog can interrupt them: unchecked,
    ((10**1000)**1000)**3 takes about a second during which no other thread runs (**100: minutes)."""
    env = environment({"pow/sms.body/_": source}, time_limit=0.3)
    ticks: list[float] = []
    done = threading.Event()

    def tick() -> None:
        while not done.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.01)

    ticker = threading.Thread(target=tick)
    ticker.start()
    started = time.monotonic()
    try:
        with contextlib.suppress(RenderLimitError):
            env.render("pow/sms.body/_", {})
        elapsed = time.monotonic() - started
    finally:
        done.set()
        ticker.join()
    # The longest time in which the ticking thread could not run (ticks come every 10 ms when it can).
    stall = max(b - a for a, b in itertools.pairwise(sorted([started, started + elapsed, *ticks])))
    assert elapsed < 0.8, f"the render took {elapsed:.2f}s with a 0.3s limit"
    assert stall < 0.5, f"other threads stalled for {stall:.2f}s"


def test_output_cap_at_the_environment_level() -> None:
    env = environment({"big/sms.body/_": "{{ 'x' * 10**9 }}", "ok/sms.body/_": "{{ 'x' * 100000 }}"})
    with memory_watch() as memory, pytest.raises(OutputTooLarge, match="output limit of 100000 characters"):
        env.render("big/sms.body/_", {})
    assert memory.traced_peak_mb < 20
    assert env.render("ok/sms.body/_", {}) == "x" * 100_000
