"""create_app(): every router, the error handlers, and the lifespan (which runs the embedded worker)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from sqlalchemy.exc import SQLAlchemyError

import ccm
from ccm import problems
from ccm.audit.router import router as audit_router
from ccm.auth.router import router as keys_router
from ccm.channels.router import router as print_router
from ccm.channels.webhooks import router as twilio_router
from ccm.communications.router import router as communications_router
from ccm.communications.tasks import RelayLoop, Runtime
from ccm.config import Settings, get_settings
from ccm.customers.router import router as customers_router
from ccm.customers.unsubscribe import router as unsubscribe_router
from ccm.db import Database
from ccm.health import router as health_router
from ccm.middleware import RequestContextMiddleware, RequestGuard
from ccm.templates_engine.render import TemplateEngine
from ccm.templates_engine.router import router as templates_router
from ccm.templates_engine.service import make_engine, warm_live_versions
from ccm.web.portal import router as portal_router
from ccm.worker import EmbeddedWorker, configure_broker
from ccm.workflows.router import router as workflows_router

log = logging.getLogger(__name__)


def _warm_templates(database: Database, engine: TemplateEngine) -> None:
    try:
        count = warm_live_versions(database, engine)
    except SQLAlchemyError:
        # No schema yet (`ccm db upgrade` not run): /ready says so; nothing to warm.
        log.warning("templates not compiled at start: the database is not ready")
        return
    log.info("compiled %d live template versions", count)


def create_app(
    settings: Settings | None = None, *, database: Database | None = None, start_processes: bool = False
) -> FastAPI:
    """`start_processes`: start the delivery processes (embedded mode) with the app, as `ccm serve` does,
    rather than when the first batch arrives."""
    settings = settings or get_settings()
    database = database or Database(settings.resolved_database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(_warm_templates, database, app.state.engine)
        # Scaled out, this process only hands work to Redis; embedded, it also runs the worker and the relay.
        broker = configure_broker(settings)
        app.state.runtime = Runtime(
            database=database,
            settings=settings,
            engine=app.state.engine,
            broker=broker,
            threads=settings.worker_threads,
        )
        worker = relay = None
        if settings.embedded:
            worker = EmbeddedWorker(broker, threads=settings.worker_threads)
            worker.start()
            relay = RelayLoop(app.state.runtime.pipeline(), settings.relay_interval)
            relay.start()
        try:
            if start_processes:
                await anyio.to_thread.run_sync(app.state.runtime.start_processes)
            yield
        finally:
            if relay is not None:
                relay.stop()
            if worker is not None:
                worker.stop()
            app.state.runtime.close()
            database.dispose()

    app = FastAPI(
        title="ccm",
        version=ccm.__version__,
        summary="Customer communication management",
        lifespan=lifespan,
        docs_url="/docs" if settings.api_docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.api_docs else None,
    )
    app.state.settings = settings
    app.state.database = database
    app.state.engine = make_engine(database, settings)
    app.add_middleware(RequestGuard, max_body_bytes=settings.max_request_bytes)
    app.add_middleware(RequestContextMiddleware)  # added last, so it runs first and wraps the guard
    problems.install(app)

    app.include_router(health_router)
    app.include_router(keys_router)
    app.include_router(customers_router)
    app.include_router(templates_router)
    app.include_router(workflows_router)
    app.include_router(communications_router)
    app.include_router(unsubscribe_router)
    app.include_router(twilio_router)
    app.include_router(print_router)
    app.include_router(portal_router)
    app.include_router(audit_router)
    return app
