"""Settings: the one place that reads the environment (prefix CCM_)."""

from __future__ import annotations

import enum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import phonenumbers
from pydantic import AnyHttpUrl, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError


class SmtpSecurity(enum.StrEnum):
    none = "none"
    starttls = "starttls"
    ssl = "ssl"


Port = Annotated[int, Field(ge=1, le=65535)]


class Settings(BaseSettings):
    """Every setting ccm reads, validated at start-up; a bad value names its variable."""

    model_config = SettingsConfigDict(env_prefix="CCM_", extra="ignore", frozen=True)

    data_dir: Path = Path("./var")
    # repr=False: these URLs may carry passwords, and settings objects end up in logs and tracebacks.
    database_url: str | None = Field(
        default=None, repr=False, description="SQLAlchemy URL; unset means a SQLite file in the data dir."
    )
    broker_url: str | None = Field(
        default=None, repr=False, description="redis:// URL; unset means the embedded worker."
    )
    public_base_url: AnyHttpUrl = AnyHttpUrl("http://127.0.0.1:8000")
    secret_key: SecretStr | None = Field(
        default=None,
        description="Signs customers' links (unsubscribe, portal). Unset: made once and kept in the data "
        "dir; set the same value on every machine when scaled out.",
    )
    admin_api_key: SecretStr | None = Field(
        default=None, description="Optional bootstrap key with the admin role, for creating the first keys."
    )
    log_level: str = "INFO"
    max_request_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="Largest request body accepted (batch uploads excepted)."
    )
    api_docs: bool = Field(
        default=True,
        description="Serve the API reference at /docs and /openapi.json (no data, no key needed).",
    )

    render_output_limit: int = Field(
        default=2_000_000, ge=1000, description="Most characters one template part may render to."
    )
    render_time_limit: float = Field(
        default=2.0, gt=0, le=60, description="Most seconds one template part may take to render."
    )
    print_page_size: Literal["A4", "Letter"] = "A4"
    print_max_html: int = Field(
        default=400_000,
        ge=1000,
        description="Most characters of HTML one letter may have (PDFs are slow to lay out).",
    )
    print_time_limit: float = Field(
        default=30.0, gt=0, le=600, description="Most seconds one letter's PDF may take."
    )
    print_author: str = "ccm"
    print_pdf_variant: Literal["pdf/a-3b"] | None = Field(
        default=None, description="pdf/a-3b: letters as PDF/A-3b, for archiving."
    )

    brand_name: str = Field(
        default="ccm", max_length=100, description="Shown on the customer portal's pages."
    )
    worker_threads: int = Field(
        default=8, ge=1, le=64, description="Worker threads in `ccm serve` (embedded)."
    )
    worker_busy_threads: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Of the worker threads, how many may be working (rendering, recording) at once; the "
        "others may only wait on a provider. More only take turns at Python's GIL, and the API with them.",
    )
    delivery_processes: int = Field(
        default=3,
        ge=0,
        le=32,
        description="Embedded mode: processes beside `ccm serve` that render, send and record a batch's "
        "emails and SMS on the machine's other cores (0: all in the API process). Each waits part of its "
        "time (on the mail server's replies, the database's write lock, the disk), so one more than the "
        "cores keeps them busy: 3 sent a batch 14% faster than 2 on 2 cores (docs/benchmarks.md).",
    )
    send_concurrency: int = Field(
        default=4,
        ge=1,
        le=32,
        description="A batch's sends in flight at once per worker thread or delivery process, each on a "
        "connection of its own to the mail server or Twilio: while one waits for the server's reply, "
        "another is sent.",
    )
    retry_max_attempts: int = Field(
        default=8,
        ge=1,
        le=100,
        description="Attempts at a delivery before a transient failure becomes final.",
    )
    retry_base_seconds: float = Field(
        default=30.0, ge=0, le=3600, description="The first retry's wait; each later one waits twice as long."
    )
    retry_max_seconds: float = Field(
        default=3600.0, ge=0, le=86400, description="The longest wait between tries."
    )
    retry_max_age_hours: float = Field(
        default=24.0, gt=0, le=720, description="A delivery still failing this long after it was made fails."
    )
    relay_interval: float = Field(
        default=10.0, gt=0, le=3600, description="Seconds between the relay's looks for due or lost work."
    )
    relay_stale_seconds: float = Field(
        default=600.0, gt=0, le=86400, description="Queued work unfinished this long is queued again."
    )
    webhook_timeout: float = Field(
        default=10.0, gt=0, le=60, description="Seconds to wait for a webhook's answer."
    )
    webhook_max_attempts: int = Field(
        default=10, ge=1, le=100, description="Attempts at each webhook message."
    )
    sms_send_window: str = Field(
        default="08:00-21:00",
        pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]-(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$",
        description="When SMS may reach customers, in their own time zone; outside it they wait.",
    )
    frequency_caps: dict[str, str] = Field(
        default_factory=lambda: {"marketing": "3/7d"},
        description='At most N communications of a category per customer in a period: {"marketing": "3/7d"}.',
    )
    delivery_lease: int = Field(
        default=300, ge=10, le=3600, description="Seconds a worker holds a delivery it is sending."
    )
    portal_link_days: int = Field(
        default=30, ge=1, le=366, description="How long a customer's portal link stays valid, in days."
    )
    portal_notice_template: str = Field(
        default="portal_notice", description="The template telling a customer a document is in their portal."
    )
    sms_help_text: str = Field(
        default="Reply STOP to stop text messages, START to receive them again.",
        max_length=320,
        description="The answer to an inbound HELP.",
    )

    smtp_host: str | None = None
    smtp_port: Port = 25
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_security: SmtpSecurity = SmtpSecurity.none
    email_from: str = "ccm@localhost"

    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_from_number: str | None = None
    twilio_messaging_service_sid: str | None = None
    twilio_api_base: AnyHttpUrl | None = None
    sms_max_segments: int = Field(default=10, ge=1, le=50, description="Longest SMS sent, in segments.")

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        try:
            url = make_url(value)
        except ArgumentError as exc:
            raise ValueError("not a database URL (expected sqlite:///path or postgresql://...)") from exc
        backend = url.get_backend_name()
        if backend == "postgresql":
            # psycopg 3 is the driver we ship; a bare postgresql:// would ask for psycopg2.
            return url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        if backend == "sqlite":
            return value
        raise ValueError(f"unsupported database '{backend}': use sqlite or postgresql")

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("expected a redis:// or rediss:// URL")
        return value

    @field_validator("secret_key")
    @classmethod
    def _secret_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None
        if len(value.get_secret_value()) < 32:
            raise ValueError("too short: use at least 32 random characters")
        return value

    @field_validator("admin_api_key")
    @classmethod
    def _admin_api_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None
        if len(value.get_secret_value()) < 24:
            raise ValueError("too short: use at least 24 random characters")
        return value

    @field_validator("frequency_caps")
    @classmethod
    def _frequency_caps(cls, value: dict[str, str]) -> dict[str, str]:
        for category, cap in value.items():
            if category not in {"service", "marketing", "regulatory"}:
                raise ValueError(f"'{category}' is not a category: service, marketing or regulatory")
            parse_cap(cap)
        return value

    @field_validator("sms_send_window")
    @classmethod
    def _send_window(cls, value: str) -> str:
        start, end = value.split("-")
        if start >= end:
            raise ValueError("the window must start before it ends, within one day (such as 08:00-21:00)")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("expected DEBUG, INFO, WARNING or ERROR")
        return level

    @field_validator("twilio_account_sid")
    @classmethod
    def _account_sid(cls, value: str | None) -> str | None:
        if value and not (value.startswith("AC") and len(value) == 34):
            raise ValueError("a Twilio account SID starts with AC and has 34 characters")
        return value or None

    @field_validator("twilio_messaging_service_sid")
    @classmethod
    def _messaging_service_sid(cls, value: str | None) -> str | None:
        if value and not (value.startswith("MG") and len(value) == 34):
            raise ValueError("a Twilio messaging service SID starts with MG and has 34 characters")
        return value or None

    @field_validator("twilio_from_number")
    @classmethod
    def _from_number(cls, value: str | None) -> str | None:
        if not value:
            return None
        try:
            number = phonenumbers.parse(value, None)
        except phonenumbers.NumberParseException as exc:
            raise ValueError("expected a phone number in E.164 form, such as +447700900123") from exc
        if not phonenumbers.is_valid_number(number):
            raise ValueError("not a valid phone number")
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)

    @model_validator(mode="after")
    def _twilio_complete(self) -> Settings:
        given = {
            "CCM_TWILIO_ACCOUNT_SID": self.twilio_account_sid,
            "CCM_TWILIO_AUTH_TOKEN": self.twilio_auth_token,
        }
        if any(given.values()) and not all(given.values()):
            missing = ", ".join(name for name, value in given.items() if not value)
            raise ValueError(f"Twilio is half configured: {missing} is missing")
        if self.twilio_configured and not (self.twilio_from_number or self.twilio_messaging_service_sid):
            raise ValueError(
                "Twilio needs CCM_TWILIO_FROM_NUMBER or CCM_TWILIO_MESSAGING_SERVICE_SID to send from"
            )
        return self

    @property
    def twilio_configured(self) -> bool:
        return bool(self.twilio_account_sid and self.twilio_auth_token)

    @property
    def embedded(self) -> bool:
        """True when the queue runs inside `ccm serve` rather than on Redis."""
        return self.broker_url is None

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'ccm.db').resolve()}"


def parse_cap(cap: str) -> tuple[int, float]:
    """'3/7d' -> (3, seconds in 7 days); 'h' for hours."""
    count, _, period = cap.partition("/")
    if not (count.isdigit() and period[:-1].isdigit() and period[-1:] in {"h", "d"} and int(period[:-1]) > 0):
        raise ValueError(f"'{cap}' is not a cap such as 3/7d (3 in 7 days) or 1/12h")
    return int(count), int(period[:-1]) * (86400 if period.endswith("d") else 3600)


def redact_url(url: str) -> str:
    """The URL with any password replaced, fit for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class SettingsError(Exception):
    """A setting has a bad value; the message names each variable and what is wrong."""


def describe_validation_error(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"])
        name = f"CCM_{field.upper()}" if field else "settings"
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"{name}: {message}")
    return "\n".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Read the environment (plus explicit overrides); raise SettingsError naming each bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
