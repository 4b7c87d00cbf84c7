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
import re
import sys
import threading
import time
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from jinja2 import BaseLoader, StrictUndefined, Template, TemplateNotFound, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter
from markupsafe import EscapeFormatter, Markup

from ccm.templates_engine.editable import EditableExtension

# A template names another template in its source by key; the engine turns that into a full name
# "<key>@<number>:<hash>/<part>/<locale>" through TemplateEnvironment.join_path.
T = TypeVar("T")
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


# Tuples, not `str | bytes` unions: a union in isinstance() is built anew on every call, on the render path.
_TEXT = (str, bytes)
_CONTAINERS = (dict, list, tuple, set, frozenset)


def _size(value: Any, limit: int = sys.maxsize, depth: int = 32) -> int:
    """About how many characters a value takes once printed: text its length, a container its length plus
    what its elements weigh, all the way down. Counting stops once past `limit`: nothing larger matters."""
    if isinstance(value, _TEXT):
        return len(value)
    if not isinstance(value, _CONTAINERS):
        return 0
    total = len(value)
    if depth == 0 or total > limit:
        return total
    items = value.items() if isinstance(value, dict) else value
    for item in items:
        total += _size(item, limit - total, depth - 1)
        if total > limit:
            break
    return total


def _json_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and type(value) is not bool


# A printf-style conversion: %d, %10s, %(name)-10.3f, %*d ...
_PRINTF = re.compile(r"%(?:\([^)]*\))?[-+ #0]*(?P<width>\*|\d+)?(?:\.(?P<precision>\*|\d+))?[hlL]?[a-zA-Z%]")


class _LimitedFormatter(SandboxedFormatter):
    """str.format with each field's width and precision checked once nested fields are filled in
    (`'{:{}}'.format(1, '999999999')` hides the width in an argument)."""

    def __init__(self, env: TemplateEnvironment, **kwargs: Any) -> None:
        super().__init__(env, **kwargs)
        self._limited = env

    def format_field(self, value: Any, format_spec: str) -> Any:
        self._limited.check_numbers_in(format_spec, "a format width")
        return super().format_field(value, format_spec)


class _LimitedEscapeFormatter(_LimitedFormatter, EscapeFormatter):
    pass


class _LimitedCodeGenerator(CodeGenerator):
    """Routes `~` concatenation through a size check (the sandbox has no hook for it)."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.checked(")
        super().visit_Concat(node, frame)
        self.write(")")


_MAX_JSON_INDENT = 8
# Filters whose result can outgrow their arguments: each has its own check before it runs.
_SPECIAL_FILTERS = frozenset({"join", "replace", "format", "indent", "tojson"})


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
            extensions=[EditableExtension],
            auto_reload=False,  # every name carries its content hash: a compiled template never goes stale
            cache_size=cache_size,
            keep_trailing_newline=True,
        )
        self.output_limit = output_limit
        self.time_limit = time_limit
        self._compiled: dict[str, Template] = {}
        # About as many bits as a number printed within the output limit can have (3.3 bits a digit).
        self._max_bits = output_limit * 4
        self._compiled_limit = cache_size
        self._include_resolver = include_resolver
        # Business users need none of these, and each has been a stepping stone in published escapes.
        for name in ("cycler", "joiner", "lipsum"):
            self.globals.pop(name, None)
        self.filters = {name: self._guard_filter(name, f) for name, f in self.filters.items()}
        # tojson takes any mapping a template is given (such as `message`) as it takes a dict.
        self.policies["json.dumps_kwargs"] = {"sort_keys": True, "default": _json_value}

    def add_filters(self, filters: dict[str, Callable[..., Any]]) -> None:
        """Register ccm's own filters, with the same guards as Jinja's."""
        self.filters.update({name: self._guard_filter(name, f) for name, f in filters.items()})

    def join_path(self, template: str, parent: str) -> str:
        return self._include_resolver(template, parent)

    # --- size checks -----------------------------------------------------------------------------------

    def _too_large(self, what: str) -> OutputTooLarge:
        return OutputTooLarge(f"{what} goes over the output limit of {self.output_limit} characters")

    def checked(self, value: Any) -> Any:
        if isinstance(value, str):  # most results: text, checked by its length alone
            if len(value) > self.output_limit:
                raise self._too_large(f"a value of {len(value)} characters")
            return value
        # One level down is enough here: containers only grow through *, +, join and replace, which weigh
        # their operands all the way down before they run. Everything else passes the weight on unchanged.
        if _size(value, self.output_limit, depth=1) > self.output_limit:
            raise self._too_large(f"a value of {_size(value)} characters")
        return value

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        limit = self.output_limit
        if operator == "*":
            if _is_int(left) and _is_int(right):
                if abs(left).bit_length() + abs(right).bit_length() > self._max_bits:
                    raise self._too_large("multiplying these numbers")
            else:
                for seq, times in ((left, right), (right, left)):
                    if _is_int(times) and times > 0 and _size(seq, limit // times + 1) * times > limit:
                        raise self._too_large(f"repeating a value {times} times")
        elif operator == "**":
            # Big integers are computed in C, holding the GIL: no watchdog could stop them, so refuse first.
            big = _is_int(left) and _is_int(right) and right > 0 and abs(left) > 1
            if big and abs(left).bit_length() * right > self._max_bits:
                raise self._too_large(f"a number to the power {right}")
        elif operator == "%" and isinstance(left, str):
            self._check_printf(left, right)
        elif operator == "+" and _size(left, limit) + _size(right, limit) > limit:
            raise self._too_large("joining these values")
        return self.checked(super().call_binop(context, operator, left, right))

    def check_numbers_in(self, spec: str, what: str) -> None:
        for number in re.findall(r"\d+", spec):
            if int(number) > self.output_limit:
                raise self._too_large(f"{what} of {number}")

    def _check_printf(self, template: str, arguments: Any) -> None:
        """Widths and precisions written in the format, and those `*` takes from the arguments."""
        for match in _PRINTF.finditer(template):
            for number in (match.group("width"), match.group("precision")):
                if number and number != "*" and int(number) > self.output_limit:
                    raise self._too_large(f"a format width of {number}")
        if isinstance(arguments, dict):
            values: Iterable[Any] = arguments.values()
        elif isinstance(arguments, tuple | list):
            values = arguments
        else:
            values = (arguments,)
        for value in values:
            if _is_int(value) and value > self.output_limit:
                raise self._too_large(f"a format argument of {value}")

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        limit = __self.output_limit
        for value in (*args, *kwargs.values()):
            if _is_int(value) and value > limit:
                raise __self._too_large(f"an argument of {value}")
        bound_self = getattr(__obj, "__self__", None)
        if isinstance(bound_self, str):
            __self._check_str_method(bound_self, getattr(__obj, "__name__", ""), args, kwargs)
        return __self.checked(super().call(__context, __obj, *args, **kwargs))

    def _check_str_method(self, text: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """String methods whose result can be far larger than their arguments: estimated before they run."""
        if name == "replace" and len(args) >= 2:
            self._check_replace(text, args[0], args[1])
        elif name == "join" and args:
            self._check_join(text, args[0])
        elif name == "expandtabs":
            tabsize = args[0] if args else kwargs.get("tabsize", 8)
            if _is_int(tabsize) and len(text) + text.count("\t") * tabsize > self.output_limit:
                raise self._too_large("expanding these tabs")

    def _check_replace(self, text: str, old: Any, new: Any) -> None:
        occurrences = text.count(str(old)) if old else len(text) + 1
        if len(text) + occurrences * _size(new, self.output_limit) > self.output_limit:
            raise self._too_large("this replace")

    def _check_join(self, separator: str, items: Any) -> None:
        if isinstance(items, list | tuple | set | frozenset | dict | range):
            total = len(separator) * len(items)
            if not isinstance(items, range):
                total += _size(list(items), self.output_limit)
            if total > self.output_limit:
                raise self._too_large("this join")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """str.format and format_map, with every field's width and precision checked as it is formatted."""
        if not isinstance(value, types.MethodType | types.BuiltinMethodType) or value.__name__ not in (
            "format",
            "format_map",
        ):
            return None
        owner = value.__self__
        if not isinstance(owner, str):
            return None
        formatter: _LimitedFormatter
        if isinstance(owner, Markup):
            formatter = _LimitedEscapeFormatter(self, escape=owner.escape)
        else:
            formatter = _LimitedFormatter(self)
        is_format_map = value.__name__ == "format_map"
        result_type: type[str] = type(owner)

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument and no keyword arguments")
                kwargs, args = args[0], ()
            return result_type(self.checked(formatter.vformat(owner, args, kwargs)))

        return functools.update_wrapper(wrapper, value)

    def _guard_filter(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """Filters are called directly, not through `call`: give them the same argument and result checks."""
        # Arguments: the context or environment for pass_* filters, then the value, then the filter's own.
        skip = 2 if getattr(function, "jinja_pass_arg", None) is not None else 1

        if name not in _SPECIAL_FILTERS:

            @functools.wraps(function)
            def guarded_plain(*args: Any, **kwargs: Any) -> Any:
                limit = self.output_limit
                for value in args[skip:]:
                    if type(value) is int and value > limit:
                        raise self._too_large(f"{name}: an argument of {value}")
                for value in kwargs.values():
                    if type(value) is int and value > limit:
                        raise self._too_large(f"{name}: an argument of {value}")
                return self.checked(function(*args, **kwargs))

            return guarded_plain

        @functools.wraps(function)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            limit = self.output_limit
            for value in (*args[skip:], *kwargs.values()):
                if _is_int(value) and value > limit:
                    raise self._too_large(f"{name}: an argument of {value}")
            subject = args[skip - 1] if len(args) >= skip else None
            given = args[skip:]
            if name == "join":
                self._check_join(str(given[0] if given else kwargs.get("d", "")), subject)
            elif name == "replace" and isinstance(subject, str) and len(given) >= 2:
                self._check_replace(subject, given[0], given[1])
            elif name == "format" and isinstance(subject, str):
                self._check_printf(subject, tuple(given) or kwargs)
            elif name == "indent" and isinstance(subject, str):
                width = given[0] if given else kwargs.get("width", 4)
                width_size = len(width) if isinstance(width, str) else width if _is_int(width) else 0
                if len(subject) + (subject.count("\n") + 1) * width_size > limit:
                    raise self._too_large("indenting these lines")
            elif name == "tojson":
                indent = given[0] if given else kwargs.get("indent", 0)
                if _is_int(indent) and indent > _MAX_JSON_INDENT:
                    raise self._too_large(f"tojson: an indent of {indent} (at most {_MAX_JSON_INDENT})")
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
        return run_with_time_limit(
            lambda: self._collect(template.generate(context)), self.time_limit, "rendering"
        )

    def _collect(self, chunks: Iterator[str]) -> str:
        # Counted 16 chunks at a time: the cap still holds (at most one batch past it is ever held), and the
        # counting runs in C instead of a Python step per chunk.
        parts: list[str] = []
        total = 0
        limit = self.output_limit
        while batch := list(itertools.islice(chunks, 16)):
            total += sum(map(len, batch))
            if total > limit:
                raise self._too_large("the output")
            parts.extend(batch)
        return "".join(parts)


def run_with_time_limit(function: Callable[[], T], seconds: float, what: str) -> T:
    """Run `function` in this thread, interrupted by the watchdog after `seconds` (RenderTimedOut)."""
    token = _watchdog.arm(seconds)
    try:
        try:
            return function()
        finally:
            _watchdog.disarm(token)
    except _Interrupt:
        raise RenderTimedOut(f"{what} took longer than the {seconds:g}s time limit") from None


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
