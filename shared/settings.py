"""The one settings object. Only the process edges (ingress/wsgi.py, workers/tasks.py,
the CLI) call :meth:`Settings.from_env`; everything else receives a Settings."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import pika
import redis.connection
from minio.helpers import BaseURL, check_bucket_name
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from shared.errors import ConfigError

#: Every environment variable of ours starts with this.
ENV_PREFIX = "MJHOOK_"

KIB = 1024
MIB = 1024 * KIB

#: What a misspelled ``MJHOOK_*`` name is told (pydantic's own words: "Extra inputs are not permitted").
UNKNOWN_SETTING = "no such setting (misspelled?)"
#: URL schemes of a Redis (``MJHOOK_REDIS_URL``, and a broker whose queues live in Redis).
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
#: URL schemes of a RabbitMQ broker.
AMQP_SCHEMES = ("amqp://", "amqps://")


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


class Settings(BaseModel):
    """mjhook's configuration. Each field ``name`` is read from ``MJHOOK_NAME``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # --- services -------------------------------------------------------------------
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: The queue; empty means the Redis of ``redis_url``. ``amqp://`` selects RabbitMQ.
    broker_url: str = ""
    s3_endpoint: str = "http://127.0.0.1:8333"
    s3_access_key: str = ""
    s3_secret_key: str = ""
    #: Empty: an AWS endpoint's own region, else us-east-1 (see shared/storage.py ``_region``).
    s3_region: str = ""
    s3_bucket: str = "midjourney"
    #: The S3 endpoint as seen by whoever opens presigned download URLs (e.g. the host's name for
    #: a MinIO that the stack reaches as http://minio:9000); empty: ``s3_endpoint``.
    s3_public_endpoint: str = ""
    #: How long presigned download URLs stay valid, seconds.
    presign_expiry_s: int = Field(default=3600, ge=60, le=7 * 86400)

    # --- who may call us and read from us ---------------------------------------------
    callback_token: str = ""
    #: Provider signature keys, comma-separated (a rotation); empty: signatures not required.
    webhook_hmac_key: str = ""
    #: How far a signature's timestamp may lie from our clock, either way, in seconds.
    webhook_window_s: int = Field(default=300, ge=1, le=86_400)
    #: IPs or CIDR networks callbacks may come from; empty allows every address.
    callback_allow_from: tuple[str, ...] = ()
    #: Header our reverse proxy writes the client address to (X-Forwarded-For, X-Real-IP or
    #: Forwarded); believed only from ``trusted_proxies``. Empty: the TCP peer is the client.
    trusted_proxy_header: str = ""
    #: IPs or CIDR networks of our own reverse proxies.
    trusted_proxies: tuple[str, ...] = ()
    api_token: str = ""

    # --- the fetcher ------------------------------------------------------------------
    #: Hosts or CIDRs the downloader may reach although they are private or loopback.
    fetch_allow: tuple[str, ...] = ()
    #: Ports the downloader may connect to on hosts not in ``fetch_allow`` (those may use any).
    fetch_ports: tuple[int, ...] = (80, 443)
    #: Parallel downloads per worker process (one pool shared by its threads).
    download_concurrency: int = Field(default=8, ge=1, le=256)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    #: Longest wait for the next chunk of a download, not for the whole file.
    read_timeout_s: float = Field(default=30.0, gt=0)
    max_redirects: int = Field(default=5, ge=0, le=20)
    #: Slowest average a download may keep up, in bytes/s, once it has run ``min_download_rate_after_s``
    #: seconds (0: no minimum). Bounds a slow trickle, which the per-chunk timeout does not.
    min_download_rate: int = Field(default=4 * KIB, ge=0)
    min_download_rate_after_s: float = Field(default=60.0, gt=0)
    #: Largest image file accepted, in bytes.
    max_image_bytes: int = Field(default=64 * MIB, ge=1)
    #: Largest video file accepted, in bytes.
    max_video_bytes: int = Field(default=2048 * MIB, ge=1)
    #: Most bytes all files of one task may add up to.
    max_task_bytes: int = Field(default=4096 * MIB, ge=1)
    #: Files smaller than this stay in memory while downloading; larger ones spill to disk.
    spool_memory_bytes: int = Field(default=8 * MIB, ge=0)
    #: Most pixels (width x height) a result image may declare in its header.
    max_image_pixels: int = Field(default=100_000_000, ge=1)
    #: Longest side a result image may declare, in pixels.
    max_image_side: int = Field(default=20_000, ge=1)

    # --- the ingress ------------------------------------------------------------------
    #: Largest callback body accepted, in bytes (413 above).
    max_body_bytes: int = Field(default=256 * KIB, ge=1 * KIB)
    max_result_urls: int = Field(default=16, ge=1, le=QUEUED_MAX_RESULT_URLS)
    max_url_length: int = Field(default=4096, ge=64, le=QUEUED_MAX_URL_LENGTH)
    #: Deepest JSON nesting accepted in a callback body (400 above) and in its promptJson
    #: (kept raw but not parsed above). A callback itself nests 3 deep; at most MAX_JSON_DEPTH.
    max_json_depth: int = Field(default=32, ge=3, le=MAX_JSON_DEPTH)
    #: Longest ``promptJson`` string accepted, in bytes (400 above; the provider's prompt is at
    #: most 2000 characters, its parameters a few hundred bytes more).
    max_prompt_json_bytes: int = Field(default=64 * KIB, ge=1 * KIB)
    #: Rejected bodies kept in Redis for inspection: how many, and how much of each (bytes).
    rejected_keep: int = Field(default=1000, ge=0)
    rejected_body_bytes: int = Field(default=16 * KIB, ge=0)
    #: Redis socket timeout of the ingress, seconds: a hung Redis must not hold the provider.
    redis_timeout_s: float = Field(default=2.0, gt=0)
    #: Where the ingress keeps callbacks (fsync'd) while Redis is unreachable; relative paths
    #: are relative to the working directory. Empty turns the spool off (503 instead).
    spool_dir: str = ".data/spool"
    #: Most bytes the spool may hold; beyond it, callbacks get a 503 again.
    spool_max_bytes: int = Field(default=256 * MIB, ge=0)
    #: How often each ingress process tries to move spooled callbacks into the queue, seconds.
    spool_drain_interval_s: float = Field(default=2.0, gt=0)

    # --- processing -------------------------------------------------------------------
    #: A worker's claim on a task; renewed while it works, so it only lapses on a crash.
    lease_ttl_s: int = Field(default=20, ge=1)
    #: A worker silent this long is dead: its unfinished messages go back to the queue.
    redelivery_s: int = Field(default=20, ge=2)
    #: How long dead-lettered messages are kept (dramatiq's default, 7 days, is raised).
    dead_message_ttl_s: int = Field(default=30 * 86400, ge=3600)
    #: How long a task's state record (dedup memory) is kept after its last change.
    task_ttl_s: int = Field(default=30 * 86400, ge=60)
    max_retries: int = Field(default=12, ge=0)
    #: How often one attempt at a message may be started (its worker died during it, and it was
    #: redelivered) before it is given up instead of started again.
    max_attempt_starts: int = Field(default=3, ge=1)
    min_backoff_ms: int = Field(default=2000, ge=10)
    max_backoff_ms: int = Field(default=600_000, ge=10)
    #: Longest a single task may run before dramatiq interrupts it.
    task_time_limit_s: int = Field(default=1800, ge=10)

    # --- the provider -----------------------------------------------------------------
    provider_url: str = "https://api.kie.ai"
    provider_api_key: str = ""
    #: With an API key: re-read each success from the provider's record-info before downloading
    #: and use the URLs listed there (the signature does not cover the body).
    verify_results: bool = True
    #: Retries of a provider API call answered 429, 455 or 5xx (or not reached), with exponential
    #: backoff from 1 s (or as ``Retry-After`` says); 0 fails at once.
    provider_retries: int = Field(default=4, ge=0, le=10)
    public_url: str = ""
    poll_grace_s: int = Field(default=1500, ge=0)
    poll_interval_s: int = Field(default=30, ge=1)
    #: Seconds after submission when a task still without a result is given up as ``failed``.
    poll_give_up_s: int = Field(default=86_400, ge=1)

    # --- logs and metrics -------------------------------------------------------------
    log_level: str = "INFO"
    #: ``json`` (one object per line, for log pipelines) or ``text`` (for a terminal).
    log_format: Literal["json", "text"] = "json"
    #: Address and port of each dramatiq instance's Prometheus endpoint, served by every one of
    #: its worker processes (SO_REUSEPORT), so one port per instance on a host; port 0 turns it
    #: off. The ingress serves its metrics at ``GET /metrics``.
    worker_metrics_host: str = "127.0.0.1"
    worker_metrics_port: int = Field(default=9191, ge=0, le=65535)

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

    @field_validator("callback_token", "webhook_hmac_key", "api_token")
    @classmethod
    def _a_set_secret_holds_one(cls, value: str) -> str:
        # Only blanks and commas would turn the check off while the operator believes it is on.
        if value and not value.replace(",", "").strip():
            raise ValueError("is set but holds no token (only blanks or commas): it would turn the check off")
        return value

    @field_validator("api_token")
    @classmethod
    def _a_header_can_carry_it(cls, value: str) -> str:
        # Sent as "Authorization: Bearer <value>" (the dashboard's script does too): a header holds
        # printable ASCII only, and its blanks at either end are not part of it.
        # (Blanks and commas alone: refused as holding no token, by the check above.)
        has_token = bool(value.replace(",", "").strip())
        if has_token and (value != value.strip() or not all(" " < char <= "~" for char in value)):
            raise ValueError("must be printable ASCII without blanks (it is sent in an Authorization header)")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url_readable(cls, value: str) -> str:
        return _redis_url(value)

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        # Empty: the queue is in the Redis of redis_url
        if value and _with_scheme(value, REDIS_SCHEMES + AMQP_SCHEMES).startswith(AMQP_SCHEMES):
            return _readable(value, pika.URLParameters, "RabbitMQ")
        return _redis_url(value) if value else value

    @field_validator("s3_endpoint", "s3_public_endpoint")
    @classmethod
    def _s3_endpoint(cls, value: str) -> str:
        # Empty public endpoint: s3_endpoint's
        return _readable(value, _minio_endpoint, "S3 endpoint") if value else value

    @field_validator("s3_bucket")
    @classmethod
    def _s3_bucket(cls, value: str) -> str:
        check_bucket_name(value)  # minio's ValueError says why (a bucket's name is no secret)
        return value

    @field_validator("provider_url", "public_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        # Empty public URL: nothing can be submitted (the CLI says so when asked to)
        return _readable(value, _httpx_url, "HTTP") if value else value

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
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Build settings from ``MJHOOK_*`` variables; unknown ``MJHOOK_*`` names are an error,
        so a typo does not silently fall back to a default."""
        values = {
            key[len(ENV_PREFIX) :].lower(): value
            for key, value in environ.items()
            if key.startswith(ENV_PREFIX)
        }
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(
                # No loc: a check of several settings, whose message names them
                (f"{ENV_PREFIX}{'.'.join(str(p) for p in err['loc']).upper()}: " if err["loc"] else "")
                + (UNKNOWN_SETTING if err["type"] == "extra_forbidden" else err["msg"])
                for err in exc.errors()
            )
            raise ConfigError(f"invalid configuration: {problems}") from None


def comma_list(value: str) -> tuple[str, ...]:
    """The items of a comma-separated setting, whitespace around each and empty ones left out
    (``" a , b ,"`` is ``("a", "b")``): a rotation's keys or tokens, the first one in use."""
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _with_scheme(url: str, schemes: tuple[str, ...]) -> str:
    """``url`` when it starts with one of ``schemes``, else a ValueError naming them (not the URL,
    which may hold a password)."""
    if not url.startswith(schemes):
        raise ValueError(f"the URL must start with {', '.join(schemes)}")
    return url


def _redis_url(url: str) -> str:
    # redis-py would refuse "127.0.0.1:6379" only at the first command, with a bare ValueError
    return _readable(_with_scheme(url, REDIS_SCHEMES), redis.connection.parse_url, "Redis")


def _readable(url: str, parse: Callable[[str], object], kind: str) -> str:
    """``url`` when ``parse`` (its client library's own parser, which connects nowhere) takes it,
    else a ValueError with the parser's reason, without the URL's user and password."""
    try:
        parse(url)
    except (ValueError, httpx.InvalidURL) as exc:
        raise ValueError(f"not a valid {kind} URL: {_without_credentials(str(exc), url)}") from None
    return url


def _without_credentials(reason: str, url: str) -> str:
    """A parser's ``reason`` for refusing ``url``, with the URL's user and password (all between
    ``//`` and the last ``@``) left out: a parser quotes them only as part of ``user:pw@host``."""
    credentials = url.partition("//")[2].rpartition("@")[0]
    if any(delimiter in credentials for delimiter in "/?#"):
        # The parser cut the URL inside them: a piece of the password may be anywhere in its reason
        return "its user or password holds a / ? or # that is not percent-encoded"
    return reason.replace(f"{credentials}@", "***@") if credentials else reason


def _minio_endpoint(url: str) -> None:
    # shared/storage.py gives minio the endpoint's host and port alone (a path is ignored)
    parts = urlsplit(url)
    BaseURL(f"{parts.scheme}://{parts.netloc}", None)


def _httpx_url(url: str) -> None:
    # httpx takes a port past 65535 (the socket then raises OverflowError): urlsplit refuses it
    urlsplit(url).port  # noqa: B018
    httpx.URL(url)
