"""``mjhook rejected``: the callbacks the ingress refused (kept in Redis for inspection), with
why; replay those whose cause is mended (a token or key that was set wrong, a limit too low)."""

from __future__ import annotations

from dataclasses import replace

import click
from rich.console import Console
from rich.table import Table

from cli.output import echo_json, list_options, printable_text
from cli.services import reported_failures, task_store
from cli.settings import pass_settings
from shared.callback import callback_limits, without_callback_url
from shared.printable import printable
from shared.queue import enqueue_broker_beside, queue_callback
from shared.rejected import count_rejected, list_rejected, replay_rejected
from shared.settings import Settings

#: Rejected callbacks ``rejected list`` shows unless told otherwise.
DEFAULT_LIST_LIMIT = 100
#: Characters of a body the table shows (``--json`` gives all that was kept).
BODY_PREVIEW_CHARS = 120


@click.group()
def rejected() -> None:
    """Callbacks the ingress refused (4xx): list, replay."""


@rejected.command("list")
@list_options(DEFAULT_LIST_LIMIT)
@pass_settings
def list_command(settings: Settings, as_json: bool, limit: int) -> None:
    """Rejected callbacks, most recent first, with the answer they got and the start of the body.

    JSON: {"total", "rejected": [{"id", "at", "status", "reason", "remoteAddr", "contentType",
    "bodySize", "truncated", "bodyLossy", "body"}]}; "id" is what replay takes. A callBackUrl in
    the body (the provider echoes it in promptJson, with the callback token) is shown emptied.
    """
    store = task_store(settings)
    with reported_failures():
        total = count_rejected(store.client)
        entries = list_rejected(store.client, limit=limit)
    # Shown without the callBackUrl the provider echoes in promptJson (MJHOOK_CALLBACK_TOKEN in it;
    # a terminal or a pasted report travels further than Redis); replay sends the body as kept.
    entries = [replace(entry, body=without_callback_url(entry.body) or "") for entry in entries]
    if as_json:
        echo_json({"total": total, "rejected": [entry.to_json() for entry in entries]})
        return
    table = Table(title=f"Rejected callbacks: {len(entries)} of {total}", title_justify="left")
    table.add_column("id", no_wrap=True)  # whole, to be copied into replay
    for name in ("at", "status"):
        table.add_column(name, no_wrap=True)
    for name in ("reason", "from", "bytes", "body"):
        table.add_column(name, overflow="fold")
    for entry in entries:
        body = entry.body[:BODY_PREVIEW_CHARS] + ("…" if len(entry.body) > BODY_PREVIEW_CHARS else "")
        # Every string here came from the internet: never markup, never terminal controls.
        table.add_row(
            printable_text(entry.id),
            printable_text(entry.at),
            str(entry.status),
            printable_text(entry.reason),
            printable_text(entry.remote_addr),
            str(entry.body_size),
            printable_text(body),
        )
    Console().print(table)


@rejected.command()
@click.argument("ids", nargs=-1, required=True)
@pass_settings
def replay(settings: Settings, ids: tuple[str, ...]) -> None:
    """Queue the rejected callbacks IDS as if the ingress had accepted them when they came.

    Each is checked again like any callback (JSON, schema, taskId, the MJHOOK_* limits as they are
    now), but not against the token, signature or source address: naming it is vouching for it.
    A callback kept only in part (body larger than MJHOOK_REJECTED_BODY_BYTES) cannot be
    replayed, nor one whose task's record in Redis is unusable (it stays listed; the others are
    replayed). Each leaves the list once queued. Exit code 1 when an ID is not kept, cannot be
    replayed, or the queue refused (the replay stops there).
    """
    store = task_store(settings)
    with reported_failures():
        broker = enqueue_broker_beside(settings, store.client)
        result = replay_rejected(
            store.client,
            ids,
            limits=callback_limits(settings),
            queue=lambda callback: queue_callback(broker, store, callback),
        )
    for entry_id, task_id in result.replayed:
        click.echo(f"replayed {entry_id}: task {task_id} queued")
    click.echo(f"{len(result.replayed)} rejected callback(s) replayed")
    problems = [f"not kept: {printable(entry_id)}" for entry_id in result.missing]
    problems += [f"cannot be replayed: {entry_id}: {printable(why)}" for entry_id, why in result.refused]
    if result.error is not None:
        problems.append(f"stopped: {result.error}")
    if problems:
        raise click.ClickException("\n".join(problems))
