"""``python -m workers workers.tasks [dramatiq's options]``: ``dramatiq`` itself, its main process
logging like every mjhook process (``MJHOOK_LOG_FORMAT``, ``MJHOOK_LOG_LEVEL``).

``dramatiq workers.tasks`` (the contract's command, which still works) leaves the main process
in dramatiq's own text format: under ``MJHOOK_LOG_FORMAT=json`` its few lines (booting, signals,
"worker exited unexpectedly") would be the only ones a JSON log pipeline cannot read, the crash
line among them. Here the main process logs in mjhook's format through the stream dramatiq gives
it (its log pipe: to ``--log-file`` when given, else stderr); the worker processes configure
theirs when they import ``workers.tasks`` (over dramatiq's, which logs anything before that).
docker compose and ``make up`` start the workers this way."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import IO, Any

import dramatiq.cli

from shared.errors import ConfigError
from shared.logs import configure_logging
from shared.settings import Settings


def main(argv: Sequence[str] | None = None) -> int:
    """Run dramatiq with ``argv`` (default: this command's arguments); its exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    # dramatiq reloads (SIGHUP, --watch) by exec'ing sys.argv: this command again, not the path
    # of this file, which is no executable.
    sys.argv = [sys.executable, "-m", "workers", *arguments]
    # dramatiq has no option for its main process's log format; this is the one function it
    # calls to set it up, with the stream to log to.
    dramatiq.cli.setup_parent_logging = _parent_logging(settings)
    parsed = dramatiq.cli.make_argument_parser().parse_args(arguments)  # type: ignore[no-untyped-call]
    return int(dramatiq.cli.main(parsed) or 0)  # type: ignore[no-untyped-call]


def _parent_logging(settings: Settings) -> Callable[..., logging.Logger]:
    def setup_parent_logging(args: Any, *, stream: IO[str] = sys.stderr) -> logging.Logger:
        configure_logging(settings.log_level, settings.log_format, stream=stream)
        return logging.getLogger("dramatiq.MainProcess")

    return setup_parent_logging


if __name__ == "__main__":
    sys.exit(main())
