"""Logs as one JSON object per line: time, level, logger, message and the ids that matter.

Pass ids with `extra={"source": ..., "destination": ..., "job": ..., "event": ...}`. Source keys and
the admin token never belong in a log: anything shaped like `token=...` or `Bearer ...` is masked.
"""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime

import msgspec

ID_FIELDS = ("source", "destination", "job", "event", "worker", "queue")
_SECRETS = re.compile(r"(token=|Bearer\s+|admin_token\W+)[^\s&'\"]+", re.IGNORECASE)
_encoder = msgspec.json.Encoder()


def redact(text: str) -> str:
    return _SECRETS.sub(lambda m: m.group(1) + "***", text)


def masked_url(url: str) -> str:
    """A Redis URL fit to print: its password (`redis://user:secret@host`) replaced by ***."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    credentials, at, host = rest.rpartition("@")
    if not at:
        return url
    user, colon, _ = credentials.partition(":")
    return f"{scheme}://{user}:***@{host}" if colon else f"{scheme}://***@{host}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for field in ID_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = str(value)
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return _encoder.encode(entry).decode()


def setup_logging(level: int = logging.INFO) -> None:
    """JSON lines on stderr for trackpipe, RQ, uvicorn and httpx alike."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "rq.worker", "rq.scheduler", "rq.job", "rq.queue"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
