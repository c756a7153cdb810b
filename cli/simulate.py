"""``mjhook simulate``: the provider simulator (``serve``) and the load generator (``load``).
The commands only turn options into a :class:`SimulatorConfig`; the behaviour is in simulator/."""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import click

from cli.output import echo_json
from cli.params import FiniteFloatRange, seconds
from cli.services import reported_failures
from cli.settings import pass_settings
from shared.errors import ConfigError
from shared.logs import configure_logging
from shared.printable import printable, printable_lines
from shared.settings import Settings
from shared.storage import create_object_store
from shared.submit import callback_url as configured_callback_url
from simulator import FaultConfig, RunningSimulator, SimulatorConfig, run_simulator
from simulator.api_requests import deliverable_url
from simulator.config import (
    DEFAULT_CALLBACK_RATE_PER_S,
    DEFAULT_CALLBACK_TIMEOUT_S,
    DEFAULT_DUPLICATE_DELAY_S,
    DEFAULT_FILE_FAULT_REPEATS,
    DEFAULT_FILE_SLOW_DELAY_S,
    DEFAULT_GENERATION_DELAY_S,
    DEFAULT_URL_TTL_S,
    TASK_ID_PREFIX_PATTERN,
    TASK_ID_PREFIX_RULE,
)
from simulator.control import MAX_LOAD_RATE, MAX_LOAD_TASKS, MIN_LOAD_RATE, run_load_in
from simulator.files import MAX_IMAGE_SIDE
from simulator.load import (
    DEFAULT_DOWNLOAD_GRACE_S,
    DEFAULT_STORE_TIMEOUT_S,
    MAX_DELIVERY_THREADS,
    MIN_DELIVERY_THREADS,
    LoadReport,
    check_bucket,
    delivery_threads_for,
    read_bucket,
    run_load,
    settle_timeout_for,
)

F = TypeVar("F", bound=Callable[..., Any])

#: A bucket prefix no task has: listed once before a load in a running simulator, so that a
#: store refusing the credentials says so before the run.
LOAD_CHECK_LISTING = "tasks/.load-check/"
#: The largest --time-scale: the provider's 21 minutes of retries made 35 hours.
MAX_TIME_SCALE = 100.0

#: Option name -> (FaultConfig field, help). Shares are 0.0-1.0.
FAULT_SHARES = {
    "--fail-share": ("failure_share", "Tasks whose generation fails (code-500 callback)."),
    "--duplicate-share": ("duplicate_share", "Tasks whose callback is sent twice."),
    "--drop-share": ("drop_share", "Tasks completed without any callback (polling case)."),
    "--file-5xx-share": ("file_error_share", "Files answering 503 on their first request(s)."),
    "--file-slow-share": ("file_slow_share", "Files sent slowly (see --file-slow-delay)."),
    "--file-truncated-share": ("file_truncated_share", "Files cut short on their first request(s)."),
    "--file-expired-share": ("file_expired_share", "Files whose URL is issued already expired."),
    "--task-id-spelling-share": (
        "task_id_spelling_share",
        "Tasks whose callback spells the id task_id, not taskId.",
    ),
    "--malformed-prompt-share": (
        "malformed_prompt_share",
        "Tasks whose callback's promptJson is not valid JSON (cut in half).",
    ),
    "--failed-after-creation-share": (
        "failed_after_creation_share",
        "Of the failing tasks (--fail-share), those whose record-info says successFlag 3, not 2.",
    ),
}


def provider_options(function: F) -> F:
    """Options shared by ``serve`` and ``load``: the simulated provider and its faults."""
    options = [
        click.option(
            "--host",
            default="127.0.0.1",
            show_default=True,
            help="Address to listen on (0.0.0.0 needs --public-url).",
        ),
        click.option(
            "--public-url",
            default="",
            help="Base of result URLs, as clients reach the simulator [default: http://HOST:PORT].",
        ),
        click.option("--api-key", default="sim-api-key", show_default=True, help="Accepted Bearer key."),
        click.option("--hmac-key", default="", help="Sign callbacks with this webhook HMAC key."),
        click.option(
            "--time-scale",
            type=FiniteFloatRange(min=0, min_open=True, max=MAX_TIME_SCALE),
            default=1.0,
            show_default=True,
            help="Factor on the 1/5/15-minute callback retry schedule (0.001 -> 60/300/900 ms).",
        ),
        click.option(
            "--callback-timeout",
            type=seconds(min=0, min_open=True),
            default=DEFAULT_CALLBACK_TIMEOUT_S,
            show_default=True,
            help="Seconds to wait for a callback's answer.",
        ),
        click.option("--width", type=click.IntRange(1, MAX_IMAGE_SIDE), default=1024, show_default=True),
        click.option("--height", type=click.IntRange(1, MAX_IMAGE_SIDE), default=1024, show_default=True),
        click.option(
            "--url-ttl",
            type=seconds(min=0, min_open=True),
            default=DEFAULT_URL_TTL_S,
            show_default=True,
            help="Seconds a result URL stays valid (410 after; download-url gives a fresh one).",
        ),
        click.option(
            "--media-ttl",
            type=seconds(min=0, min_open=True),
            default=None,
            help="Seconds the media is kept (404 and no fresh link after) [default: the longer of"
            " 14 days and --url-ttl].",
        ),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the fault decisions."),
        *(
            click.option(
                name, field, type=FiniteFloatRange(0.0, 1.0), default=0.0, show_default=True, help=text
            )
            for name, (field, text) in FAULT_SHARES.items()
        ),
        click.option(
            "--file-slow-delay",
            type=seconds(),
            default=DEFAULT_FILE_SLOW_DELAY_S,
            show_default=True,
            help="Seconds a slow file takes.",
        ),
        click.option(
            "--file-fault-repeats",
            type=click.IntRange(min=0),
            default=DEFAULT_FILE_FAULT_REPEATS,
            show_default=True,
            help="Requests of a file hit by --file-5xx-share or --file-truncated-share that fail"
            " before it serves normally (0: none fail).",
        ),
        click.option(
            "--duplicate-delay",
            type=seconds(),
            default=DEFAULT_DUPLICATE_DELAY_S,
            show_default=True,
            help="Seconds between a callback and its duplicate (--duplicate-share).",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def concurrency_option(default_help: str, fewer_help: str) -> Callable[[F], F]:
    """``--concurrency``: callbacks in flight at most, its default said by ``default_help``, what
    fewer do by ``fewer_help``."""
    return click.option(
        "--concurrency",
        type=click.IntRange(1, MAX_DELIVERY_THREADS),
        default=None,
        help=f"Callbacks in flight at most [default: {default_help}, {MIN_DELIVERY_THREADS}"
        f"-{MAX_DELIVERY_THREADS}]. Fewer, with {fewer_help}.",
    )


def _config(options: dict[str, Any], **overrides: Any) -> SimulatorConfig:
    public_url = options.pop("public_url")
    if public_url and not deliverable_url(public_url):
        raise click.BadParameter(
            f"{printable(public_url)} is no http or https URL with a host", param_hint="--public-url"
        )
    try:
        faults = FaultConfig(
            seed=options.pop("seed"),
            file_slow_delay_s=options.pop("file_slow_delay"),
            file_fault_repeats=options.pop("file_fault_repeats"),
            duplicate_delay_s=options.pop("duplicate_delay"),
            # serve's own: load's tasks come from no submit call
            api_error_share=options.pop("api_error_share", 0.0),
            **{field: options.pop(field) for field, _ in FAULT_SHARES.values()},
        )
        return SimulatorConfig(
            host=options.pop("host"),
            public_url=public_url,
            api_key=options.pop("api_key"),
            hmac_key=options.pop("hmac_key"),
            time_scale=options.pop("time_scale"),
            callback_timeout_s=options.pop("callback_timeout"),
            image_width=options.pop("width"),
            image_height=options.pop("height"),
            url_ttl_s=options.pop("url_ttl"),
            media_ttl_s=options.pop("media_ttl"),
            # serve's own: load spaces its tasks by --rate
            generation_jitter_s=options.pop("generation_jitter", 0.0),
            faults=faults,
            **overrides,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


def _task_id_prefix(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """``--task-id-prefix``: empty, or the start of a taskId mjhook accepts."""
    if value and TASK_ID_PREFIX_PATTERN.fullmatch(value) is None:
        raise click.BadParameter(f"{printable(value)} is no task id prefix: {TASK_ID_PREFIX_RULE}")
    return value


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
    type=seconds(),
    default=DEFAULT_GENERATION_DELAY_S,
    show_default=True,
    help="Seconds from submission to result and callback.",
)
@click.option(
    "--generation-jitter",
    type=seconds(),
    default=0.0,
    show_default=True,
    help="Up to this many seconds added to each task's generation delay, a seeded share per task.",
)
@click.option("--rate-limit", type=click.IntRange(min=0), default=0, help="API calls per 10 s (0: none).")
@click.option(
    "--credits",
    type=click.IntRange(min=0),
    default=None,
    help="Submissions the account can pay for, code 402 after [default: unlimited].",
)
@click.option("--maintenance", is_flag=True, help="Answer every API call with code 455 (maintenance).")
@click.option(
    "--api-error-share",
    type=FiniteFloatRange(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="Submit calls (generate, generateUpscale, generateVary) answered with code 500, 501 or 505"
    " instead of a task, drawn by --seed and the call's number in the run.",
)
@click.option(
    "--http-status-mirrors-code",
    is_flag=True,
    help="Answer API failures with the body's code as HTTP status too [default: 200].",
)
@click.option(
    "--task-id-prefix",
    default="",
    callback=_task_id_prefix,
    help="Start of every taskId (letters, digits, '_' or '-'), so that file bytes and their sha256"
    " can be known beforehand [default: mjsim-<random hex>-].",
)
@concurrency_option(
    f"{DEFAULT_CALLBACK_RATE_PER_S:g}/s x --callback-timeout",
    "slow receivers, hold back the callbacks to the others",
)
@provider_options
def serve(
    port: int,
    generation_delay: float,
    rate_limit: int,
    credits: int | None,
    maintenance: bool,
    http_status_mirrors_code: bool,
    task_id_prefix: str,
    concurrency: int | None,
    **options: Any,
) -> None:
    """Serve the provider's API, result files and callbacks until Ctrl-C. The callbacks, of its
    API's tasks and of load runs (``load --simulator-url``), share --concurrency."""
    threads = _delivery_threads(concurrency, DEFAULT_CALLBACK_RATE_PER_S, options["callback_timeout"])
    config = _config(
        options,
        port=port,
        delivery_threads=threads,
        generation_delay_s=generation_delay,
        rate_limit=rate_limit,
        credits=credits,
        maintenance=maintenance,
        http_status_mirrors_code=http_status_mirrors_code,
        task_id_prefix=task_id_prefix,
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
@click.option("--tasks", "task_count", type=click.IntRange(1, MAX_LOAD_TASKS), default=100, show_default=True)
@click.option(
    "--rate",
    type=FiniteFloatRange(min=MIN_LOAD_RATE, max=MAX_LOAD_RATE),
    default=DEFAULT_CALLBACK_RATE_PER_S,
    show_default=True,
    help="Callbacks/s.",
)
@click.option(
    "--callback-url",
    default=None,
    help="mjhook's callback URL (with ?token= if it needs one) [default: MJHOOK_PUBLIC_URL +"
    " /callbacks/midjourney, with MJHOOK_CALLBACK_TOKEN].",
)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=0, help="Port for result files [default: free]."
)
@concurrency_option("RATE x --callback-timeout", "a slow receiver, send below --rate (the report says)")
@click.option(
    "--settle-timeout",
    type=seconds(),
    default=None,
    help="Seconds, after the last callback is due, to wait for answers, duplicates and retries"
    " [default: enough for every retry: 1+5+15 min x --time-scale, 4 x --callback-timeout, + 30 s].",
)
@click.option(
    "--store-timeout",
    type=seconds(),
    default=DEFAULT_STORE_TIMEOUT_S,
    show_default=True,
    help="Seconds to wait for manifests in the bucket (MJHOOK_S3_*); 0 skips the bucket.",
)
@click.option(
    "--download-grace",
    type=seconds(),
    default=DEFAULT_DOWNLOAD_GRACE_S,
    show_default=True,
    help="With --store-timeout 0: seconds to keep serving result files after the callbacks, until"
    " each was downloaded once (the files are gone when the command ends).",
)
@click.option(
    "--simulator-url",
    default=None,
    help="Run the load in the simulator serving there (`mjhook simulate serve`, with --api-key):"
    " its tasks, faults and result files, so that workers verifying with it know the tasks. The"
    " simulator options here, --port and --concurrency, are then its own (serve's --concurrency"
    " bounds the run's callbacks in flight).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@provider_options
@pass_settings
def load(
    settings: Settings,
    /,
    task_count: int,
    rate: float,
    callback_url: str | None,
    port: int,
    concurrency: int | None,
    settle_timeout: float | None,
    store_timeout: float,
    download_grace: float,
    simulator_url: str | None,
    as_json: bool,
    **options: Any,
) -> None:
    """Fire TASKS callbacks at RATE per second at mjhook, then report acknowledgements, the rate
    actually sent at, downloads and, read from the bucket, how many tasks ended stored.

    The tasks exist only in this command's own simulator, whose API it names when it starts:
    workers that verify results (MJHOOK_PROVIDER_API_KEY) must have MJHOOK_PROVIDER_URL pointing
    at it (a fixed --port), or they find none of these tasks and end them failed. With
    --simulator-url the tasks are that running simulator's instead (make demo's, say)."""
    callback_url = _load_callback_url(settings, callback_url)
    if simulator_url is not None:
        report = _load_in(
            settings,
            simulator_url,
            options["api_key"],
            task_count,
            rate,
            callback_url,
            settle_timeout,
            store_timeout,
            download_grace,
        )
        _print_load_report(report, as_json=as_json)
        return
    threads = _delivery_threads(concurrency, rate, options["callback_timeout"])
    config = _config(options, port=port, delivery_threads=threads)
    with reported_failures():
        store = create_object_store(settings) if store_timeout > 0 else None
        with _start_simulator(config) as sim:
            _say_which_provider(sim.base_url, sim.api_key, settings, own=True)
            report = run_load(
                sim,
                tasks=task_count,
                rate_per_s=rate,
                callback_url=callback_url,
                store=store,
                settle_timeout_s=settle_timeout_for(config) if settle_timeout is None else settle_timeout,
                store_timeout_s=store_timeout,
                download_grace_s=download_grace,
            )
    _print_load_report(report, as_json=as_json)


def _delivery_threads(concurrency: int | None, rate_per_s: float, callback_timeout_s: float) -> int:
    """``--concurrency``, or by default enough to send ``rate_per_s`` callbacks per second whose
    answers each take the whole callback timeout."""
    return delivery_threads_for(rate_per_s, callback_timeout_s) if concurrency is None else concurrency


def _load_in(
    settings: Settings,
    simulator_url: str,
    api_key: str,
    tasks: int,
    rate: float,
    callback_url: str,
    settle_timeout: float | None,
    store_timeout: float,
    download_grace: float,
) -> LoadReport:
    """``load --simulator-url``: the callbacks fired by that running simulator, the bucket read
    here."""
    if not deliverable_url(simulator_url):
        raise click.BadParameter(
            f"{printable(simulator_url)} is no http or https URL with a host", param_hint="--simulator-url"
        )
    _say_which_provider(simulator_url.rstrip("/"), api_key, settings, own=False)
    with reported_failures():
        store = create_object_store(settings) if store_timeout > 0 else None
        if store is not None:
            check_bucket(store, LOAD_CHECK_LISTING)
        return run_load_in(
            simulator_url,
            api_key,
            tasks=tasks,
            rate_per_s=rate,
            callback_url=callback_url,
            settle_timeout_s=settle_timeout,
            read_bucket=None if store is None else partial(read_bucket, store=store, timeout_s=store_timeout),
            download_grace_s=download_grace,
        )


def _print_load_report(report: LoadReport, *, as_json: bool) -> None:
    if as_json:
        echo_json(report.to_dict())
    else:
        # Its strings may come from a tampered manifest or, with --simulator-url, from that
        # simulator's answer: shown, never acted on by the terminal
        click.echo(printable_lines(report.format_text()))
    if report.problems:
        # The report says what went wrong (its "problem:" lines, or the JSON's figures); a script
        # running the load learns it from the exit status.
        raise SystemExit(1)


def _load_callback_url(settings: Settings, given: str | None) -> str:
    """``--callback-url``, else mjhook's own (``MJHOOK_PUBLIC_URL`` + the callback path, with the
    token); a usage error when neither is there or it is no URL a callback can reach."""
    if given is None:
        try:
            given = configured_callback_url(settings)
        except ConfigError:
            raise click.UsageError(
                "Missing option --callback-url: give it, or set MJHOOK_PUBLIC_URL"
                " (the callbacks then go to MJHOOK_PUBLIC_URL/callbacks/midjourney)"
            ) from None
    if not deliverable_url(given):
        raise click.BadParameter(
            f"{printable(given)} is no http or https URL with a host", param_hint="--callback-url"
        )
    return given


def _say_which_provider(base_url: str, api_key: str, settings: Settings, *, own: bool) -> None:
    """Name the API of this run's simulator (``own``: started for the run; on stderr: ``--json``
    keeps stdout), and warn when mjhook is set to verify results with another provider, which
    does not know these tasks."""
    until = ", until the run ends" if own else ""
    click.echo(
        f"load: this run's provider API is {base_url} (Authorization: Bearer {api_key}){until}", err=True
    )
    provider_url = settings.provider_url.rstrip("/")
    if settings.provider_api_key and settings.verify_results and provider_url != base_url:
        how = "(and a fixed --port)" if own else "(or give --simulator-url their provider's)"
        click.echo(
            f"load: warning: MJHOOK_PROVIDER_URL is {printable(provider_url)}: workers verifying"
            " results with it find none of these tasks and end them failed; start them with"
            f" MJHOOK_PROVIDER_URL={base_url} MJHOOK_PROVIDER_API_KEY={api_key} {how},"
            " or MJHOOK_VERIFY_RESULTS=false",
            err=True,
        )
