"""Printed letters: letters per second through ccm's print path, against bare WeasyPrint on the same HTML.

ccm's path is what each letter costs the service: the letter part of a published template rendered by the
template engine (`claim_decision` in its `letter` layout), laid out by `ccm.channels.print.render_pdf` (page
size, title, author, language, a fetcher that allows data: URLs only) and kept in the `ArtifactStore`
(hashed, written, fsynced, renamed). The floor is `weasyprint.HTML(string=...).write_pdf` on the same HTML
with the same stylesheet and a warm FontConfiguration: no template, no store. Both sides run one process per
core, each warmed once, with the same letters spread evenly over them, in the same run: each process lays out
each of its letters both ways, one right after the other, alternating which side goes first, and times each
side, so a slow spell on this shared machine falls on both. Every letter has its own claim number, so every
PDF differs and the store writes each one. Target: at least 0.85x.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import CUSTOMER, publish_starters, starter_database
from ccm.channels import Channel
from ccm.config import Settings
from ccm.db import Database
from ccm.templates_engine import service
from ccm.templates_engine.render import LoadedVersion, RenderContext, TemplateEngine

TEMPLATE = "claim_decision"
# A print.css as a template's author writes one; the same stylesheet goes to both sides.
PRINT_CSS = """
.subject { color: #0b3d91; }
.closing p { margin: 0 0 2mm; }
strong { font-weight: bold; }
"""


def letter_context(version: LoadedVersion, number: int) -> RenderContext:
    """Letter `number`: the template's sample data under a claim number of its own."""
    data = {**version.content["sample_data"], "claim_number": f"CLM-2026-{number:07d}"}
    return RenderContext(
        customer=CUSTOMER,
        data=data,
        message={"id": f"m-{number}", "date": "2026-11-22", "unsubscribe_url": "u", "portal_url": "p"},
        locale="en-GB",
        timezone="Europe/London",
    )


def render_letter(engine: TemplateEngine, version: LoadedVersion, number: int) -> tuple[str, str]:
    rendered = engine.render_channel(version, Channel.print, letter_context(version, number))
    assert not rendered.problems, rendered.problems
    return rendered.fields["html"], rendered.locale


def load_letter(database: Database) -> tuple[LoadedVersion, str]:
    with database.read() as session:
        template = service.get_template(session, key=TEMPLATE)
        live = service.live_version(session, template)
        assert live is not None
        return service.loaded(session, template, live), template.name


@dataclass
class Worker:
    """One process's state: ccm's engine and store, and the bare side's own warm FontConfiguration."""

    ccm_letter: Callable[[int], None]
    bare_letter: Callable[[str], None]
    all_ready: Any  # a multiprocessing Barrier for every process of the pool


_worker: Worker | None = None


def start_worker(url: str, store_root: str, warm: int, all_ready: Any) -> None:
    """Runs once in each process: set up both sides, then warm each with `warm` letters of its own."""
    global _worker
    from weasyprint import CSS, HTML
    from weasyprint.text.fonts import FontConfiguration

    from ccm.channels.artifacts import ArtifactStore
    from ccm.channels.print import render_pdf

    database = Database(url)
    settings = Settings(database_url=url)
    engine = service.make_engine(database, settings)
    version, title = load_letter(database)
    engine.register(version)
    store = ArtifactStore(Path(store_root))
    fonts = FontConfiguration()

    def ccm_letter(number: int) -> None:
        html, language = render_letter(engine, version, number)
        pdf = render_pdf(
            html, css=PRINT_CSS, page_size="A4", title=title, author=settings.print_author, language=language
        )
        store.put(pdf.content)

    def bare_letter(html: str) -> None:
        HTML(string=html).write_pdf(stylesheets=[CSS(string=PRINT_CSS, font_config=fonts)], font_config=fonts)

    # Numbers no timed letter uses, different in each process, so warming writes new artifacts too.
    for number in range(warm):
        warm_number = 9_000_000 + os.getpid() % 10_000 * 10 + number
        ccm_letter(warm_number)
        bare_letter(render_letter(engine, version, warm_number)[0])
    _worker = Worker(ccm_letter=ccm_letter, bare_letter=bare_letter, all_ready=all_ready)


def letter_pairs(pairs: list[tuple[int, str]]) -> tuple[float, float]:
    """Each letter both ways, one right after the other, the side that goes first alternating from letter to
    letter: seconds spent on ccm's path and on the bare one."""
    assert _worker is not None
    ours = theirs = 0.0
    for index, (number, html) in enumerate(pairs):
        for side in (0, 1) if index % 2 == 0 else (1, 0):
            started = time.perf_counter()
            if side == 0:
                _worker.ccm_letter(number)
                ours += time.perf_counter() - started
            else:
                _worker.bare_letter(html)
                theirs += time.perf_counter() - started
    return ours, theirs


def ready(_: int) -> int:
    """Returns once every process of the pool is set up and warm: one such task in each waits for the rest."""
    assert _worker is not None
    _worker.all_ready.wait(timeout=300)
    return os.getpid()


def run(*, quick: bool = False) -> None:
    """`quick` (for the test that keeps this benchmark working) measures too little to mean anything."""
    processes = os.cpu_count() or 1
    rounds, per_process, warm = (1, 1, 1) if quick else (12, 12, 3)
    per_round = per_process * processes
    with tempfile.TemporaryDirectory() as directory:
        url = starter_database(Path(directory))
        database = Database(url)
        try:
            settings = Settings(database_url=url)
            engine = publish_starters(database, settings)
            version, _ = load_letter(database)
            # The bare side lays out exactly the HTML ccm renders for the same letter.
            htmls = [render_letter(engine, version, number)[0] for number in range(rounds * per_round)]
        finally:
            database.dispose()

        # spawn: each process imports and sets up its own WeasyPrint and fonts, as a worker process would.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=processes,
            mp_context=context,
            initializer=start_worker,
            initargs=(url, str(Path(directory) / "artifacts"), warm, context.Barrier(processes)),
        ) as pool:
            assert len(set(pool.map(ready, range(processes)))) == processes
            ours: list[float] = []
            theirs: list[float] = []
            for index in range(rounds):
                numbers = range(index * per_round, (index + 1) * per_round)
                chunks = [[(n, htmls[n]) for n in numbers[p::processes]] for p in range(processes)]
                times = list(pool.map(letter_pairs, chunks))
                # Every process is busy throughout, so the pool's letters per second on one side is its
                # letters over its seconds in each process.
                ours.append(per_round / (sum(mine for mine, _ in times) / processes))
                theirs.append(per_round / (sum(floor for _, floor in times) / processes))

    ratios = [mine / floor for mine, floor in zip(ours, theirs, strict=True)]
    print(
        f"   {TEMPLATE} letter, {processes} processes, {rounds} rounds of {per_round} letters each way,"
        f" medians: ccm {statistics.median(ours):.1f} letters/s, bare WeasyPrint"
        f" {statistics.median(theirs):.1f} letters/s"
    )
    print(
        f"   ratio {statistics.median(ratios):.2f}x (median of the rounds' ratios, which ranged"
        f" {min(ratios):.2f}x-{max(ratios):.2f}x; target >= 0.85x)"
    )
