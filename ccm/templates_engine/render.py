"""Rendering template versions: locale fallback, layouts and snippets at their pinned versions, compiled once.

Every source has a content-addressed engine name, `<key>@<number>:<hash16>/<part>/<locale>` (`_` for the
default locale): a compiled template can never go stale, and Jinja's own cache is the per (version, locale,
part) cache.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jinja2 import TemplateNotFound, TemplateSyntaxError
from jinja2.exceptions import SecurityError, UndefinedError
from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.html import HTMLTree

from ccm.channels import Channel
from ccm.templates_engine import analysis
from ccm.templates_engine.filters import FILTERS, LOCALE_VAR, TIMEZONE_VAR, FilterInputError
from ccm.templates_engine.models import TemplateKind
from ccm.templates_engine.sandbox import RenderLimitError, TemplateEnvironment

DEFAULT_LOCALE_KEY = "_"

# The fields rendered for each channel, and whether each is HTML (autoescaped).
CHANNEL_FIELDS: dict[Channel, tuple[str, ...]] = {
    Channel.email: ("subject", "html", "text"),
    Channel.sms: ("body",),
    Channel.print: ("html",),
    Channel.portal: ("title", "html"),
}
SINGLE_LINE_FIELDS = {"subject", "title"}
_SMS_SPACES = str.maketrans({"\u00a0": " ", "\u202f": " ", "\u2009": " "})


@dataclass(frozen=True)
class LoadedVersion:
    """A version's content as the engine needs it. Immutable: an edited draft is another LoadedVersion."""

    key: str
    number: int
    kind: TemplateKind
    default_locale: str
    content: dict[str, Any]
    content_hash: str
    # key -> pinned version number; None while a draft, whose includes render with the live versions.
    pins: dict[str, int] | None

    @property
    def prefix(self) -> str:
        return f"{self.key}@{self.number}:{self.content_hash[:16]}"

    def parts_for(self, locale_key: str) -> dict[str, Any]:
        if locale_key == DEFAULT_LOCALE_KEY:
            parts: dict[str, Any] = self.content.get("parts", {})
            return parts
        variant: dict[str, Any] = self.content.get("locales", {}).get(locale_key, {})
        return variant

    def locale_key(self, locale: str | None, field_name: str) -> str:
        """The locale whose content serves `locale` for a part or `body`: fr-CA -> fr -> the default."""
        locales = self.content.get("locales", {})
        for candidate in _fallbacks(locale):
            if candidate in locales and field_name in locales[candidate]:
                return candidate
        return DEFAULT_LOCALE_KEY

    def letter_style(self, locale: str | None) -> tuple[str | None, str | None]:
        """The letter's CSS (for the locale whose print part serves `locale`) and its page size."""
        print_part = (
            self.parts_for(self.locale_key(locale, Channel.print.value)).get(Channel.print.value) or {}
        )
        page_size = (self.content.get("parts", {}).get(Channel.print.value) or {}).get("page_size")
        return print_part.get("css"), page_size

    def channels(self) -> list[Channel]:
        parts = self.content.get("parts", {})
        return [channel for channel in Channel if channel.value in parts]


def _fallbacks(locale: str | None) -> list[str]:
    if not locale:
        return []
    pieces = locale.split("-")
    return ["-".join(pieces[:n]) for n in range(len(pieces), 0, -1)]


@dataclass(frozen=True)
class RenderProblem:
    part: str  # "email.html", or "fr:email.html" for a translation
    line: int | None
    variable: str | None
    message: str
    path: str | None = None  # JSON pointer to the source in the version body


@dataclass
class RenderedChannel:
    channel: Channel
    locale: str  # the locale whose content was used: "fr", or the template's default locale
    fields: dict[str, str] = field(default_factory=dict)
    problems: list[RenderProblem] = field(default_factory=list)


@dataclass(frozen=True)
class RenderContext:
    customer: dict[str, Any]
    data: dict[str, Any]
    message: Mapping[str, Any]
    locale: str  # the customer's locale, for formatting: fr-CA formats money as in Canada
    timezone: str

    def variables(self) -> dict[str, Any]:
        return {
            "customer": self.customer,
            "data": self.data,
            "message": self.message,
            LOCALE_VAR: self.locale,
            TIMEZONE_VAR: self.timezone,
        }


VersionLoader = Callable[[str, int | None], LoadedVersion]


class TemplateEngine:
    """Renders versions. `load_version(key, number)` fetches a layout or snippet version from storage
    (number None: the live one); it is called only the first time a version is needed."""

    def __init__(
        self, *, load_version: VersionLoader, output_limit: int, time_limit: float, max_versions: int = 1000
    ) -> None:
        self._load_version = load_version
        self._versions: OrderedDict[str, LoadedVersion] = OrderedDict()
        self._pinned: dict[tuple[str, int], str] = {}
        self._resolved: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self._max_versions = max_versions
        self.environment = TemplateEnvironment(
            source_lookup=self._source,
            include_resolver=self._resolve_include,
            output_limit=output_limit,
            time_limit=time_limit,
        )
        self.environment.add_filters(FILTERS)
        # HTML2Text keeps its parsing state on the instance: one per thread, or concurrent renders mix texts.

    # --- the version registry -----------------------------------------------------------------------------

    def register(self, version: LoadedVersion) -> LoadedVersion:
        with self._lock:
            self._versions[version.prefix] = version
            self._versions.move_to_end(version.prefix)
            if version.pins is not None:
                self._pinned[(version.key, version.number)] = version.prefix
            while len(self._versions) > self._max_versions:
                _, evicted = self._versions.popitem(last=False)
                self._pinned.pop((evicted.key, evicted.number), None)
        return version

    def _registered(self, prefix: str) -> LoadedVersion:
        with self._lock:
            version = self._versions.get(prefix)
            if version is not None:
                self._versions.move_to_end(prefix)
                return version
        # Evicted (or never seen by this process): a name says which version and which content it is, so load
        # it again, and only if its content is still the one named.
        key, _, rest = prefix.partition("@")
        number, _, content_hash = rest.partition(":")
        if not number.isdigit():
            raise KeyError(prefix)
        try:
            loaded = self._load_version(key, int(number))
        except LookupError:
            raise KeyError(prefix) from None
        if not loaded.content_hash.startswith(content_hash):
            raise KeyError(prefix)  # a draft edited since this name was made
        return self.register(loaded)

    def _version_by_number(self, key: str, number: int | None) -> LoadedVersion:
        if number is not None:
            with self._lock:
                prefix = self._pinned.get((key, number))
                if prefix is not None and prefix in self._versions:
                    self._versions.move_to_end(prefix)
                    return self._versions[prefix]
        return self.register(self._load_version(key, number))

        # --- the loader side of Jinja ---------------------------------------------------------------------

    def _source(self, name: str) -> str:
        # The last segment is the locale asked for ("_": the default). Layouts and snippets get their
        # parent's and fall back from it on their own: a French email keeps a French footer through an
        # English layout.
        prefix, part, wanted = name.split("/")
        version = self._registered(prefix)
        channel, _, field_name = part.partition(".")
        content_field = "body" if channel == "body" else channel
        parts = version.parts_for(
            version.locale_key(None if wanted == DEFAULT_LOCALE_KEY else wanted, content_field)
        )
        source = parts.get("body") if channel == "body" else (parts.get(channel) or {}).get(field_name)
        if source is None:
            raise KeyError(name)
        return str(source)

    def _resolve_include(self, key: str, parent: str) -> str:
        resolved = self._resolved.get((key, parent))
        if resolved is not None:
            return resolved
        parent_prefix, parent_part, parent_locale = parent.split("/")
        parent_version = self._registered(parent_prefix)
        if parent_version.pins is None:
            number = None
        elif key in parent_version.pins:
            number = parent_version.pins[key]
        else:
            raise TemplateNotFound(
                key, message=f"'{key}' is not among the layouts and snippets this version uses"
            )
        try:
            child = self._version_by_number(key, number)
        except LookupError:
            raise TemplateNotFound(key, message=f"no published layout or snippet named '{key}'") from None
        if child.kind not in (TemplateKind.layout, TemplateKind.snippet):
            raise TemplateNotFound(key, message=f"'{key}' is a {child.kind.value}, not a layout or snippet")
        child_part = "body.html" if parent_part.endswith("html") else "body.txt"
        resolved = f"{child.prefix}/{child_part}/{parent_locale}"
        if parent_version.pins is not None:
            # A submitted version's pins never change, so neither does what its includes resolve to.
            # (A draft's includes follow the live versions, so they are resolved each time.)
            with self._lock:
                if len(self._resolved) > 20 * self._max_versions:
                    self._resolved.clear()
                self._resolved[(key, parent)] = resolved
        return resolved

    # --- rendering ----------------------------------------------------------------------------------------

    def engine_name(self, version: LoadedVersion, channel: Channel, field_name: str, locale_key: str) -> str:
        return f"{version.prefix}/{channel.value}.{field_name}/{locale_key}"

    def render_channel(
        self, version: LoadedVersion, channel: Channel, context: RenderContext
    ) -> RenderedChannel:
        """Render every field of one channel; each field's failure is recorded on its own."""
        self.register(version)
        locale_key = version.locale_key(context.locale, channel.value)
        parts = version.parts_for(locale_key)
        source = parts.get(channel.value)
        shown_locale = version.default_locale if locale_key == DEFAULT_LOCALE_KEY else locale_key
        result = RenderedChannel(channel=channel, locale=shown_locale)
        if source is None:
            result.problems.append(
                RenderProblem(channel.value, None, None, f"the template has no {channel} part")
            )
            return result
        variables = self._variables(version, locale_key, context)
        for field_name in CHANNEL_FIELDS[channel]:
            if source.get(field_name) is None:
                continue
            name = self.engine_name(version, channel, field_name, locale_key)
            try:
                text = self.environment.render(name, variables)
            except Exception as exc:  # noqa: BLE001 - every failure of a user's template becomes a problem report
                label = f"{channel.value}.{field_name}"
                where = "/parts"
                if locale_key != DEFAULT_LOCALE_KEY:
                    label, where = f"{locale_key}:{label}", f"/locales/{locale_key}"
                problem = self._problem(exc, label, name)
                result.problems.append(
                    dataclasses.replace(problem, path=f"{where}/{channel.value}/{field_name}")
                )
                continue
            if field_name in SINGLE_LINE_FIELDS:
                text = " ".join(text.split())
            if channel is Channel.sms:
                # Locale formats put no-break spaces in money and dates; GSM-7 has none, and one such
                # character would make the whole message UCS-2, halving what fits in a segment.
                text = text.translate(_SMS_SPACES)
            result.fields[field_name] = text
        if channel is Channel.email and "html" in result.fields and "text" not in source:
            result.fields["text"] = self._plain_text(result.fields["html"])
        return result

    def _plain_text(self, html: str) -> str:
        """The plain-text alternative of an email that gives only HTML: paragraphs and list bullets kept,
        each link's address after its text, no images, styles or scripts. (resiliparse, on the lexbor
        parser: about 30 us for a 2 kB email, where html2text took 450 us.)"""
        text = extract_plain_text(
            HTMLTree.parse(html), preserve_formatting=True, list_bullets=True, links=True, alt_texts=False
        )
        return str(text).strip() + "\n"

    def _variables(self, version: LoadedVersion, locale_key: str, context: RenderContext) -> dict[str, Any]:
        variables = context.variables()
        if locale_key == DEFAULT_LOCALE_KEY:
            # Content in the default language is formatted in it too: no English text with French dates.
            variables[LOCALE_VAR] = version.default_locale
        return variables

    def render_field(
        self, version: LoadedVersion, channel: Channel, field_name: str, context: RenderContext
    ) -> str:
        """One field of one channel, raw: the render path itself, without render_channel's reporting."""
        if version.prefix not in self._versions:  # a plain lookup: registering takes the lock
            self.register(version)
        locale_key = version.locale_key(context.locale, channel.value)
        name = self.engine_name(version, channel, field_name, locale_key)
        return self.environment.render(name, self._variables(version, locale_key, context))

    def warm(self, version: LoadedVersion) -> None:
        """Compile every part of every locale now, so that sending never compiles."""
        self.register(version)
        keys = [DEFAULT_LOCALE_KEY, *version.content.get("locales", {})]
        for locale_key in keys:
            parts = version.parts_for(locale_key)
            for channel in Channel:
                for field_name in CHANNEL_FIELDS[channel]:
                    if (parts.get(channel.value) or {}).get(field_name) is not None:
                        self._warm_name(self.engine_name(version, channel, field_name, locale_key), set())

    def _warm_name(self, name: str, seen: set[str]) -> None:
        """Compile a template and, through its includes, every layout and snippet it renders with."""
        if name in seen:
            return
        seen.add(name)
        self.environment.get_template(name)
        for reference, _ in analysis.references(self.environment.parse(self._source(name))):
            self._warm_name(self._resolve_include(reference, name), seen)

    def _problem(self, exc: Exception, part: str, name: str) -> RenderProblem:
        location = analysis.error_location(exc, {name})
        line = location[1] if location else getattr(exc, "lineno", None)
        failing_name = location[0] if location else name
        where = "" if failing_name == name else f" (in {failing_name.split('@')[0]})"
        if isinstance(exc, UndefinedError):
            tree = None
            try:
                tree = self.environment.parse(self._source(failing_name))
            except (KeyError, TemplateSyntaxError):
                tree = None
            variable = analysis.undefined_variable(str(exc), tree, line)
            message = f"{variable or 'a variable'} is not defined{where}"
            return RenderProblem(part, line, variable, message)
        if isinstance(exc, SecurityError):
            return RenderProblem(part, line, None, f"not allowed in a template: {exc}{where}")
        if isinstance(exc, RenderLimitError | FilterInputError | TemplateNotFound):
            return RenderProblem(
                part, line, None, f"{exc.message if isinstance(exc, TemplateNotFound) else exc}{where}"
            )
        return RenderProblem(part, line, None, f"{type(exc).__name__}: {exc}{where}")
