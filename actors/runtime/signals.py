"""Signals: the first SIGTERM/SIGINT asks for a graceful stop with a deadline, a second one
stops at once."""

from __future__ import annotations

import logging
import signal

import trio

from actors.runtime.logs import log_fields

__all__ = ["watch_signals"]

log = logging.getLogger(__name__)


async def watch_signals(stop: trio.Event, service: trio.CancelScope, deadline: float) -> None:
    """First SIGTERM/SIGINT: graceful stop with a deadline. Second: stop now."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if not stop.is_set():
                log_fields(
                    log,
                    logging.INFO,
                    "shutdown requested",
                    signal=signal.Signals(signum).name,
                    deadlineSeconds=deadline,
                )
                stop.set()
                service.deadline = trio.current_time() + deadline
            else:
                log_fields(log, logging.WARNING, "second signal; stopping at once")
                service.cancel()
