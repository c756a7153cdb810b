"""``mjhook tasks``: the most recently changed tasks, with their state and reason."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from cli.output import echo_json, printable_text
from cli.params import LIMIT
from cli.services import reported_failures, task_store
from cli.settings import pass_settings
from shared.clock import record_millis, utc_iso
from shared.settings import Settings
from shared.taskstate import TaskRecord, TaskState

#: Tasks listed unless told otherwise.
DEFAULT_LIMIT = 20


@click.command()
@click.option(
    "--state",
    type=click.Choice([state.value for state in TaskState]),
    default=None,
    help="Only tasks now in this state.",
)
@click.option("--limit", type=LIMIT, default=DEFAULT_LIMIT, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list.")
@pass_settings
def tasks(settings: Settings, state: str | None, limit: int, as_json: bool) -> None:
    """The most recently changed tasks, newest first.

    JSON: [{"taskId", "state", "updatedAt", "receivedAt", "code", "reason"}], times in ISO 8601 UTC.
    """
    with reported_failures():
        records = task_store(settings).recent(state=TaskState(state) if state else None, limit=limit)
    rows = [task_json(record) for record in records]
    if as_json:
        echo_json(rows)
        return
    table = Table(title=f"Tasks ({state or 'any state'}), newest first", title_justify="left")
    for name in ("taskId", "state", "updatedAt", "reason"):
        table.add_column(name, overflow="fold")
    for row in rows:
        # A reason may quote the provider's (or a forged callback's) msg: never markup, no controls
        table.add_row(
            *(printable_text(row[name] or "-") for name in ("taskId", "state", "updatedAt", "reason"))
        )
    Console().print(table)


def task_json(record: TaskRecord) -> dict[str, str | None]:
    """A task record as JSON: its fields, with ``updatedAt`` (Unix ms in Redis) in ISO 8601 UTC."""
    return {
        "taskId": record.task_id,
        "state": record.state.value,
        "updatedAt": _iso_from_millis(record.fields.get("updatedAt")),
        "receivedAt": record.fields.get("receivedAt"),
        "code": record.fields.get("code"),
        "reason": record.fields.get("reason"),
    }


def _iso_from_millis(value: str | None) -> str | None:
    """Unix ms as ISO 8601 UTC, or None when ``value`` holds no time this version can show (see
    :func:`shared.clock.record_millis`, or beyond the calendar)."""
    millis = record_millis(value)
    try:
        return utc_iso(millis / 1000) if millis is not None else None
    except (OverflowError, OSError):  # beyond a float or datetime's years
        return None
