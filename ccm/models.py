"""Imports every domain's tables so Base.metadata (and Alembic) sees them all."""

from ccm.audit.models import AuditChainHead, AuditEvent
from ccm.auth.models import ApiKey
from ccm.channels.models import PortalDocument, PortalMessage, PrintBatch, ProviderCallback
from ccm.communications.models import Communication, Delivery
from ccm.customers.models import Consent, ConsentChange, Customer
from ccm.templates_engine.models import Template, TemplateDependency, TemplatePublication, TemplateVersion

__all__ = [
    "ApiKey",
    "AuditChainHead",
    "AuditEvent",
    "Communication",
    "Consent",
    "ConsentChange",
    "Customer",
    "Delivery",
    "PortalDocument",
    "PortalMessage",
    "PrintBatch",
    "ProviderCallback",
    "Template",
    "TemplateDependency",
    "TemplatePublication",
    "TemplateVersion",
]
