"""What becomes of an event's findings: the rules of data quality, as a pure function.

Findings come from the standard-event checks (workers.standard) and from the source's event
specification (trackpipe.specification). Without a specification: a property with a bad value is
removed and the event accepted with a warning naming it (the vendor's INVALID_ACCEPTED); a missing
one is a warning.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from trackpipe.specification import SourceSpec
from workers.status import Finding

_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


class Judgement(msgspec.Struct):
    event: dict[str, Any]
    warnings: list[str]
    errors: list[str]  # any error rejects the event


def remove_path(event: dict[str, Any], path: str) -> bool:
    """Remove the property at `path` ("value", "items[0].product.price") in place; False if absent."""
    steps: list[str | int] = [name if name else int(index) for name, index in _STEP.findall(path)]
    if not steps:
        return False
    holder: Any = event
    for step in steps[:-1]:
        if isinstance(step, int):
            if not isinstance(holder, list) or step >= len(holder):
                return False
        elif not isinstance(holder, dict) or step not in holder:
            return False
        holder = holder[step]
    last = steps[-1]
    if isinstance(last, int):
        if not isinstance(holder, list) or last >= len(holder):
            return False
        del holder[last]
        return True
    if not isinstance(holder, dict) or last not in holder:
        return False
    del holder[last]
    return True


def judge(event: dict[str, Any], findings: list[Finding], spec: SourceSpec | None) -> Judgement:
    """Apply the rules to one normalized event (changed in place: removed properties)."""
    warnings: list[str] = []
    errors: list[str] = []
    for finding in findings:
        if finding.kind == "bad_value" and remove_path(event, finding.path):
            warnings.append(f"{finding.message}; removed")
        else:
            warnings.append(finding.message)
    return Judgement(event, warnings, errors)
