"""``mjhook``: the operator's command line. Reads the environment once, here."""

from __future__ import annotations

import os

import click

from cli.dlq import dlq
from cli.get import get
from cli.recover import recover
from cli.rejected import rejected
from cli.settings import SettingsFromEnv
from cli.simulate import simulate
from cli.spool import spool
from cli.status import status
from cli.submit import submit, upscale, vary
from cli.tasks import tasks


@click.group()
@click.pass_context
def main(ctx: click.Context) -> None:
    """mjhook: Midjourney result callbacks into your own object storage."""
    # Read when a command runs (cli/settings.py): past its --help, and reported like its failures
    ctx.obj = SettingsFromEnv(os.environ)


main.add_command(status)
main.add_command(dlq)
main.add_command(tasks)
main.add_command(get)
main.add_command(simulate)
main.add_command(submit)
main.add_command(upscale)
main.add_command(vary)
main.add_command(recover)
main.add_command(rejected)
main.add_command(spool)
