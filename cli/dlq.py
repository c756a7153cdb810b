"""``mjhook dlq``: the dead-lettered messages of the callback queue, with their reasons; replay
them onto the queue or purge them."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import click
import redis
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cli.output import EXIT_INTERRUPTED, echo_json, format_age, list_options, printable_text
from cli.services import enqueue_broker, queue_redis, reported_failures, task_store
from cli.settings import pass_settings
from shared.clock import utc_iso
from shared.dead_letters import (
    DeadLetter,
    ReplayResult,
    count_dead,
    dead_among,
    dead_ids,
    list_dead,
    named_ids,
    purge_dead,
    replay_dead,
    shown_id,
)
from shared.printable import printable
from shared.queue import BROKER_NAMESPACE, CALLBACK_QUEUE, POLL_QUEUE, QUEUES
from shared.redis_client import redis_or_host_millis
from shared.settings import Settings

#: Dead letters ``dlq list`` shows unless told otherwise.
DEFAULT_LIST_LIMIT = 100

#: Ids a purge's question names one by one; beyond, it gives how many more.
MAX_IDS_ASKED = 10


@click.group()
@click.option(
    "--queue",
    type=click.Choice(QUEUES),
    default=CALLBACK_QUEUE,
    show_default=True,
    help=f"Whose dead letters: the callbacks', or the polling fallback's passes ({POLL_QUEUE}).",
)
@click.pass_context
def dlq(ctx: click.Context, queue: str) -> None:
    """Dead-lettered messages: list, replay, purge."""
    ctx.meta[QUEUE_KEY] = queue


#: Where the group keeps the queue chosen with --queue, in the click context's meta.
QUEUE_KEY = "mjhook.dlq.queue"


def _queue() -> str:
    """The queue chosen with ``mjhook dlq --queue`` (the callbacks' by default)."""
    return str(click.get_current_context().meta.get(QUEUE_KEY, CALLBACK_QUEUE))


@dlq.command("list")
@list_options(DEFAULT_LIST_LIMIT)
@pass_settings
def list_command(settings: Settings, as_json: bool, limit: int) -> None:
    """Dead letters, most recent first, with their taskId and reason.

    JSON: {"queue", "total", "messages": [{"id", "messageId", "taskId", "actor", "retries",
    "deadAt", "ageSeconds", "reason", "reasonSource"}]}; "id" is what replay and purge take;
    "deadAt" and "ageSeconds" are null for a letter whose time is no date (written by hand); the
    bytes of an id that is no UTF-8 text are shown as \\xNN escapes.
    """
    client = queue_redis(settings)
    with reported_failures():
        total = count_dead(client, namespace=BROKER_NAMESPACE, queue=_queue())
        letters = list_dead(
            client, namespace=BROKER_NAMESPACE, queue=_queue(), tasks=task_store(settings), limit=limit
        )
        now_ms = redis_or_host_millis(client)  # the clock dramatiq's brokers stamp dead letters with
    if as_json:
        echo_json(
            {
                "queue": _queue(),
                "total": total,
                "messages": [_letter_json(letter, now_ms) for letter in letters],
            }
        )
        return
    table = Table(title=f"Dead letters of {_queue()}: {len(letters)} of {total}", title_justify="left")
    table.add_column("id", no_wrap=True)  # whole, to be copied into replay or purge
    for name in ("taskId", "retries", "age", "reason"):
        table.add_column(name, overflow="fold")
    for letter in letters:
        # These strings come from the queue: never markup ("[...]"), never terminal controls
        table.add_row(
            printable_text(shown_id(letter.id)),
            printable_text(letter.task_id or "-"),
            str(letter.retries),
            format_age(letter.age_s(now_ms)),
            Text.assemble(printable_text(letter.reason), (f" ({letter.reason_source})", "dim")),
        )
    Console().print(table)


def _letter_json(letter: DeadLetter, now_ms: int) -> dict[str, object]:
    age_s = letter.age_s(now_ms)
    return {
        "id": shown_id(letter.id),
        "messageId": letter.message_id,
        "taskId": letter.task_id,
        "actor": letter.actor,
        "retries": letter.retries,
        "deadAt": None if letter.dead_at_ms is None else utc_iso(letter.dead_at_ms / 1000),
        "ageSeconds": None if age_s is None else round(age_s, 3),
        "reason": letter.reason,
        "reasonSource": letter.reason_source.value,
    }


@dlq.command()
@click.argument("ids", nargs=-1)
@pass_settings
def replay(settings: Settings, ids: tuple[str, ...]) -> None:
    """Put dead letters (the IDs given, or all) back on the queue with their retries reset.

    Each leaves the dead letters only once the broker has taken it. Exit code 1 when an ID is not
    a dead letter, the broker refused one or Redis failed (after the lines of those replayed).
    """
    client = queue_redis(settings)
    result = ReplayResult()
    try:
        with reported_failures():
            ids = _named(client, ids)
            replay_dead(
                client,
                enqueue_broker(settings, client),
                namespace=BROKER_NAMESPACE,
                queue=_queue(),
                ids=ids or None,
                result=result,
            )
    except KeyboardInterrupt:
        _echo_replayed(result)
        click.echo(
            "Error: interrupted: the letters listed were replayed, the others not (the one being"
            " replayed may be on the queue too, and still a dead letter)",
            err=True,
        )
        raise SystemExit(EXIT_INTERRUPTED) from None
    _echo_replayed(result)
    problems = [f"not a dead letter: {_shown(dead_id)}" for dead_id in result.missing]
    problems += [f"cannot be decoded, left in place: {_shown(dead_id)}" for dead_id in result.unreadable]
    if result.error is not None:
        problems.append(f"stopped: {result.error}")
    _fail_on(problems)


def _echo_replayed(result: ReplayResult) -> None:
    for dead_id, new_id in result.replayed:
        click.echo(f"replayed {_shown(dead_id)} as {new_id}")
    click.echo(f"{len(result.replayed)} dead letter(s) replayed onto {_queue()}")


def stdin_is_terminal() -> bool:
    """Whether a person may be typing at this command: its stdin is a terminal (not a pipe, a file
    or the nothing a cron job gets)."""
    return sys.stdin is not None and sys.stdin.isatty()


def purge_command(*, is_terminal: Callable[[], bool] = stdin_is_terminal) -> click.Command:
    """``dlq purge``; ``is_terminal`` says whether a person is there to be asked first."""

    @click.command("purge")
    @click.argument("ids", nargs=-1)
    @click.option("--yes", is_flag=True, help="Purge without asking.")
    @pass_settings
    def purge(settings: Settings, ids: tuple[str, ...], yes: bool) -> None:
        """Drop dead letters (the IDs given, or all) for good.

        At a terminal it first asks (default no); answering no purges nothing, exit code 1. With
        --yes, or when stdin is not a terminal (a script, cron), it does not ask. Exit code 1 when
        an ID is not a dead letter.
        """
        client = queue_redis(settings)
        with reported_failures():
            ids = _named(client, ids)
        chosen: Sequence[str] | None = ids or None
        if not yes and is_terminal():
            chosen = _confirm_purge(client, ids)
        with reported_failures():
            result = purge_dead(client, namespace=BROKER_NAMESPACE, queue=_queue(), ids=chosen)
        click.echo(f"{len(result.removed)} dead letter(s) purged from {_queue()}")
        _fail_on([f"not a dead letter: {_shown(dead_id)}" for dead_id in result.missing])

    return purge


def _confirm_purge(client: redis.Redis, ids: tuple[str, ...]) -> list[str]:
    """Ask the operator whether to drop ``ids`` (all when empty), saying which or how many (of
    ``ids``, those that are dead letters: the others are only said to be none), and return the ids
    agreed to: for "all", those there were when asked, so a letter dead-lettered while the
    question was on screen is kept. Nothing to drop: no question. Answering no: exit code 1."""
    if ids:
        chosen = list(dict.fromkeys(ids))  # an id named twice is purged once
        with reported_failures():
            dead = dead_among(client, chosen, namespace=BROKER_NAMESPACE, queue=_queue())
        if not dead:
            return chosen  # nothing to drop: the purge says which are not dead letters
        named = ", ".join(_shown(dead_id) for dead_id in dead[:MAX_IDS_ASKED])
        more = f" and {len(dead) - MAX_IDS_ASKED} more" if len(dead) > MAX_IDS_ASKED else ""
        others = len(chosen) - len(dead)
        other = f" ({others} other id(s) named: not dead letters)" if others else ""
        question = f"Purge {len(dead)} dead letter(s) of {_queue()} for good: {named}{more}{other}?"
    else:
        with reported_failures():
            chosen = dead_ids(client, namespace=BROKER_NAMESPACE, queue=_queue())
        if not chosen:
            return chosen
        question = f"Purge all {len(chosen)} dead letter(s) of {_queue()} for good?"
    if not click.confirm(question, default=False, err=True):
        raise click.ClickException("nothing purged")
    return chosen


dlq.add_command(purge_command())


def _named(client: redis.Redis, ids: tuple[str, ...]) -> tuple[str, ...]:
    """The dead letters ``ids`` name, an id shown escaped by ``dlq list`` (one that is no UTF-8
    text) naming its letter (:func:`shared.dead_letters.named_ids`)."""
    return tuple(named_ids(client, ids, namespace=BROKER_NAMESPACE, queue=_queue())) if ids else ids


def _shown(dead_id: str) -> str:
    """A dead letter's id as a terminal may show it: bytes that are no UTF-8 and controls escaped."""
    return printable(shown_id(dead_id))


def _fail_on(problems: list[str]) -> None:
    if problems:
        raise click.ClickException("\n".join(problems))
