"""``mjhook``: the operator's command line. Reads the environment once, here."""

from __future__ import annotations

import os

import click

from shared.settings import Settings


@click.group()
@click.pass_context
def main(ctx: click.Context) -> None:
    """mjhook: Midjourney result callbacks into your own object storage."""
    ctx.obj = Settings.from_env(os.environ)
