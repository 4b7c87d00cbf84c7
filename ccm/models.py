"""Imports every domain's tables so Base.metadata (and Alembic) sees them all."""

from ccm.audit.models import AuditChainHead, AuditEvent
from ccm.auth.models import ApiKey
from ccm.customers.models import Consent, ConsentChange, Customer
from ccm.templates_engine.models import Template, TemplateDependency, TemplatePublication, TemplateVersion

__all__ = [
    "ApiKey",
    "AuditChainHead",
    "AuditEvent",
    "Consent",
    "ConsentChange",
    "Customer",
    "Template",
    "TemplateDependency",
    "TemplatePublication",
    "TemplateVersion",
]
