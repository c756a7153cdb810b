"""The one settings object. Only the process edges (ingress/wsgi.py, workers/tasks.py,
the CLI) call :meth:`Settings.from_env`; everything else receives a Settings."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Annotated, Any, Literal

from minio.helpers import check_bucket_name
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from shared import setting_urls
from shared.allow_list import parse_allow_entry, parse_network
from shared.errors import ConfigError

#: Every environment variable of ours starts with this.
ENV_PREFIX = "MJHOOK_"

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
TIB = 1024 * GIB
DAY_S = 86_400

#: What a misspelled ``MJHOOK_*`` name is told (pydantic's own words: "Extra inputs are not permitted").
UNKNOWN_SETTING = "no such setting (misspelled?)"
#: What MJHOOK_LOG_LEVEL may name (in any case): the levels both logging and gunicorn know.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: The other names Python's logging knows for two of them.
LOG_LEVEL_ALIASES = {"WARN": "WARNING", "FATAL": "CRITICAL"}


#: The most result URLs, and the longest URL, a queued callback may carry (the worker re-checks a
#: queued callback against these, not the ingress's settings): the ingress's own limits stay
#: within them, so that no callback it acknowledged is unreadable to the drain or the worker.
QUEUED_MAX_RESULT_URLS = 1 << 16
QUEUED_MAX_URL_LENGTH = 1 << 20
#: The most MJHOOK_MAX_JSON_DEPTH may be: a manifest holds promptJson's params a level down,
#: GET /tasks/{taskId} answers the manifest one more, and orjson writes no JSON past 254 levels.
MAX_JSON_DEPTH = 200
#: How much longer than MJHOOK_POLL_GIVE_UP_S a task's record must live, seconds: time for the
#: pass that gives it up to come, behind a busy queue.
TTL_MARGIN_OVER_GIVE_UP_S = 3600
#: The longest anything may be kept in Redis, seconds (a year): a task's record, a dead letter, the
#: polling's wait for a silent task. Far within what EXPIRE and PEXPIRE take; a larger TTL (past
#: 2^63 ms) was refused by Redis at every write, after the ingress had started.
MAX_KEEP_S = 365 * DAY_S
#: S3's largest object, 5 TiB: minio refuses to store a larger file.
MAX_OBJECT_BYTES = 5 * TIB
#: Redis's largest value (its default proto-max-bulk-len, 512 MiB): a queued callback, and a
#: refused one kept for inspection, are each written as one.
MAX_REDIS_VALUE_BYTES = 512 * MIB
#: The longest side an image header can declare (PNG's, 32 bits): a larger limit checks nothing.
MAX_DECLARED_SIDE = 2**32 - 1
#: The ports TCP has.
TcpPort = Annotated[int, Field(ge=1, le=65535)]


class Settings(BaseModel):
    """mjhook's configuration. Each field ``name`` is read from ``MJHOOK_NAME``."""

    # allow_inf_nan: "inf" (or "1e309") as a timeout or an interval is no value anything can wait for
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    # --- services -------------------------------------------------------------------
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: The queue; empty means the Redis of ``redis_url``. ``amqp://`` selects RabbitMQ.
    broker_url: str = ""
    s3_endpoint: str = "http://127.0.0.1:8333"
    # repr=False on every secret: a Settings in a log line or a traceback shows none of them (the
    # URLs' passwords are masked by __repr_args__)
    s3_access_key: str = Field(default="", repr=False)
    s3_secret_key: str = Field(default="", repr=False)
    #: Empty: an AWS endpoint's own region, else us-east-1 (see shared/storage.py ``_region``).
    s3_region: str = ""
    s3_bucket: str = "midjourney"
    #: The S3 endpoint as seen by whoever opens presigned download URLs (e.g. the host's name for
    #: a MinIO that the stack reaches as http://minio:9000); empty: ``s3_endpoint``.
    s3_public_endpoint: str = ""
    #: How long presigned download URLs stay valid, seconds.
    presign_expiry_s: int = Field(default=3600, ge=60, le=7 * 86400)

    # --- who may call us and read from us ---------------------------------------------
    callback_token: str = Field(default="", repr=False)
    #: Provider signature keys, comma-separated (a rotation); empty: signatures not required.
    webhook_hmac_key: str = Field(default="", repr=False)
    #: How far a signature's timestamp may lie from our clock, either way, in seconds.
    webhook_window_s: int = Field(default=300, ge=1, le=86_400)
    #: IPs or CIDR networks callbacks may come from; empty allows every address.
    callback_allow_from: tuple[str, ...] = ()
    #: Header our reverse proxy writes the client address to (X-Forwarded-For, X-Real-IP or
    #: Forwarded); believed only from ``trusted_proxies``. Empty: the TCP peer is the client.
    trusted_proxy_header: str = ""
    #: IPs or CIDR networks of our own reverse proxies.
    trusted_proxies: tuple[str, ...] = ()
    api_token: str = Field(default="", repr=False)

    # --- the fetcher ------------------------------------------------------------------
    #: Hosts or CIDRs the downloader may reach although they are private or loopback.
    fetch_allow: tuple[str, ...] = ()
    #: Ports the downloader may connect to on hosts not in ``fetch_allow`` (those may use any);
    #: each 1-65535.
    fetch_ports: tuple[TcpPort, ...] = (80, 443)
    #: Parallel downloads per worker process (one pool shared by its threads).
    download_concurrency: int = Field(default=8, ge=1, le=256)
    #: At most 5 minutes (Linux itself gives up a connect after about 2).
    connect_timeout_s: float = Field(default=5.0, gt=0, le=300)
    #: Longest wait for the next chunk of a download, not for the whole file; at most an hour.
    read_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    max_redirects: int = Field(default=5, ge=0, le=20)
    #: Slowest average a download may keep up, in bytes/s, once it has run ``min_download_rate_after_s``
    #: seconds (0: no minimum). Bounds a slow trickle, which the per-chunk timeout does not. At
    #: most 1 GiB/s (more than a link carries would fail every download); after at most a day (the
    #: longest task time limit).
    min_download_rate: int = Field(default=4 * KIB, ge=0, le=GIB)
    min_download_rate_after_s: float = Field(default=60.0, gt=0, le=DAY_S)
    #: Largest image file accepted, in bytes (at most MAX_OBJECT_BYTES, 5 TiB).
    max_image_bytes: int = Field(default=64 * MIB, ge=1, le=MAX_OBJECT_BYTES)
    #: Largest video file accepted, in bytes (at most MAX_OBJECT_BYTES, 5 TiB).
    max_video_bytes: int = Field(default=2048 * MIB, ge=1, le=MAX_OBJECT_BYTES)
    #: Most bytes all files of one task may add up to (at most 5 TiB, like one file).
    max_task_bytes: int = Field(default=4096 * MIB, ge=1, le=MAX_OBJECT_BYTES)
    #: Files smaller than this stay in memory while downloading; larger ones spill to disk. At most
    #: 1 GiB: each of ``download_concurrency`` downloads may hold it.
    spool_memory_bytes: int = Field(default=8 * MIB, ge=0, le=GIB)
    #: Most pixels (width x height) a result image may declare in its header (at most
    #: MAX_DECLARED_SIDE squared).
    max_image_pixels: int = Field(default=100_000_000, ge=1, le=MAX_DECLARED_SIDE**2)
    #: Longest side a result image may declare, in pixels (at most MAX_DECLARED_SIDE, 2^32 - 1).
    max_image_side: int = Field(default=20_000, ge=1, le=MAX_DECLARED_SIDE)

    # --- the ingress ------------------------------------------------------------------
    #: Largest callback body accepted, in bytes (413 above); at most MAX_REDIS_VALUE_BYTES (512 MiB).
    max_body_bytes: int = Field(default=256 * KIB, ge=1 * KIB, le=MAX_REDIS_VALUE_BYTES)
    max_result_urls: int = Field(default=16, ge=1, le=QUEUED_MAX_RESULT_URLS)
    max_url_length: int = Field(default=4096, ge=64, le=QUEUED_MAX_URL_LENGTH)
    #: Deepest JSON nesting accepted in a callback body (400 above) and in its promptJson
    #: (kept raw but not parsed above). A callback itself nests 3 deep; at most MAX_JSON_DEPTH.
    max_json_depth: int = Field(default=32, ge=3, le=MAX_JSON_DEPTH)
    #: Longest ``promptJson`` string accepted, in bytes (400 above; the provider's prompt is at
    #: most 2000 characters, its parameters a few hundred bytes more); at most 512 MiB, as the
    #: queued callback carrying it.
    max_prompt_json_bytes: int = Field(default=64 * KIB, ge=1 * KIB, le=MAX_REDIS_VALUE_BYTES)
    #: Rejected bodies kept in Redis for inspection: how many (at most a million), and how much of
    #: each (bytes, at most 512 MiB, one Redis value).
    rejected_keep: int = Field(default=1000, ge=0, le=1_000_000)
    rejected_body_bytes: int = Field(default=16 * KIB, ge=0, le=MAX_REDIS_VALUE_BYTES)
    #: Redis socket timeout of the ingress, seconds: a hung Redis must not hold the provider (which
    #: waits 15 s for an answer); at most a minute.
    redis_timeout_s: float = Field(default=2.0, gt=0, le=60)
    #: Where the ingress keeps callbacks (fsync'd) while Redis is unreachable; relative paths
    #: are relative to the working directory. Empty turns the spool off (503 instead).
    spool_dir: str = ".data/spool"
    #: Most bytes the spool may hold (at most 1 TiB); beyond it, callbacks get a 503 again.
    spool_max_bytes: int = Field(default=256 * MIB, ge=0, le=TIB)
    #: How often each ingress process tries to move spooled callbacks into the queue, seconds (at
    #: most an hour).
    spool_drain_interval_s: float = Field(default=2.0, gt=0, le=3600)

    # --- processing -------------------------------------------------------------------
    #: A worker's claim on a task; renewed while it works, so it only lapses on a crash. At most an
    #: hour: a crashed worker's task waits that long for another.
    lease_ttl_s: int = Field(default=20, ge=1, le=3600)
    #: A worker silent this long is dead: its unfinished messages go back to the queue. At most an
    #: hour.
    redelivery_s: int = Field(default=20, ge=2, le=3600)
    #: How long dead-lettered messages are kept (dramatiq's default, 7 days, is raised); at most
    #: MAX_KEEP_S, a year.
    dead_message_ttl_s: int = Field(default=30 * 86400, ge=3600, le=MAX_KEEP_S)
    #: How long a task's state record (dedup memory) is kept after its last change; at most
    #: MAX_KEEP_S, a year.
    task_ttl_s: int = Field(default=30 * 86400, ge=60, le=MAX_KEEP_S)
    #: At most 100 (each waits up to ``max_backoff_ms``).
    max_retries: int = Field(default=12, ge=0, le=100)
    #: How often one attempt at a message may be started (its worker died during it, and it was
    #: redelivered) before it is given up instead of started again; at most 100.
    max_attempt_starts: int = Field(default=3, ge=1, le=100)
    #: Backoff between retries, milliseconds: each at most a day.
    min_backoff_ms: int = Field(default=2000, ge=10, le=DAY_S * 1000)
    max_backoff_ms: int = Field(default=600_000, ge=10, le=DAY_S * 1000)
    #: Longest a single task may run before dramatiq interrupts it; at most a day.
    task_time_limit_s: int = Field(default=1800, ge=10, le=DAY_S)

    # --- the provider -----------------------------------------------------------------
    provider_url: str = "https://api.kie.ai"
    #: One key, no rotation (a comma would be sent as part of it).
    provider_api_key: str = Field(default="", repr=False)
    #: With an API key: re-read each success from the provider's record-info before downloading
    #: and use the URLs listed there (the signature does not cover the body).
    verify_results: bool = True
    #: Retries of a provider API call answered 429, 455 or 5xx (or not reached), with exponential
    #: backoff from 1 s (or as ``Retry-After`` says); 0 fails at once.
    provider_retries: int = Field(default=4, ge=0, le=10)
    public_url: str = ""
    #: Seconds after submission before a silent task is polled (at most MAX_KEEP_S, a year), and
    #: between polls (at most a day).
    poll_grace_s: int = Field(default=1500, ge=0, le=MAX_KEEP_S)
    poll_interval_s: int = Field(default=30, ge=1, le=DAY_S)
    #: Seconds after submission when a task still without a result is given up as ``failed``; at
    #: most MAX_KEEP_S (and an hour less than ``task_ttl_s``).
    poll_give_up_s: int = Field(default=86_400, ge=1, le=MAX_KEEP_S)

    # --- logs and metrics -------------------------------------------------------------
    #: One of LOG_LEVELS, in any case; read as upper case.
    log_level: str = "INFO"
    #: ``json`` (one object per line, for log pipelines) or ``text`` (for a terminal).
    log_format: Literal["json", "text"] = "json"
    #: Address and port of each dramatiq instance's Prometheus endpoint, served by every one of
    #: its worker processes (SO_REUSEPORT), so one port per instance on a host; port 0 turns it
    #: off. The ingress serves its metrics at ``GET /metrics``.
    worker_metrics_host: str = "127.0.0.1"
    worker_metrics_port: int = Field(default=9191, ge=0, le=65535)

    def __init__(self, /, **values: Any) -> None:
        # Built in code (a test, the bench) rather than by from_env: a value refused is a
        # ConfigError all the same, in the same words
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _config_error(exc) from None

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # The secrets are left out (repr=False); a URL shows no user, password or password=
        for name, value in super().__repr_args__():
            url = name in _URL_FIELDS and isinstance(value, str)
            yield name, (setting_urls.masked(value) if url else value)

    @field_validator("fetch_ports", mode="before")
    @classmethod
    def _split_ports(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(int(part) for part in comma_list(value))
        return value

    @field_validator("fetch_allow", "callback_allow_from", "trusted_proxies", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return comma_list(value)
        return value

    @field_validator("fetch_allow", "callback_allow_from", "trusted_proxies")
    @classmethod
    def _list_entries(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        # Read as their users read them (the fetcher's guard, the ingress's source filter): a bad
        # entry was refused only when a worker process built its guard, which dramatiq logs and
        # goes on from, dead-lettering every callback, or as each gunicorn worker built its app
        parse = _LIST_ENTRIES[str(info.field_name)]
        for entry in value:
            if entry.strip():
                parse(entry)  # its ValueError quotes the entry (no secret)
        return value

    @field_validator("callback_token", "webhook_hmac_key", "api_token")
    @classmethod
    def _a_set_secret_holds_one(cls, value: str) -> str:
        # Only blanks and commas would turn the check off while the operator believes it is on.
        if value and not value.replace(",", "").strip():
            raise ValueError("is set but holds no token (only blanks or commas): it would turn the check off")
        return value

    @field_validator("provider_api_key")
    @classmethod
    def _one_provider_key(cls, value: str) -> str:
        # Sent as it is: a comma is no rotation here but a part of the key, which a Bearer token
        # cannot hold (RFC 6750); every call would be refused
        if "," in value:
            raise ValueError("holds one key, not a comma-separated list (no rotation)")
        return value

    @field_validator("api_token", "provider_api_key", "s3_access_key")
    @classmethod
    def _a_header_can_carry_it(cls, value: str) -> str:
        # Sent in an Authorization header: the API token as "Bearer <value>" (by the dashboard's
        # script too), the provider key so by the provider client, the S3 access key in minio's
        # "Credential=". A header holds printable ASCII only, and its blanks at either end are not
        # part of it: anything else failed every call, the provider's as a transport error retried
        # for ever. (The API token's blanks and commas alone: refused as holding no token by the
        # check above, which runs first.)
        if value and (value != value.strip() or not all(" " < char <= "~" for char in value)):
            raise ValueError("must be printable ASCII without blanks (it is sent in an Authorization header)")
        return value

    @field_validator("s3_secret_key")
    @classmethod
    def _a_secret_key_without_slips(cls, value: str) -> str:
        # Never sent, but it signs every request: blanks at either end or a control character (a
        # newline from "$(cat file)", a CR from an .env saved on Windows) are a quoting slip, and
        # every request would be refused as signed wrong
        if value != value.strip() or not value.isprintable():
            raise ValueError("must not hold blanks at either end nor control characters (a quoting slip?)")
        return value

    @field_validator("log_level")
    @classmethod
    def _a_log_level(cls, value: str) -> str:
        # Any other name killed each process only when it set up its logs ("Unknown level")
        level = LOG_LEVEL_ALIASES.get(value.upper(), value.upper())
        if level not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)} (in any case)")
        return level

    @field_validator("redis_url")
    @classmethod
    def _redis_url_readable(cls, value: str) -> str:
        return setting_urls.redis_url(value)

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        # Empty: the queue is in the Redis of redis_url
        return setting_urls.broker_url(value) if value else value

    @field_validator("s3_endpoint", "s3_public_endpoint")
    @classmethod
    def _s3_endpoint(cls, value: str) -> str:
        # Empty public endpoint: s3_endpoint's
        return setting_urls.s3_endpoint(value) if value else value

    @field_validator("s3_bucket")
    @classmethod
    def _s3_bucket(cls, value: str) -> str:
        check_bucket_name(value)  # minio's ValueError says why (a bucket's name is no secret)
        return value

    @field_validator("provider_url", "public_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        # Empty public URL: nothing can be submitted (the CLI says so when asked to)
        return setting_urls.http_base_url(value) if value else value

    @model_validator(mode="after")
    def _task_records_outlive_the_polling(self) -> Settings:
        # A silent task's record and index entry expire MJHOOK_TASK_TTL_S after its submission:
        # sooner than its give-up, it is never given up (nor failed, nor stored): lost.
        if self.task_ttl_s < self.poll_give_up_s + TTL_MARGIN_OVER_GIVE_UP_S:
            raise PydanticCustomError(
                "task_ttl_s_short",
                "MJHOOK_TASK_TTL_S must be MJHOOK_POLL_GIVE_UP_S plus an hour or more: a task's"
                " record must outlive the polling fallback's wait for it",
            )
        return self

    @model_validator(mode="after")
    def _a_proxy_header_names_its_proxies(self) -> Settings:
        # Whose header to believe: without them the filter would believe nobody's (no loc: the
        # message names both)
        if self.trusted_proxy_header.strip() and not any(entry.strip() for entry in self.trusted_proxies):
            raise PydanticCustomError(
                "trusted_proxies_missing",
                "MJHOOK_TRUSTED_PROXY_HEADER needs MJHOOK_TRUSTED_PROXIES: whose header to trust",
            )
        return self

    @model_validator(mode="after")
    def _s3_keys_come_in_pairs(self) -> Settings:
        # minio refuses one without the other only when the first client is made; no loc: the
        # message names both
        if bool(self.s3_access_key) != bool(self.s3_secret_key):
            raise PydanticCustomError(
                "s3_key_pair",
                "MJHOOK_S3_ACCESS_KEY and MJHOOK_S3_SECRET_KEY must be set together, or neither",
            )
        return self

    @property
    def callback_tokens(self) -> tuple[str, ...]:
        """The accepted ``?token=`` values; several (comma-separated) allow a rotation."""
        return comma_list(self.callback_token)

    @property
    def queue_url(self) -> str:
        """The broker URL actually used: ``broker_url``, else ``redis_url``."""
        return self.broker_url or self.redis_url

    @classmethod
    def from_env_or_exit(cls, environ: Mapping[str, str]) -> Settings:
        """:meth:`from_env` for a module another program imports (gunicorn's config, dramatiq's
        ``workers.tasks``): a bad setting ends the process with one line naming it, ``Error:
        ...``, not the traceback of the import (gunicorn prints "Failed to read config file" and
        the traceback of an Exception, which SystemExit is not; dramatiq logs any)."""
        try:
            return cls.from_env(environ)
        except ConfigError as exc:
            raise SystemExit(f"Error: {exc}") from None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Build settings from ``MJHOOK_*`` variables; unknown ``MJHOOK_*`` names are an error,
        so a typo does not silently fall back to a default, and so is a variable that is not valid
        UTF-8 (named, its value not shown)."""
        ours = {key: value for key, value in environ.items() if key.startswith(ENV_PREFIX)}
        # os.environ gives each byte no UTF-8 decodes as a lone surrogate ("\udcff"): such a value
        # was taken, to raise a UnicodeEncodeError wherever it was first encoded (a bucket's name,
        # a password in a URL, a token compared, a key signing). A path may be any bytes.
        undecodable = [
            _printable_name(key)
            for key, value in ours.items()
            if _SURROGATE.search(key) or (key not in _PATH_VARIABLES and _SURROGATE.search(value))
        ]
        if undecodable:
            raise ConfigError(
                "invalid configuration: "
                + "; ".join(f"{name}: not valid UTF-8 (bytes no text decodes to)" for name in undecodable)
            )
        values = {key[len(ENV_PREFIX) :].lower(): value for key, value in ours.items()}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise _config_error(exc) from None


#: How an entry of each list setting is read (a ValueError for one its user cannot read).
_LIST_ENTRIES: dict[str, Callable[[str], object]] = {
    "fetch_allow": parse_allow_entry,
    "callback_allow_from": parse_network,
    "trusted_proxies": parse_network,
}
#: The variables naming a file system path: any bytes, as a file's name may be (os.fsencode gives
#: the bytes of a surrogate-escaped one back).
_PATH_VARIABLES = frozenset({f"{ENV_PREFIX}SPOOL_DIR"})
#: The settings that hold a URL, whose user and password a repr masks.
_URL_FIELDS = frozenset(
    {"redis_url", "broker_url", "s3_endpoint", "s3_public_endpoint", "provider_url", "public_url"}
)
#: A code point UTF-8 cannot encode: how os.environ gives a byte that no UTF-8 decodes.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _config_error(exc: ValidationError) -> ConfigError:
    """The one-line ConfigError for pydantic's ``exc``: each problem after the name of its
    ``MJHOOK_*`` variable (an item's index in a list left out)."""
    problems = "; ".join(
        # No loc: a check of several settings, whose message names them
        (f"{ENV_PREFIX}{str(err['loc'][0]).upper()}: " if err["loc"] else "")
        + (UNKNOWN_SETTING if err["type"] == "extra_forbidden" else err["msg"])
        for err in exc.errors()
    )
    return ConfigError(f"invalid configuration: {problems}")


def _printable_name(name: str) -> str:
    # A name with undecodable bytes is none of ours, but is named: escaped, so that it can be printed
    return name.encode("utf-8", "backslashreplace").decode()


def comma_list(value: str) -> tuple[str, ...]:
    """The items of a comma-separated setting, whitespace around each and empty ones left out
    (``" a , b ,"`` is ``("a", "b")``): a rotation's keys or tokens, the first one in use."""
    return tuple(item.strip() for item in value.split(",") if item.strip())
