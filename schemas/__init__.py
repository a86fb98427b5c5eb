"""Argus contracts: events, dead letters and alerts, and validation of raw bytes."""

from argus.schemas.models import (
    EVENT_MODELS,
    EVENT_TYPES,
    SCHEMA_VERSION,
    AccountEvent,
    Alert,
    AlertReason,
    ChatEvent,
    ClickEvent,
    DeadLetter,
    Event,
    EventBase,
    ModerationEvent,
    PaymentEvent,
)
from argus.schemas.validate import Rejection, validate, validate_batch

__all__ = [
    "EVENT_MODELS",
    "EVENT_TYPES",
    "SCHEMA_VERSION",
    "AccountEvent",
    "Alert",
    "AlertReason",
    "ChatEvent",
    "ClickEvent",
    "DeadLetter",
    "Event",
    "EventBase",
    "ModerationEvent",
    "PaymentEvent",
    "Rejection",
    "validate",
    "validate_batch",
]
