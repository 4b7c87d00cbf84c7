"""Template rendering: the service's render path against a bare Jinja environment, same sources, same run.

The service path is what a send uses for each field: a published version through
TemplateEngine.render_field (sandbox, size and time guards, locale fallback, layouts and snippets at their
pinned versions, compiled once). The baseline is jinja2.Environment with the same filters, rendering the same
sources from a DictLoader. Target: at most 1.3x.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from jinja2 import DictLoader, Environment, StrictUndefined

from benchmarks.common import CUSTOMER, publish_starters, starter_database
from ccm.channels import Channel
from ccm.config import Settings
from ccm.db import Database
from ccm.templates_engine import service
from ccm.templates_engine.filters import FILTERS, LOCALE_VAR, TIMEZONE_VAR
from ccm.templates_engine.render import RenderContext

CASES = [
    ("annual_statement", Channel.print, "html"),
    ("payment_reminder", Channel.email, "html"),
    ("payment_reminder", Channel.sms, "body"),
]


def best_time(render: Callable[[], object], rounds: int, per_round: int) -> float:
    """Median over rounds of the mean time per render, after a warm-up."""
    for _ in range(20):
        render()
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(per_round):
            render()
        samples.append((time.perf_counter() - started) / per_round)
    return statistics.median(samples)


def run(*, quick: bool = False) -> None:
    """`quick` (for the test that keeps this benchmark working) measures too little to mean anything."""
    rounds, per_round = (1, 3) if quick else (7, 200)
    with tempfile.TemporaryDirectory() as directory:
        url = starter_database(Path(directory))
        database = Database(url)
        settings = Settings(database_url=url)
        engine = publish_starters(database, settings)

        sources: dict[str, str] = {}
        with database.read() as session:
            for key in ("letter", "brand_email", "legal_footer"):
                template = service.get_template(session, key=key)
                live = service.live_version(session, template)
                assert live is not None
                sources[key] = live.content["parts"]["body"]
            loaded = {}
            for key, _, _ in CASES:
                template = service.get_template(session, key=key)
                live = service.live_version(session, template)
                assert live is not None
                loaded[key] = service.loaded(session, template, live)
        bare_html = Environment(loader=DictLoader(sources), undefined=StrictUndefined, autoescape=True)
        # Plain text (SMS), as the service renders it: escaping HTML there would be wrong, not safer.
        bare_text = Environment(loader=DictLoader(sources), undefined=StrictUndefined, autoescape=False)  # noqa: S701
        for environment in (bare_html, bare_text):
            environment.filters.update(FILTERS)

        for key, channel, field in CASES:
            version = loaded[key]
            context = RenderContext(
                customer=CUSTOMER,
                data=version.content["sample_data"],
                message={"id": "m-1", "date": "2026-11-22", "unsubscribe_url": "u", "portal_url": "p"},
                locale="en-GB",
                timezone="Europe/London",
            )
            source = version.content["parts"][channel.value][field]
            template = (bare_html if field == "html" else bare_text).from_string(source)
            variables = {**context.variables(), LOCALE_VAR: "en-GB", TIMEZONE_VAR: "Europe/London"}

            engine.register(version)

            def service_render(version=version, channel=channel, field=field, context=context) -> object:
                return engine.render_field(version, channel, field, context)

            def bare_render(template=template, variables=variables) -> object:
                return template.render(variables)

            ours = best_time(service_render, rounds, per_round)
            theirs = best_time(bare_render, rounds, per_round)
            print(
                f"   {key} {channel.value}.{field}: service {ours * 1e6:8.1f} us,"
                f" bare Jinja {theirs * 1e6:8.1f} us, ratio {ours / theirs:.2f}x (target <= 1.3x)"
            )
        database.dispose()
