"""Restart supervision: run an actor, restart it with backoff when it fails, give up when it
fails too often in a window so that an orchestrator can restart the whole process."""

from __future__ import annotations

import collections
import logging
from collections.abc import Awaitable, Callable

import attrs
import trio

from actors.runtime.backoff import Backoff
from actors.runtime.health import ActorState, Health
from actors.runtime.metrics import Metrics

__all__ = ["RestartPolicy", "TooManyRestarts", "innermost", "supervise_actor"]

log = logging.getLogger(__name__)


class TooManyRestarts(Exception):
    """An actor failed more often than the restart policy allows."""


@attrs.frozen(kw_only=True)
class RestartPolicy:
    """Restart with ``backoff``; give up after ``max_failures`` within ``window`` seconds."""

    backoff: Backoff
    max_failures: int
    window: float


async def supervise_actor(
    name: str,
    actor: Callable[..., Awaitable[None]],
    *,
    policy: RestartPolicy,
    health: Health,
    metrics: Metrics | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``actor`` and restart it when it fails, until it returns normally.

    ``task_status.started()`` is reported once, when the first incarnation has started. Each
    restart is counted in ``metrics``; giving up reports the actor ``failed`` in ``health``.

    Raises:
        TooManyRestarts: after ``policy.max_failures`` failures within ``policy.window``.
    """
    failures: collections.deque[float] = collections.deque()
    started = False
    while True:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(actor)
                if not started:
                    started = True
                    task_status.started()
        except Exception as failure:
            error = innermost(failure)
            now = trio.current_time()
            failures.append(now)
            while failures and failures[0] <= now - policy.window:
                failures.popleft()
            giving_up = len(failures) >= policy.max_failures
            delay = policy.backoff.delay(len(failures))
            log.exception(
                "actor %s failed",
                name,
                exc_info=error,
                extra={
                    "structured_fields": {
                        "actor": name,
                        "failures": len(failures),
                        "retryIn": None if giving_up else round(delay, 3),
                    }
                },
            )
            if giving_up:
                health.report(name, ActorState.FAILED, f"{len(failures)} failures; giving up")
                raise TooManyRestarts(
                    f"{name} failed {len(failures)} times within {policy.window:g} s"
                ) from error
            health.report(
                name, ActorState.RESTARTING, f"{type(error).__name__}; retry in {delay:.2f} s"
            )
            if metrics is not None:
                metrics.actor_restarted(name)
            await trio.sleep(delay)
        else:
            return


def innermost(error: Exception) -> Exception:
    """The actor's own error, out of the single-member groups that nurseries wrap it in."""
    while isinstance(error, ExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error
