"""The one Jinja environment business users' templates run in: sandboxed, strict, and bounded.

Jinja's sandbox blocks unsafe attribute access but bounds neither time nor memory, so this module adds:

- size checks where big values are made: `*`, `**`, `%`, `+` and `~`, calls with huge numeric arguments, and
  results of calls and filters (each refused above the output cap before or right after it is built);
- an output cap on what a render writes;
- a time limit: a watchdog thread raises RenderTimeout inside a render that runs past its deadline.

Errors a render can raise, all subclasses of RenderLimitError or Jinja's own:

    RenderLimitError            a limit was hit (output size, time)
    ├── OutputTooLarge
    └── RenderTimedOut
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import string
import threading
import time
from collections.abc import Callable, Iterator, Sized
from typing import Any

from jinja2 import BaseLoader, StrictUndefined, Template, TemplateNotFound, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

# A template names another template in its source by key; the engine turns that into a full name
# "<key>@<number>:<hash>/<part>/<locale>" through TemplateEnvironment.join_path.
SourceLookup = Callable[[str], str]
IncludeResolver = Callable[[str, str], str]


class RenderLimitError(Exception):
    """A render went past one of the limits set by CCM_RENDER_OUTPUT_LIMIT or CCM_RENDER_TIME_LIMIT."""


class OutputTooLarge(RenderLimitError):
    pass


class RenderTimedOut(RenderLimitError):
    pass


class _Interrupt(BaseException):
    """Raised asynchronously inside a render thread by the watchdog. A BaseException so that no
    `except Exception` in a filter or library can swallow it."""


class _Watchdog:
    """One daemon thread that interrupts renders which pass their deadline.

    It polls every POLL_SECONDS rather than being woken on each render: arming is then a dict insert, which
    keeps the guard off the render's cost; a render may overrun its limit by up to one poll interval."""

    POLL_SECONDS = 0.05

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: dict[int, tuple[int, float]] = {}  # token -> (thread id, deadline)
        self._fired: set[int] = set()
        self._tokens = itertools.count(1)
        self._started = False

    def arm(self, seconds: float) -> int:
        # No lock on this path: next() on a count and a dict insert are atomic under the GIL.
        token = next(self._tokens)
        self._armed[token] = (threading.get_ident(), time.monotonic() + seconds)
        if not self._started:
            with self._lock:
                if not self._started:
                    threading.Thread(target=self._run, name="ccm-render-watchdog", daemon=True).start()
                    self._started = True
        return token

    def disarm(self, token: int) -> None:
        # Whoever pops the token owns it. If we do, the watchdog never will, and nothing was fired.
        if self._armed.pop(token, None) is not None:
            return
        # The watchdog popped it: wait until it has fired, then cancel the interrupt if it is still pending,
        # so that it cannot land in whatever this thread runs next.
        with self._lock:
            if token in self._fired:
                self._fired.discard(token)
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(threading.get_ident()), None)

    def _run(self) -> None:
        while True:
            time.sleep(self.POLL_SECONDS)
            if not self._armed:
                continue
            now = time.monotonic()
            for token, (_, deadline) in list(self._armed.items()):
                if deadline > now:
                    continue
                with self._lock:
                    entry = self._armed.pop(token, None)
                    if entry is None:
                        continue  # disarmed in the meantime: the render finished in time
                    self._fired.add(token)
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(
                        ctypes.c_ulong(entry[0]), ctypes.py_object(_Interrupt)
                    )


_watchdog = _Watchdog()


def _size(value: Any) -> int:
    if isinstance(value, str | bytes | list | tuple | dict | set):
        return len(value)
    return 0


class _LimitedCodeGenerator(CodeGenerator):
    """Routes `~` concatenation through a size check (the sandbox has no hook for it)."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.checked(")
        super().visit_Concat(node, frame)
        self.write(")")


class TemplateEnvironment(ImmutableSandboxedEnvironment):
    """ImmutableSandboxedEnvironment + StrictUndefined + the size checks; HTML parts are autoescaped."""

    code_generator_class = _LimitedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(
        self,
        *,
        source_lookup: SourceLookup,
        include_resolver: IncludeResolver,
        output_limit: int,
        time_limit: float,
        cache_size: int = 2000,
    ) -> None:
        super().__init__(
            loader=_EngineLoader(source_lookup),
            undefined=StrictUndefined,
            autoescape=_is_html_part,
            auto_reload=False,  # every name carries its content hash: a compiled template never goes stale
            cache_size=cache_size,
            keep_trailing_newline=True,
        )
        self.output_limit = output_limit
        self.time_limit = time_limit
        self._compiled: dict[str, Template] = {}
        self._compiled_limit = cache_size
        self._include_resolver = include_resolver
        # Business users need none of these, and each has been a stepping stone in published escapes.
        for name in ("cycler", "joiner", "lipsum"):
            self.globals.pop(name, None)
        self.filters = {name: self._guard_filter(name, f) for name, f in self.filters.items()}

    def add_filters(self, filters: dict[str, Callable[..., Any]]) -> None:
        """Register ccm's own filters, with the same guards as Jinja's."""
        self.filters.update({name: self._guard_filter(name, f) for name, f in filters.items()})

    def join_path(self, template: str, parent: str) -> str:
        return self._include_resolver(template, parent)

    # --- size checks -----------------------------------------------------------------------------------

    def _too_large(self, what: str) -> OutputTooLarge:
        return OutputTooLarge(f"{what} goes over the output limit of {self.output_limit} characters")

    def checked(self, value: Any) -> Any:
        if _size(value) > self.output_limit:
            raise self._too_large(f"a value of {_size(value)} characters")
        return value

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        limit = self.output_limit
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(times, int) and _size(seq) and _size(seq) * times > limit:
                    raise self._too_large(f"repeating a value {times} times")
        elif operator == "**":
            if isinstance(right, int) and right > 1000 and isinstance(left, int) and abs(left) > 1:
                raise self._too_large(f"{left} ** {right}")
        elif operator == "%" and isinstance(left, str):
            self._check_printf_widths(left)
        elif operator == "+" and _size(left) + _size(right) > limit:
            raise self._too_large("joining these values")
        return self.checked(super().call_binop(context, operator, left, right))

    def _check_printf_widths(self, template: str) -> None:
        digits = ""
        in_spec = False
        for ch in template:
            if ch == "%":
                in_spec, digits = not in_spec, ""
            elif in_spec:
                if ch.isdigit():
                    digits += ch
                    if int(digits) > self.output_limit:
                        raise self._too_large(f"a format width of {digits}")
                elif ch not in "-+ #0.":
                    in_spec, digits = False, ""

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        limit = __self.output_limit
        for value in (*args, *kwargs.values()):
            if isinstance(value, int) and not isinstance(value, bool) and value > limit:
                raise __self._too_large(f"an argument of {value}")
        bound_self = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "")
        if isinstance(bound_self, str) and name == "replace" and len(args) >= 2:
            occurrences = bound_self.count(args[0]) if args[0] else len(bound_self) + 1
            if len(bound_self) + occurrences * _size(args[1]) > limit:
                raise __self._too_large("this replace")
        if isinstance(bound_self, str) and name == "join" and args:
            __self._check_join(bound_self, args[0])
        return __self.checked(super().call(__context, __obj, *args, **kwargs))

    def _check_join(self, separator: str, items: Any) -> None:
        if isinstance(items, Sized) and len(separator) * len(items) > self.output_limit:
            raise self._too_large("this join")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            # A width or precision in the format string itself (`'{:>999999999}'.format(1)`) would make
            # C allocate the whole string before any check could run.
            for _, _, spec, _ in string.Formatter().parse(value.__self__):
                self._check_spec_numbers(spec or "")
        return wrapped

    def _check_spec_numbers(self, spec: str) -> None:
        number = ""
        for ch in spec + " ":
            if ch.isdigit():
                number += ch
                continue
            if number and int(number) > self.output_limit:
                raise self._too_large(f"a format width of {number}")
            number = ""

    def _guard_filter(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """Filters are called directly, not through `call`: give them the same argument and result checks."""
        # Arguments: the context or environment for pass_* filters, then the value, then the filter's own.
        skip = 2 if getattr(function, "jinja_pass_arg", None) is not None else 1

        @functools.wraps(function)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            limit = self.output_limit
            for value in (*args[skip:], *kwargs.values()):
                if isinstance(value, int) and not isinstance(value, bool) and value > limit:
                    raise self._too_large(f"{name}: an argument of {value}")
            subject = args[skip - 1] if len(args) >= skip else None
            if name == "join" and isinstance(subject, Sized):
                separator = args[skip] if len(args) > skip else kwargs.get("d", "")
                self._check_join(str(separator), subject)
            elif name == "replace" and isinstance(subject, str) and len(args) > skip + 1:
                old, new = args[skip], args[skip + 1]
                occurrences = subject.count(str(old)) if old else len(subject) + 1
                if len(subject) + occurrences * _size(new) > limit:
                    raise self._too_large("this replace")
            elif name == "format" and isinstance(subject, str):
                self._check_printf_widths(subject)
            return self.checked(function(*args, **kwargs))

        return guarded

    # --- rendering ---------------------------------------------------------------------------------------

    def render(self, name: str, context: dict[str, Any]) -> str:
        """Render a template to a string within the output cap and the time limit."""
        # Names are content-addressed, so a compiled template never changes: a plain dict in front of
        # Jinja's locked LRU cache keeps the lookup off the render's cost.
        template = self._compiled.get(name)
        if template is None:
            template = self.get_template(name)
            if len(self._compiled) >= self._compiled_limit:
                self._compiled.clear()
            self._compiled[name] = template
        token = _watchdog.arm(self.time_limit)
        try:
            try:
                return self._collect(template.generate(context))
            finally:
                _watchdog.disarm(token)
        except _Interrupt:
            raise RenderTimedOut(f"rendering took longer than the {self.time_limit:g}s time limit") from None

    def _collect(self, chunks: Iterator[str]) -> str:
        # Counted a batch at a time: the cap still holds (at most one batch past it is ever held), and the
        # counting runs in C instead of a Python step per chunk.
        parts: list[str] = []
        total = 0
        limit = self.output_limit
        while batch := list(itertools.islice(chunks, 512)):
            total += sum(map(len, batch))
            if total > limit:
                raise self._too_large("the output")
            parts.extend(batch)
        return "".join(parts)


def _is_html_part(name: str | None) -> bool:
    if not name:
        return False
    segments = name.split("/")
    return len(segments) >= 2 and segments[1].endswith("html")


class _EngineLoader(BaseLoader):
    """Loads template sources by full engine name; names are content-addressed, so sources never change."""

    def __init__(self, lookup: SourceLookup) -> None:
        self._lookup = lookup

    def get_source(self, environment: Any, template: str) -> tuple[str, str, Callable[[], bool]]:
        try:
            source = self._lookup(template)
        except KeyError:
            raise TemplateNotFound(template) from None
        return source, template, lambda: True
