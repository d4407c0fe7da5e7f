"""The real service with one injected fault: its consumer raises on records that carry a marker.

The service has no fault hook of its own, so the tests inject one from outside: this module
wraps ``_Consumer._handle`` so that a record whose value contains :data:`MARKER` raises
``RuntimeError`` (an unexpected exception, which the supervisor must handle by restarting the
consumer), then runs the unchanged ``python -m actors`` entry point.

With ``CRASH_ONCE_FILE`` set, only the record handled while that file exists fails, and the file
is removed: the crash happens once and the redelivered record is then processed normally.

Synopsis::

    spawn_module(services, "tests.support.crashing_service", env={...})
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from actors import consumer
from actors.__main__ import main
from actors.ports import Record

MARKER = b"crash-me"

_handle = consumer._Consumer._handle


def _should_crash(record: Record) -> bool:
    if record.value is None or MARKER not in record.value:
        return False
    once = os.environ.get("CRASH_ONCE_FILE")
    if not once:
        return True
    try:
        Path(once).unlink()
    except FileNotFoundError:
        return False
    return True


async def _crashing_handle(self: consumer._Consumer, record: Record) -> None:
    if _should_crash(record):
        raise RuntimeError(
            f"injected failure at partition {record.partition} offset {record.offset}"
        )
    await _handle(self, record)


if __name__ == "__main__":  # only then: importing MARKER from a test must not patch anything
    consumer._Consumer._handle = _crashing_handle  # type: ignore[method-assign]
    sys.exit(main())
