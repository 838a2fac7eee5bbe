"""Logs as one JSON object per line: time, level, logger, message and the ids that matter.

Pass ids with `extra={"source": ..., "destination": ..., "job": ..., "event": ...}`. Source keys and
the admin token never belong in a log: anything shaped like `token=...` or `Bearer ...` is masked.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from urllib.parse import quote, quote_plus

import msgspec

ID_FIELDS = ("source", "destination", "job", "event", "worker", "queue")
_SECRETS = re.compile(r"(token=|Bearer\s+|admin_token\W+)[^\s&'\"]+", re.IGNORECASE)
_encoder = msgspec.json.Encoder()


def redact(text: str) -> str:
    return _SECRETS.sub(lambda m: m.group(1) + "***", text)


MASK = "***"


def mask_values(secrets: Iterable[str]) -> list[str]:
    """The strings to mask for these secrets: each as it is and URL-encoded, longest first (so a
    secret that contains another is masked whole)."""
    values: set[str] = set()
    for secret in secrets:
        if secret:
            values.update({secret, quote(secret, safe=""), quote(secret), quote_plus(secret)})
    return sorted((v for v in values if v), key=len, reverse=True)


def mask(text: str, values: list[str]) -> str:
    """`text` with each of `values` (from mask_values) replaced by `***`."""
    for value in values:
        if value in text:
            text = text.replace(value, MASK)
    return text


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
