"""``mjhook recover``: ask the provider about every task mjhook submitted in a recent window that is
not stored, and queue the results of the finished ones for the workers, like the polling fallback
does for silent tasks (but now, and whatever their state)."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import NoReturn

import click
import redis

from cli.output import EXIT_INTERRUPTED, echo_json
from cli.params import MAX_SECONDS
from cli.services import DEFAULT_REDIS_TIMEOUT_S, redis_failure
from cli.settings import pass_settings
from cli.submit import EXIT_REFUSED, EXIT_UNAVAILABLE
from shared.callback import callback_limits
from shared.errors import (
    ConfigError,
    ProviderError,
    ProviderUnavailable,
    QueueUnavailable,
    TaskRecordUnusable,
)
from shared.polling import PollOutcome, ResultPoller
from shared.printable import printable
from shared.provider import create_provider_client
from shared.queue import create_broker
from shared.redis_client import connect_redis
from shared.settings import Settings
from shared.submitted import SubmittedTasks
from shared.taskstate import TaskState, TaskStore

#: ``90s``, ``30m``, ``2h``, ``1d``, ``1h30m``.
DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
UNIT_S = (86_400, 3600, 60, 1)


def parse_duration(text: str, *, max_s: float = MAX_SECONDS) -> int:
    """``1h30m`` -> 5400 (seconds); a ValueError for anything else, zero, or more than ``max_s``
    (a window past any record's life, and one whose start is no time a clock can hold)."""
    match = DURATION.fullmatch(text.strip())
    if match is None or not any(match.groups()):
        raise ValueError(f"not a duration: {text!r} (e.g. 90s, 30m, 2h, 1d, 1h30m)")
    parts = match.groups()
    if any(len((part or "").lstrip("0")) > 15 for part in parts):  # no int of 5000 digits is made
        raise ValueError(f"the duration must be at most {_days(max_s)}")
    seconds = sum(int(part) * unit for part, unit in zip(parts, UNIT_S, strict=True) if part)
    if seconds <= 0:
        raise ValueError("the duration must be positive")
    if seconds > max_s:
        raise ValueError(f"the duration must be at most {_days(max_s)}")
    return seconds


def _days(seconds: float) -> str:
    """``seconds`` in whole days, rounded down: ``115d``."""
    return f"{int(seconds // 86_400)}d"


def _since_option(ctx: click.Context, param: click.Parameter, value: str) -> int:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


#: A row's state when the task's record in Redis is unusable (another type, an unknown state).
UNUSABLE_RECORD = "unusable"
#: A row's state when its id in the index of submitted tasks is no UTF-8 text (no taskId mjhook
#: submits: written by hand, or another program); the row shows its bytes as ``\\xNN`` escapes.
UNREADABLE_ID = "unreadable id"
#: A row's outcome for a task not polled: already stored, or its record unusable.
SKIPPED = "skipped"
#: A row's outcome for a task whose result was queued, but whose record could not be marked.
QUEUED_UNMARKED = "queued, unmarked"
#: What the summary counts a row as, by its outcome (a skipped one: see :func:`_counted_as`).
COUNTED_AS = {
    PollOutcome.QUEUED.value: "queued",
    PollOutcome.GENERATING.value: "still generating",
    PollOutcome.UNKNOWN.value: "unknown to the provider",
    PollOutcome.UNUSABLE.value: "with a result that cannot be used",
    QUEUED_UNMARKED: "queued but unmarked (record unusable)",
}
#: The summary's counts, in order: these always, the others when there are some.
ALWAYS_COUNTED = ("queued", "still generating", "unknown to the provider", "already stored")
SUMMARY_ORDER = (
    *ALWAYS_COUNTED,
    "with a result that cannot be used",
    "queued but unmarked (record unusable)",
    "skipped (record unusable)",
    "skipped (id not UTF-8)",
)


@dataclass(frozen=True, slots=True)
class Row:
    task_id: str
    state: str
    outcome: str
    detail: str

    def json(self) -> dict[str, str]:
        return {"taskId": self.task_id, "state": self.state, "outcome": self.outcome, "detail": self.detail}


@click.command()
@click.option(
    "--since",
    "since_s",
    default="2h",
    callback=_since_option,
    show_default=True,
    help="The window of submission times: 90s, 30m, 2h, 1d, 1h30m; capped at MJHOOK_TASK_TTL_S.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list.")
@pass_settings
def recover(settings: Settings, since_s: int, as_json: bool) -> None:
    """Poll every task submitted in the last --since that is not stored; queue the finished ones.

    The window goes back no further than MJHOOK_TASK_TTL_S: an older task's record is gone, and
    nothing tells whether it was stored. A task already stored is skipped; one whose result is
    queued again after it was processed is a duplicate the workers ignore, unless it had failed.
    Exit code 3 when the provider refuses the account (bad key), 4 when it is unavailable, 1 when
    Redis or the queue is, 130 when interrupted (Ctrl-C): the tasks listed so far were handled."""
    try:
        provider = create_provider_client(settings)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    client = connect_redis(settings.redis_url, timeout_s=DEFAULT_REDIS_TIMEOUT_S)
    if since_s > settings.task_ttl_s:
        click.echo(
            f"Note: the window is capped at MJHOOK_TASK_TTL_S ({settings.task_ttl_s}s): older tasks"
            " have no record left to tell whether they were stored, and are not polled.",
            err=True,
        )
    rows: list[Row] = []
    failure: ProviderError | QueueUnavailable | None = None
    try:
        tasks = TaskStore(client, ttl_s=settings.task_ttl_s)
        broker = create_broker(settings, middleware=[])
        poller = ResultPoller(provider=provider, tasks=tasks, broker=broker, limits=callback_limits(settings))
        for task_id, _ in SubmittedTasks(client, tasks, ttl_s=settings.task_ttl_s).since_all(since_s):
            if isinstance(task_id, bytes):
                # No taskId mjhook submits (written by another program): never asked for.
                shown = task_id.decode("utf-8", "backslashreplace")
                rows.append(Row(shown, UNREADABLE_ID, SKIPPED, "its id in the index is no UTF-8 text"))
                continue
            try:
                record = tasks.get(task_id)
            except TaskRecordUnusable as exc:
                # One odd record is no reason to stop recovering every other task.
                rows.append(Row(task_id, UNUSABLE_RECORD, SKIPPED, printable(exc)))
                continue
            state = record.state.value if record is not None else "expired"
            if record is not None and record.state is TaskState.STORED:
                rows.append(Row(task_id, state, SKIPPED, "already stored"))
                continue
            try:
                result = poller.poll(task_id)
            except (ProviderError, QueueUnavailable) as exc:
                failure = exc
                break
            except TaskRecordUnusable as exc:
                rows.append(Row(task_id, UNUSABLE_RECORD, QUEUED_UNMARKED, printable(exc)))
                continue
            except redis.RedisError as exc:
                # A poll's only Redis call is the mark after its result was queued (the queue's
                # errors are QueueUnavailable): the operator must learn that this one was queued.
                note = f"Redis failed marking it received: {type(exc).__name__}"
                rows.append(Row(task_id, state, PollOutcome.QUEUED.value, note))
                raise
            rows.append(Row(task_id, state, result.outcome.value, result.detail))
    except redis.RedisError as exc:
        _print(rows, as_json)  # the tasks handled before Redis failed: some may be queued already
        raise click.ClickException(redis_failure(exc)) from exc
    except KeyboardInterrupt:
        _print(rows, as_json)  # the tasks handled before Ctrl-C: some may be queued already
        click.echo(
            "Error: interrupted: the tasks listed were handled, the others not polled (the one"
            " being polled may have been queued too)",
            err=True,
        )
        raise SystemExit(EXIT_INTERRUPTED) from None
    finally:
        provider.close()
        client.close()
    _print(rows, as_json)
    if failure is not None:
        _stop(failure)


def _stop(failure: ProviderError | QueueUnavailable) -> NoReturn:
    """One line saying why the rows printed are all there are, and its exit code."""
    if isinstance(failure, QueueUnavailable):
        click.echo(f"Error: stopped: the queue refused: {printable(failure)}", err=True)
        raise SystemExit(1)
    click.echo(f"Error: stopped: {printable(failure)}", err=True)
    raise SystemExit(EXIT_UNAVAILABLE if isinstance(failure, ProviderUnavailable) else EXIT_REFUSED)


def _print(rows: list[Row], as_json: bool) -> None:
    if as_json:
        echo_json([row.json() for row in rows])
        return
    for row in rows:
        click.echo(f"{printable(row.task_id)}  {row.state} -> {row.outcome}: {printable(row.detail)}")
    click.echo(_summary(rows))


def _summary(rows: list[Row]) -> str:
    """How many rows, and how many came to each end: every row counted once, so the counts add up."""
    counts = Counter(_counted_as(row) for row in rows)
    ends = [*SUMMARY_ORDER, *(end for end in counts if end not in SUMMARY_ORDER)]
    shown = [f"{counts[end]} {end}" for end in ends if counts[end] or end in ALWAYS_COUNTED]
    return f"{len(rows)} task(s): " + ", ".join(shown)


def _counted_as(row: Row) -> str:
    if row.outcome == SKIPPED:
        if row.state == UNREADABLE_ID:
            return "skipped (id not UTF-8)"
        return "skipped (record unusable)" if row.state == UNUSABLE_RECORD else "already stored"
    return COUNTED_AS.get(row.outcome, row.outcome)
