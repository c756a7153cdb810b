"""``mjhook simulate``: the provider simulator (``serve``) and the load generator (``load``).
The commands only turn options into a :class:`SimulatorConfig`; the behaviour is in simulator/."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import click

from cli.output import echo_json
from cli.services import reported_failures
from cli.settings import pass_settings
from shared.logs import configure_logging
from shared.printable import printable
from shared.settings import Settings
from shared.storage import create_object_store
from simulator import FaultConfig, RunningSimulator, SimulatorConfig, run_simulator
from simulator.api_requests import deliverable_url
from simulator.config import DEFAULT_CALLBACK_TIMEOUT_S, DEFAULT_GENERATION_DELAY_S, DEFAULT_URL_TTL_S
from simulator.load import (
    DEFAULT_DOWNLOAD_GRACE_S,
    DEFAULT_SETTLE_TIMEOUT_S,
    DEFAULT_STORE_TIMEOUT_S,
    MAX_DELIVERY_THREADS,
    MIN_DELIVERY_THREADS,
    delivery_threads_for,
    run_load,
)

F = TypeVar("F", bound=Callable[..., Any])

#: The largest --width and --height, pixels: a PNG is made in memory per request.
MAX_IMAGE_SIDE = 8192

#: Option name -> (FaultConfig field, help). Shares are 0.0-1.0.
FAULT_SHARES = {
    "--fail-share": ("failure_share", "Tasks whose generation fails (code-500 callback)."),
    "--duplicate-share": ("duplicate_share", "Tasks whose callback is sent twice."),
    "--drop-share": ("drop_share", "Tasks completed without any callback (polling case)."),
    "--file-5xx-share": ("file_error_share", "Files answering 503 on their first request(s)."),
    "--file-slow-share": ("file_slow_share", "Files sent slowly (see --file-slow-delay)."),
    "--file-truncated-share": ("file_truncated_share", "Files cut short on their first request(s)."),
    "--file-expired-share": ("file_expired_share", "Files whose URL is issued already expired."),
}


def provider_options(function: F) -> F:
    """Options shared by ``serve`` and ``load``: the simulated provider and its faults."""
    options = [
        click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on."),
        click.option("--api-key", default="sim-api-key", show_default=True, help="Accepted Bearer key."),
        click.option("--hmac-key", default="", help="Sign callbacks with this webhook HMAC key."),
        click.option(
            "--time-scale",
            type=click.FloatRange(min=0, min_open=True),
            default=1.0,
            show_default=True,
            help="Factor on the 1/5/15-minute callback retry schedule (0.001 -> 60/300/900 ms).",
        ),
        click.option(
            "--callback-timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=DEFAULT_CALLBACK_TIMEOUT_S,
            show_default=True,
            help="Seconds to wait for a callback's answer.",
        ),
        click.option("--width", type=click.IntRange(1, MAX_IMAGE_SIDE), default=1024, show_default=True),
        click.option("--height", type=click.IntRange(1, MAX_IMAGE_SIDE), default=1024, show_default=True),
        click.option(
            "--url-ttl",
            type=click.FloatRange(min=0, min_open=True),
            default=DEFAULT_URL_TTL_S,
            show_default=True,
            help="Seconds a result URL stays valid and the media is kept (no fresh link after).",
        ),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the fault decisions."),
        *(
            click.option(
                name, field, type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True, help=text
            )
            for name, (field, text) in FAULT_SHARES.items()
        ),
        click.option(
            "--file-slow-delay",
            type=click.FloatRange(min=0),
            default=2.0,
            show_default=True,
            help="Seconds a slow file takes.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _config(options: dict[str, Any], **overrides: Any) -> SimulatorConfig:
    try:
        faults = FaultConfig(
            seed=options.pop("seed"),
            file_slow_delay_s=options.pop("file_slow_delay"),
            **{field: options.pop(field) for field, _ in FAULT_SHARES.values()},
        )
        return SimulatorConfig(
            host=options.pop("host"),
            api_key=options.pop("api_key"),
            hmac_key=options.pop("hmac_key"),
            time_scale=options.pop("time_scale"),
            callback_timeout_s=options.pop("callback_timeout"),
            image_width=options.pop("width"),
            image_height=options.pop("height"),
            url_ttl_s=options.pop("url_ttl"),
            faults=faults,
            **overrides,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


def _start_simulator(config: SimulatorConfig) -> RunningSimulator:
    """:func:`run_simulator`, a port already taken (or an address not this machine's) said in one
    line, exit code 1."""
    try:
        return run_simulator(config)
    except OSError as exc:
        where = f"{config.host}:{config.port}"
        raise click.ClickException(
            f"cannot listen on {printable(where)}: {printable(exc.strerror or exc)}"
        ) from exc


@click.group()
def simulate() -> None:
    """The provider simulator and load generator (all traffic stays on this machine)."""


@simulate.command()
@click.option("--port", type=click.IntRange(0, 65535), default=8090, show_default=True)
@click.option(
    "--generation-delay",
    type=click.FloatRange(min=0),
    default=DEFAULT_GENERATION_DELAY_S,
    show_default=True,
    help="Seconds from submission to result and callback.",
)
@click.option("--rate-limit", type=click.IntRange(min=0), default=0, help="Submissions per 10 s (0: none).")
@click.option("--public-url", default="", help="Base of result URLs [default: http://HOST:PORT].")
@provider_options
def serve(port: int, generation_delay: float, rate_limit: int, public_url: str, **options: Any) -> None:
    """Serve the provider's API, result files and callbacks until Ctrl-C."""
    config = _config(
        options, port=port, generation_delay_s=generation_delay, rate_limit=rate_limit, public_url=public_url
    )
    sim = _start_simulator(config)
    configure_logging("INFO")
    click.echo(f"simulator on {sim.base_url} (Authorization: Bearer {config.api_key}); Ctrl-C stops it")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()


@simulate.command()
@click.option("--tasks", "task_count", type=click.IntRange(min=1), default=100, show_default=True)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=20.0,
    show_default=True,
    help="Callbacks/s.",
)
@click.option("--callback-url", required=True, help="mjhook's callback URL (with ?token= if it needs one).")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=0, help="Port for result files [default: free]."
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, MAX_DELIVERY_THREADS),
    default=None,
    help=f"Callbacks in flight at most [default: RATE x --callback-timeout, {MIN_DELIVERY_THREADS}"
    f"-{MAX_DELIVERY_THREADS}]. Fewer, with a slow receiver, send below --rate (the report says).",
)
@click.option(
    "--settle-timeout",
    type=click.FloatRange(min=0),
    default=DEFAULT_SETTLE_TIMEOUT_S,
    show_default=True,
    help="Seconds, after the last callback is due, to wait for answers, duplicates and retries.",
)
@click.option(
    "--store-timeout",
    type=click.FloatRange(min=0),
    default=DEFAULT_STORE_TIMEOUT_S,
    show_default=True,
    help="Seconds to wait for manifests in the bucket (MJHOOK_S3_*); 0 skips the bucket.",
)
@click.option(
    "--download-grace",
    type=click.FloatRange(min=0),
    default=DEFAULT_DOWNLOAD_GRACE_S,
    show_default=True,
    help="With --store-timeout 0: seconds to keep serving result files after the callbacks, until"
    " each was downloaded once (the files are gone when the command ends).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@provider_options
@pass_settings
def load(
    settings: Settings,
    /,
    task_count: int,
    rate: float,
    callback_url: str,
    port: int,
    concurrency: int | None,
    settle_timeout: float,
    store_timeout: float,
    download_grace: float,
    as_json: bool,
    **options: Any,
) -> None:
    """Fire TASKS callbacks at RATE per second at mjhook, then report acknowledgements, the rate
    actually sent at, downloads and, read from the bucket, how many tasks ended stored."""
    if not deliverable_url(callback_url):
        raise click.BadParameter(
            f"{printable(callback_url)} is no http or https URL with a host", param_hint="--callback-url"
        )
    threads = delivery_threads_for(rate, options["callback_timeout"]) if concurrency is None else concurrency
    config = _config(options, port=port, delivery_threads=threads)
    with reported_failures():
        store = create_object_store(settings) if store_timeout > 0 else None
        with _start_simulator(config) as sim:
            report = run_load(
                sim,
                tasks=task_count,
                rate_per_s=rate,
                callback_url=callback_url,
                store=store,
                settle_timeout_s=settle_timeout,
                store_timeout_s=store_timeout,
                download_grace_s=download_grace,
            )
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(report.format_text())
