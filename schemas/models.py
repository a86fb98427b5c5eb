"""Pydantic models of the event, dead-letter and alert contracts (schema version 1).

The JSON Schema files in ``schemas/json/`` are the published source of truth for other
teams; ``tests/test_schemas.py`` checks that these models and those files agree, and
``argus schemas export`` rewrites the files after a deliberate change.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1

EventType = Literal["chat", "click", "payment", "account", "moderation"]
EVENT_TYPES: tuple[str, ...] = ("chat", "click", "payment", "account", "moderation")

# Control characters are refused in every string of the contract: in ids they forge log lines and
# Kafka keys, in text they drive terminals (ANSI escapes) and truncate C strings (NUL). Free text
# keeps tab, line feed and carriage return.
NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"
TEXT_CONTROLS = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
Identifier = Annotated[str, Field(min_length=1, max_length=128, pattern=NO_CONTROL)]
Fingerprint = Annotated[str, Field(pattern=r"^[0-9a-f]{8,64}$", description="hex digest")]


class _Strict(BaseModel):
    # strict: "5" is not an int and 1 is not a string; wrong types are rejected, not coerced.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class EventBase(_Strict):
    """The envelope every event carries. Kafka key = ``user_id``."""

    event_id: Identifier = Field(description="unique; the idempotency key")
    ts: datetime = Field(description="event time, RFC 3339, UTC")
    user_id: Identifier = Field(description="the subject of the event")
    session_id: Identifier | None = None
    context: Identifier = Field(description="channel (chat), page (click), merchant (payment)")
    schema_version: Literal[1] = 1


class ChatEvent(EventBase):
    event_type: Literal["chat"] = "chat"
    text: str = Field(min_length=1, max_length=2000, pattern=TEXT_CONTROLS)
    channel_mode: Literal["anarchy", "democracy"] | None = Field(
        default=None, description="input mode of a plays-style channel at the time, if it has one"
    )
    reply_to: Identifier | None = Field(default=None, description="event_id answered")


class ClickEvent(EventBase):
    event_type: Literal["click"] = "click"
    action: Literal["view", "click", "search", "add_to_cart"]
    item_id: Identifier | None = None
    duration_ms: int | None = Field(default=None, ge=0, le=86_400_000)


class PaymentEvent(EventBase):
    event_type: Literal["payment"] = "payment"
    action: Literal["purchase", "transfer", "refund", "chargeback"]
    amount: float = Field(ge=0, le=10_000_000, description="in currency units")
    currency: str = Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code")
    instrument_id: Fingerprint = Field(description="hashed card or wallet")
    status: Literal["approved", "declined"]
    decline_reason: str | None = Field(default=None, max_length=64, pattern=NO_CONTROL)
    counterparty_id: Identifier | None = Field(default=None, description="payee of a transfer")


class AccountEvent(EventBase):
    event_type: Literal["account"] = "account"
    action: Literal["signup", "login", "rename", "ban", "unban"]
    username: str = Field(min_length=1, max_length=64, pattern=NO_CONTROL)
    previous_username: str | None = Field(default=None, max_length=64, pattern=NO_CONTROL)
    device_fp: Fingerprint | None = None
    network_fp: Fingerprint | None = None
    reason: str | None = Field(default=None, max_length=256, pattern=TEXT_CONTROLS)


class ModerationEvent(EventBase):
    """A report, sanction or label about ``user_id`` (the subject), made by ``actor_id``."""

    event_type: Literal["moderation"] = "moderation"
    action: Literal["report", "warn", "timeout", "ban", "label"]
    actor_id: Identifier
    label: Literal["troll", "spam", "harassment", "fraud", "chargeback", "ban_evasion"] | None = None
    reason: str | None = Field(default=None, max_length=256, pattern=TEXT_CONTROLS)


Event = Annotated[
    ChatEvent | ClickEvent | PaymentEvent | AccountEvent | ModerationEvent,
    Field(discriminator="event_type"),
]
EVENT_MODELS: dict[str, type[EventBase]] = {
    "chat": ChatEvent,
    "click": ClickEvent,
    "payment": PaymentEvent,
    "account": AccountEvent,
    "moderation": ModerationEvent,
}


class DeadLetter(_Strict):
    """A record that failed validation, kept whole so it can be replayed after a fix."""

    original_b64: str = Field(description="the original bytes, base64")
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    reason_code: str
    reason: str
    rejected_at: datetime
    schema_version: Literal[1] = 1


class AlertReason(_Strict):
    feature: str
    value: float
    norm: float | None = Field(default=None, description="the context's typical value")
    text: str


class Alert(_Strict):
    """A detector's finding. ``alert_id`` is a function of detector, subject and window."""

    alert_id: Identifier
    kind: Literal["troll", "evader", "fraud", "churn", "raid"]
    user_id: Identifier
    score: float = Field(ge=0, le=1)
    severity: Literal["low", "medium", "high", "critical"]
    reasons: list[AlertReason]
    model_version: str
    window_start: datetime
    window_end: datetime
    evidence_event_ids: list[Identifier] = Field(default_factory=list)
    members: list[Identifier] = Field(default_factory=list, description="group alerts only")
    schema_version: Literal[1] = 1


PUBLISHED_MODELS: dict[str, type[BaseModel]] = {
    **{f"{name}_event": model for name, model in EVENT_MODELS.items()},
    "dead_letter": DeadLetter,
    "alert": Alert,
}
