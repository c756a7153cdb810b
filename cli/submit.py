"""``mjhook submit``, ``mjhook upscale``, ``mjhook vary``: submit a task to the provider with our
callback URL, record it as ``submitted`` (so the polling fallback finds it if no callback comes)
and print its taskId.

Exit codes: 0 submitted and recorded; 1 Redis unavailable (nothing submitted) or a provider
answer in its format without a taskId; 2 configuration or usage (MJHOOK_PROVIDER_API_KEY,
MJHOOK_PUBLIC_URL); 3 the provider refused (bad key, no credits, invalid request, 501, 505: do not
retry as is); 4 the provider is unavailable, rate limiting or answering outside its format, still
after retries (try again later); 5 submitted (the taskId is printed) but not recorded, so nothing
polls for it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

import click
import redis

from cli.params import UTF8_TEXT
from cli.services import redis_failure
from cli.settings import pass_settings
from shared.callback import TASK_ID_PATTERN
from shared.errors import ConfigError, ProviderError, ProviderRefused, ProviderUnavailable
from shared.printable import printable, shortened
from shared.settings import Settings
from shared.submit import Submission, TaskSubmitter, open_submitter

EXIT_REFUSED = 3
EXIT_UNAVAILABLE = 4
EXIT_NOT_RECORDED = 5
#: Characters of the provider's taskId printed: one it answers is not bounded.
MAX_SHOWN_TASK_ID_CHARS = 200

#: ``taskType`` values of ``/api/v1/mj/generate``.
TASK_TYPES = (
    "mj_txt2img",
    "mj_img2img",
    "mj_style_reference",
    "mj_omni_reference",
    "mj_video",
    "mj_video_hd",
)
SPEEDS = ("relaxed", "fast", "turbo")


@click.command()
@click.argument("prompt", type=UTF8_TEXT)
@click.option("--task-type", type=click.Choice(TASK_TYPES), default="mj_txt2img", show_default=True)
@click.option("--aspect-ratio", type=UTF8_TEXT, default=None, help="e.g. 16:9")
@click.option("--version", "version", type=UTF8_TEXT, default=None, help="Midjourney model version, e.g. 7")
@click.option("--speed", type=click.Choice(SPEEDS), default=None)
@click.option(
    "--file-url",
    "file_urls",
    type=UTF8_TEXT,
    multiple=True,
    help="An input image (repeatable); needed by the reference and video task types.",
)
@pass_settings
def submit(
    settings: Settings,
    prompt: str,
    task_type: str,
    aspect_ratio: str | None,
    version: str | None,
    speed: str | None,
    file_urls: tuple[str, ...],
) -> None:
    """Submit a generation of PROMPT and print its taskId.

    Its result comes by callback to MJHOOK_PUBLIC_URL, or by the workers' polling when no callback
    comes. Exit codes: 3 the provider refused, 4 it is unavailable (try later), 5 submitted but
    not recorded (see the module docs)."""
    _run(
        settings,
        lambda submitter: submitter.generate(
            prompt,
            task_type=task_type,
            aspect_ratio=aspect_ratio,
            version=version,
            speed=speed,
            file_urls=file_urls,
        ),
    )


@click.command()
@click.argument("task_id", type=UTF8_TEXT)
@click.argument("index", type=click.IntRange(0, 3))
@pass_settings
def upscale(settings: Settings, task_id: str, index: int) -> None:
    """Upscale image INDEX (0-3) of TASK_ID; print the new taskId."""
    _run(settings, lambda submitter: submitter.upscale(task_id, index))


@click.command()
@click.argument("task_id", type=UTF8_TEXT)
@click.argument("index", type=click.IntRange(0, 3))
@pass_settings
def vary(settings: Settings, task_id: str, index: int) -> None:
    """A variation of image INDEX (0-3) of TASK_ID; print the new taskId."""
    _run(settings, lambda submitter: submitter.vary(task_id, index))


def _run(settings: Settings, submit_with: Callable[[TaskSubmitter], Submission]) -> None:
    with _submitter(settings) as submitter:
        try:
            submission = submit_with(submitter)
        except ProviderRefused as exc:
            _fail(str(exc), EXIT_REFUSED)
        except ProviderUnavailable as exc:
            _fail(f"{exc} (try again later)", EXIT_UNAVAILABLE)
        except ProviderError as exc:
            raise click.ClickException(printable(exc)) from exc
    # The provider's words: no terminal control, and not megabytes of them
    shown_id = printable(shortened(submission.task_id, MAX_SHOWN_TASK_ID_CHARS))
    click.echo(shown_id)
    if not TASK_ID_PATTERN.fullmatch(submission.task_id):
        _fail(
            "the task was submitted but its taskId is not one mjhook can use (1-128 letters, digits,"
            " '_' or '-', starting with a letter or digit): the ingress refuses its callback and"
            " nothing polls for it, so none of its results will be stored",
            EXIT_NOT_RECORDED,
        )
    if submission.not_recorded:
        _fail(
            f"task {shown_id} was submitted but not recorded ({submission.not_recorded}): "
            "its callback is still processed, but nothing polls for it if the callback never comes",
            EXIT_NOT_RECORDED,
        )


@contextmanager
def _submitter(settings: Settings) -> Iterator[TaskSubmitter]:
    try:
        with open_submitter(settings) as submitter:
            yield submitter
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    except redis.RedisError as exc:
        what, _, why = redis_failure(exc).partition(": ")
        raise click.ClickException(f"{what}, nothing submitted: {why}") from exc


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"Error: {printable(message)}", err=True)
    raise SystemExit(code)
