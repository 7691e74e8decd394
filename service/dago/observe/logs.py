"""Structured logs: one JSON object per line (or readable console lines), with the
correlation fields of the node attempt being worked on.

The worker sets :data:`NODE` (a context variable) at the start of every attempt; since
each attempt runs in its own task, every line logged by it, by its handler and by the
provider it calls carries ``graph_id``, ``node_id``, ``attempt`` and ``trace_id`` without
any of them passing those around. Fields given with ``extra=`` are printed too.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TextIO

from dago.config import Settings
from dago.observe.redact import Redactor


@dataclass(frozen=True)
class NodeFields:
    """What identifies one node attempt in logs."""

    graph_id: str
    node_id: str
    attempt: int
    iteration: int
    trace_id: str


NODE: ContextVar[NodeFields | None] = ContextVar("dago_node", default=None)
"""The node attempt the current task works on (None outside attempts)."""

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}

redact = Redactor(key_shaped=True, mask="***")
"""What every line goes through: anything that looks like an API key, a bearer token or a
password, and (once :func:`setup` has run) the operator's own secrets, whatever their shape.
Logs are the operators', so matching the secrets themselves tells no tenant anything."""

MAX_FIELD = 512
"""Characters of one ``extra`` field printed; longer values are cut (a client's string is
never printed whole: a 3 MB graph name once made a 3 MB line)."""
MAX_MESSAGE = 4096
"""Characters of a line's message printed; the rest is cut."""
MAX_TRACE_LINE = 1024
"""Characters of each line of a traceback (its last line quotes the exception's message)."""


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit} more characters]"


MAX_TRACE = 64 * 1024
"""Characters of a traceback (or a multi-line console line) in all."""


def _trace(text: str) -> str:
    return _cut("\n".join(_cut(line, MAX_TRACE_LINE) for line in text.split("\n")), MAX_TRACE)


class ContextFilter(logging.Filter):
    """Copies the current node attempt's fields onto each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add graph_id, node_id, attempt, iteration and trace_id when inside an attempt."""
        node = NODE.get()
        if node is not None:
            for name in ("graph_id", "node_id", "attempt", "iteration", "trace_id"):
                if not hasattr(record, name):
                    setattr(record, name, getattr(node, name))
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the correlation fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            # Redacted, then cut: a cut first could leave the start of a secret unmatched.
            "msg": _cut(redact(record.getMessage()), MAX_MESSAGE),
        }
        for k, v in _fields(record).items():
            plain = isinstance(v, int | float | bool) or v is None
            out[k] = v if plain else _cut(redact(str(v)), MAX_FIELD)
        if record.exc_info:
            out["exc"] = _trace(redact(self.formatException(record.exc_info)))
        return json.dumps(out, ensure_ascii=False, default=str)


class ConsoleFormatter(logging.Formatter):
    """Readable lines for a terminal, correlation fields appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """The record as a readable line."""
        line = _trace(redact(super().format(record)))
        fields = _fields(record).items()
        extra = " ".join(f"{k}={_cut(redact(str(v)), MAX_FIELD)}" for k, v in fields)
        return f"{line}  [{extra}]" if extra else line


def setup(settings: Settings, stream: TextIO | None = None) -> None:
    """Configure the root logger of this process from the settings (replaces handlers)."""
    global redact
    redact = Redactor.from_settings(settings, key_shaped=True, mask="***")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else ConsoleFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # Libraries' chatter at DEBUG would drown dago's own lines (and the SDKs' can hold
    # request bodies); they log at WARNING and above.
    for name in ("httpx", "httpcore", "anthropic", "openai", "grpc", "asyncio", "urllib3"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
