"""What every channel adapter promises: it delivers, or it raises a transient or a permanent delivery error.
It never returns False.

    DeliveryError
    ├── TransientDeliveryError   try again later (connection lost, 4xx, 429, 5xx from a provider)
    └── PermanentDeliveryError   will never work as is (invalid address, unsubscribed, 5xx from SMTP)
"""

from __future__ import annotations


class DeliveryError(Exception):
    """A delivery did not happen. The message is safe to log: it never holds a message body."""

    def __init__(self, message: str, *, provider_code: str | None = None) -> None:
        super().__init__(message)
        self.provider_code = provider_code


class TransientDeliveryError(DeliveryError):
    def __init__(
        self, message: str, *, provider_code: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, provider_code=provider_code)
        self.retry_after = retry_after  # seconds the provider asked us to wait, when it said


class PermanentDeliveryError(DeliveryError):
    pass
