"""``mjhook status``: queue depths, live workers and task counts, read from Redis alone, so it
answers with every worker down. With the queue in RabbitMQ, the task counts alone (RabbitMQ's own
tools show its queues)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import click
import redis
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from cli.output import echo_json, format_age
from cli.params import seconds
from cli.services import queue_redis, redis_failure, reported_failures, task_store
from cli.settings import pass_settings
from shared import keys
from shared.clock import utc_iso
from shared.queue import BROKER_NAMESPACE, QUEUES, queue_is_in_redis
from shared.queue_stats import QueueStats, StatusReading, read_status
from shared.redis_durability import clients_to_check
from shared.settings import Settings

#: Seconds between two refreshes of ``--watch``.
DEFAULT_INTERVAL_S = 2.0


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (with --watch: one a line).")
@click.option("--watch", is_flag=True, help="Refresh a live view until Ctrl-C.")
@click.option(
    "--interval",
    type=seconds(min=0.1),
    default=DEFAULT_INTERVAL_S,
    show_default=True,
    help="Seconds between refreshes with --watch.",
)
@pass_settings
def status(settings: Settings, as_json: bool, watch: bool, interval: float) -> None:
    """Queue depths, live workers and task counts, from Redis only.

    JSON: {"queues": {NAME: {"ready", "delayed", "in_flight", "dead", "held_by_dead",
    "oldest_ready_age_s"}}, "workers", "tasks": {STATE: N}, "per_minute": {STATE: [10 counts,
    oldest minute first]}, "submitted": {...}, "rejected": N, "taken_at_ms", "redis_durability":
    [what in Redis can lose acknowledged callbacks, one sentence each; [] when it runs with
    appendonly yes, appendfsync always, maxmemory-policy noeviction]}. Workers are live
    worker processes: a heartbeat within MJHOOK_REDELIVERY_S, from a broker that registered as a
    worker or holds messages.
    With the queue in RabbitMQ (MJHOOK_BROKER_URL=amqp://...), only the task numbers: "queues" is
    {} and "workers" null, and RabbitMQ is not contacted.
    """
    read = status_reader(settings)
    if not watch:
        # Ctrl-C here is click's "Aborted!", exit 1: a script must not take no output for a reading.
        with reported_failures():
            reading = read()
        if as_json:
            echo_json(reading.to_json())
        else:
            Console().print(render_status(reading))
        return
    try:
        if as_json:
            _stream_json(read, interval)
        else:
            _live_view(read, interval)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a watch ends


def status_reader(
    settings: Settings, *, clock: Callable[[], float] = time.time
) -> Callable[[], StatusReading]:
    """A function reading one :class:`StatusReading` each call, over connections kept open.
    With the queue in RabbitMQ, it reads task state only (no queues, no workers)."""
    client = queue_redis(settings) if queue_is_in_redis(settings) else None
    tasks = task_store(settings)
    durable = clients_to_check(settings, tasks.client, client)

    def read() -> StatusReading:
        snapshot = read_status(
            client,
            tasks,
            namespace=BROKER_NAMESPACE,
            queues=list(QUEUES),
            heartbeat_timeout_ms=settings.redelivery_s * 1000,
            poll_grace_s=settings.poll_grace_s,
            now_ms=int(clock() * 1000),
        )
        return StatusReading.of(snapshot, durable)

    return read


def _stream_json(read: Callable[[], StatusReading], interval_s: float) -> None:
    while True:
        try:
            echo_json(read().to_json())
        except redis.RedisError as exc:
            click.echo(redis_failure(exc), err=True)
        time.sleep(interval_s)


def _live_view(read: Callable[[], StatusReading], interval_s: float) -> None:
    with Live(_view(read), console=Console(), auto_refresh=False) as live:
        while True:
            time.sleep(interval_s)
            live.update(_view(read), refresh=True)


def _view(read: Callable[[], StatusReading]) -> RenderableType:
    try:
        return render_status(read())
    except redis.RedisError as exc:
        return Text(f"{redis_failure(exc)} (retrying)", style="bold red")


#: Shown in place of the queue table when the queue is in RabbitMQ.
QUEUE_NOT_IN_REDIS = (
    "Queue depths not shown: the queue is in RabbitMQ. "
    "See RabbitMQ's own management tools (management UI, rabbitmqctl list_queues)."
)


def render_status(reading: StatusReading) -> RenderableType:
    """The status as tables: Redis durability, queues, workers, tasks per state, finished tasks
    per minute."""
    snapshot = reading.snapshot
    if snapshot.queues is None:
        queues: RenderableType = Text(QUEUE_NOT_IN_REDIS, style="yellow")
    else:
        queues = _queue_table(snapshot.queues)
    tasks = Table(title="Tasks", title_justify="left")
    counted = {**snapshot.tasks, **snapshot.submitted}
    for name in counted:
        tasks.add_column(name, justify="right")
    tasks.add_row(*(str(count) for count in counted.values()))
    minutes = max((len(counts) for counts in snapshot.per_minute.values()), default=0)
    rates = Table(title=f"Finished per minute, last {minutes} min (oldest first)", title_justify="left")
    rates.add_column("state")
    rates.add_column("per minute")
    rates.add_column("total", justify="right")
    for name, counts in snapshot.per_minute.items():
        rates.add_row(name, " ".join(f"{count:>3}" for count in counts), str(sum(counts)))
    if snapshot.rejected is None:
        rejected = Text(
            f"Rejected callbacks kept: unknown ({keys.REJECTED} or {keys.REJECTED_UNAUTHENTICATED}"
            " is not a list)",
            style="bold yellow",
        )
    else:
        rejected = Text(
            f"Rejected callbacks kept: {snapshot.rejected}"
            + (" (mjhook rejected list)" if snapshot.rejected else ""),
            style="bold yellow" if snapshot.rejected else "",
        )
    taken = Text(f"as of {utc_iso(snapshot.taken_at_ms / 1000)}", style="dim")
    return Group(
        _durability_lines(reading.durability),
        queues,
        _workers_line(snapshot.workers),
        rejected,
        tasks,
        rates,
        taken,
    )


def _durability_lines(problems: Iterable[str]) -> Text:
    """``Redis durability: ok``, or that line and one per problem."""
    problems = list(problems)
    if not problems:
        return Text("Redis durability: ok")
    lines = ["Redis durability:", *(f"  - {problem}" for problem in problems)]
    return Text("\n".join(lines), style="bold red")


def _queue_table(stats: Iterable[QueueStats]) -> Table:
    queues = Table(title="Queues", title_justify="left")
    for name in ("queue", "ready", "delayed", "in flight", "dead", "oldest ready"):
        queues.add_column(name, justify="left" if name == "queue" else "right")
    for queue in stats:
        in_flight = str(queue.in_flight)
        if queue.held_by_dead:
            in_flight += f" ({queue.held_by_dead} held by dead workers)"
        queues.add_row(
            queue.name,
            str(queue.ready),
            str(queue.delayed),
            in_flight,
            Text(str(queue.dead), style="bold red" if queue.dead else ""),
            format_age(queue.oldest_ready_age_s),
        )
    return queues


def _workers_line(workers: int | None) -> Text:
    if workers is None:
        # RabbitMQ workers do not register in Redis: their consumers show in RabbitMQ.
        return Text("Workers alive: unknown (RabbitMQ lists the consumers)", style="dim")
    return Text(f"Workers alive: {workers}", style="bold" if workers else "bold red")
