"""``mjhook spool``: the ingress's local spool on this host (callbacks acknowledged while Redis was
away, waiting for a drain), and the callbacks its drain set aside because the queue refused them
for good; hand those back to the drain once their cause is fixed."""

from __future__ import annotations

import os
from pathlib import Path

import click

from cli.output import echo_json
from cli.params import escaped_bytes
from cli.settings import pass_settings
from ingress.spool import UNQUEUED_NAME, Spool
from shared.printable import printable
from shared.settings import Settings


@click.group()
def spool() -> None:
    """The ingress's local spool on this host: status, requeue."""


@spool.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_settings
def status_command(settings: Settings, as_json: bool) -> None:
    """Callbacks waiting in the spool for a drain, and those set aside (unqueued.jsonl).

    JSON: {"directory", "waiting", "waitingBytes", "setAside"}.
    """
    found = _spool(settings)
    try:
        waiting, waiting_bytes, set_aside = found.depth(), found.depth_bytes(), found.unqueued()
    except OSError as exc:
        raise click.ClickException(f"cannot read the spool in {_shown(found.directory)}: {exc}") from None
    if as_json:
        echo_json(
            {
                "directory": escaped_bytes(str(found.directory)),
                "waiting": waiting,
                "waitingBytes": waiting_bytes,
                "setAside": set_aside,
            }
        )
        return
    click.echo(f"spool {_shown(found.directory)}: {waiting} callbacks waiting ({waiting_bytes} bytes)")
    if set_aside:
        click.echo(f"{set_aside} set aside in {UNQUEUED_NAME}: `mjhook spool requeue` once fixed")


@spool.command("requeue")
@pass_settings
def requeue_command(settings: Settings) -> None:
    """Hand the callbacks the drain set aside (the queue refused them for good: their task's
    record in Redis unusable, an unforeseen error; the ingress log says which) back to the
    spool, once their cause is fixed. Every running ingress process drains the spool into the
    queue within MJHOOK_SPOOL_DRAIN_INTERVAL_S; one refused again is set aside again."""
    found = _spool(settings)
    try:
        moved = found.requeue_unqueued()
    except OSError as exc:
        raise click.ClickException(f"cannot requeue in {_shown(found.directory)}: {exc}") from None
    if moved:
        click.echo(f"{moved} callbacks moved back into the spool; the ingress drains them into the queue")
    else:
        click.echo("nothing set aside")


def _spool(settings: Settings) -> Spool:
    """The spool of ``MJHOOK_SPOOL_DIR``, its path made absolute (the default, ``.data/spool``, is
    relative: the one meant is the ingress's, not one under whatever directory this runs in); a
    ClickException when that directory does not exist (no ingress spooled here: 0 waiting would
    pass for a reading)."""
    if not settings.spool_dir:
        raise click.ClickException("the spool is off: MJHOOK_SPOOL_DIR is empty")
    directory = Path(os.path.abspath(settings.spool_dir))
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise click.ClickException(
            f"the spool directory {_shown(directory)} {what}: not the ingress's spool, or it never "
            "spooled (run this in the ingress's working directory, or set MJHOOK_SPOOL_DIR absolute)"
        )
    return Spool(directory, max_bytes=settings.spool_max_bytes)


def _shown(directory: Path) -> str:
    """The spool's path to print: a name whose bytes are not UTF-8 (MJHOOK_SPOOL_DIR is any bytes
    the file system takes) with those bytes escaped (``spool-\\xff``), no terminal control in it."""
    return printable(escaped_bytes(str(directory)))
