"""Every table, imported in one place so Alembic and tests see the whole schema."""

from wanotify.auth.models import ApiKey, Profile
from wanotify.cloud.models import CloudAccount
from wanotify.db.audit import AuditLog
from wanotify.db.base import Base
from wanotify.messages.models import OptOut, WhatsAppMessage
from wanotify.notifications.models import Notification
from wanotify.orgs.models import Organization
from wanotify.pacing.models import SendingPolicy
from wanotify.sessions.models import Instance, SessionCommand, WhatsAppSession
from wanotify.templates.models import WhatsAppTemplate
from wanotify.webhooks.models import WebhookDelivery, WebhookEndpoint

__all__ = [
    "ApiKey",
    "AuditLog",
    "Base",
    "CloudAccount",
    "Instance",
    "Notification",
    "OptOut",
    "Organization",
    "Profile",
    "SendingPolicy",
    "SessionCommand",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WhatsAppMessage",
    "WhatsAppSession",
    "WhatsAppTemplate",
]
