"""The settings a command receives: read from the environment the group kept, only once the
command's own arguments parsed, so ``--help`` works whatever the settings, and a bad setting is
one ``Error: ...`` line (exit code 1) like every other failure of the CLI."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import update_wrapper
from typing import Concatenate, ParamSpec, TypeVar

import click

from shared.errors import ConfigError
from shared.printable import printable
from shared.settings import Settings

P = ParamSpec("P")
R = TypeVar("R")


class SettingsFromEnv:
    """The settings of one run of ``mjhook``, read from ``environ`` on first use."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = dict(environ)
        self._settings: Settings | None = None

    def get(self) -> Settings:
        """The settings; a ClickException (exit code 1) saying what is wrong with them."""
        if self._settings is None:
            try:
                self._settings = Settings.from_env(self._environ)
            except ConfigError as exc:
                raise click.ClickException(printable(exc)) from None
        return self._settings


def pass_settings(command: Callable[Concatenate[Settings, P], R]) -> Callable[P, R]:
    """Like ``click.pass_obj``, passing the Settings: the context's object is a
    :class:`SettingsFromEnv` (what ``mjhook`` gives its commands), or a Settings as is (a program
    or a test invoking a command with ``obj=``)."""

    def with_settings(*args: P.args, **kwargs: P.kwargs) -> R:
        source = click.get_current_context().obj
        settings = source if isinstance(source, Settings) else source.get()
        return command(settings, *args, **kwargs)

    return update_wrapper(with_settings, command)
