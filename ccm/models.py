"""Imports every domain's tables so Base.metadata (and Alembic) sees them all."""

from ccm.audit.models import AuditChainHead, AuditEvent
from ccm.auth.models import ApiKey
from ccm.channels.models import PortalDocument, PortalMessage, PrintBatch, ProviderCallback
from ccm.communications.models import (
    Batch,
    BatchError,
    Communication,
    Delivery,
    IdempotencyKey,
    WebhookAttempt,
    WebhookEndpoint,
    WebhookMessage,
)
from ccm.customers.models import Consent, ConsentChange, Customer
from ccm.templates_engine.models import Template, TemplateDependency, TemplatePublication, TemplateVersion
from ccm.workflows.models import Task

__all__ = [
    "ApiKey",
    "AuditChainHead",
    "AuditEvent",
    "Batch",
    "BatchError",
    "Communication",
    "Consent",
    "ConsentChange",
    "Customer",
    "Delivery",
    "IdempotencyKey",
    "PortalDocument",
    "PortalMessage",
    "PrintBatch",
    "ProviderCallback",
    "Task",
    "Template",
    "TemplateDependency",
    "TemplatePublication",
    "TemplateVersion",
    "WebhookAttempt",
    "WebhookEndpoint",
    "WebhookMessage",
]
