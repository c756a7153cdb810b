"""The simulator's settings: one frozen dataclass for the provider, one for the faults it injects.

Durations are real seconds unless a name says otherwise; only the callback retry schedule is
multiplied by ``time_scale`` (the provider's 1/5/15 minutes are too long for a test).
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, field

from simulator.files import DEFAULT_CACHE_BYTES, DEFAULT_HEIGHT, DEFAULT_WIDTH, MAX_IMAGE_SIDE
from simulator.video import DEFAULT_VIDEO_BYTES, MAX_VIDEO_BYTES, MIN_VIDEO_BYTES

#: The provider's callback retry schedule: after 1, 5 and 15 minutes, then never again.
PROVIDER_RETRY_DELAYS_S = (60.0, 300.0, 900.0)
#: How long the provider waits for the answer to a callback.
DEFAULT_CALLBACK_TIMEOUT_S = 15.0
#: Seconds from submission to result: short, for tests and load (the real provider takes ~30-60 s).
DEFAULT_GENERATION_DELAY_S = 1.0
#: Result URLs stay valid about 14 days (then 410, and download-url gives a fresh link).
DEFAULT_URL_TTL_S = 14 * 86400.0
#: The provider keeps generated media 14-15 days: after that, download-url answers code 404 and no
#: link serves the file (404).
DEFAULT_MEDIA_TTL_S = 14 * 86400.0
#: A link from ``/api/v1/common/download-url`` is valid 20 minutes.
REFRESHED_URL_TTL_S = 20 * 60.0
#: Callbacks per second the default delivery pool keeps sending when every answer takes the whole
#: callback timeout (and ``mjhook simulate load``'s default rate).
DEFAULT_CALLBACK_RATE_PER_S = 20.0
#: Callbacks in flight at once by default: 300, each waiting on its answer up to the default
#: callback timeout (threads are started as needed, not beforehand).
DEFAULT_DELIVERY_THREADS = math.ceil(DEFAULT_CALLBACK_RATE_PER_S * DEFAULT_CALLBACK_TIMEOUT_S)
#: How long the simulator's HTTP server waits on a client's socket (a request's next bytes, or room
#: to send the answer), seconds: a client stalling longer is hung up on.
DEFAULT_REQUEST_TIMEOUT_S = 30.0
#: Connections served at once; beyond, new ones wait in the listen backlog until one ends.
DEFAULT_MAX_CONNECTIONS = 512
#: Longest task id prefix: with a 6-digit (or longer) task number, a taskId stays within the
#: 128 characters mjhook accepts.
MAX_TASK_ID_PREFIX_CHARS = 100
#: A taskId's start as mjhook accepts one: ASCII letters, digits, '_' or '-', a letter or digit first.
TASK_ID_PREFIX_PATTERN = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_-]{{0,{MAX_TASK_ID_PREFIX_CHARS - 1}}}")
#: What :data:`TASK_ID_PREFIX_PATTERN` takes, said to whoever gave another prefix.
TASK_ID_PREFIX_RULE = (
    f"letters, digits, '_' or '-' (a letter or digit first), at most {MAX_TASK_ID_PREFIX_CHARS} characters"
)
#: Seconds a slow result file takes to send.
DEFAULT_FILE_SLOW_DELAY_S = 2.0
#: Requests of a file hit by an error or truncation fault before it serves normally.
DEFAULT_FILE_FAULT_REPEATS = 1
#: Seconds between a callback and its duplicate.
DEFAULT_DUPLICATE_DELAY_S = 0.2
#: How far the file fault shares may add up past 1 by float rounding (0.34 + 0.55 + 0.11).
SHARE_SUM_TOLERANCE = 1e-9


@dataclass(frozen=True, kw_only=True)
class FaultConfig:
    """Shares (0.0-1.0) of tasks or files that misbehave. Every decision comes from a
    ``random.Random`` seeded by (``seed``, task number, file index), so the same seed gives the
    same faults for the same task numbers whatever the timing."""

    seed: int = 0
    #: Tasks whose generation fails: a code-500 callback with no URLs, successFlag 2.
    failure_share: float = 0.0
    #: Tasks whose callback is sent twice (a second, independent delivery).
    duplicate_share: float = 0.0
    #: Tasks that complete without any callback (for the polling fallback).
    drop_share: float = 0.0
    #: Result files answering 503 on their first ``file_fault_repeats`` requests.
    file_error_share: float = 0.0
    #: Result files sent slowly, spread over ``file_slow_delay_s`` seconds, on every request.
    file_slow_share: float = 0.0
    #: Result files cut short (Content-Length larger than what is sent) on their first requests.
    file_truncated_share: float = 0.0
    #: Result files whose URL is already expired when issued (410 until refreshed).
    file_expired_share: float = 0.0
    file_slow_delay_s: float = DEFAULT_FILE_SLOW_DELAY_S
    #: Requests of a file hit by an error or truncation fault before it serves normally.
    file_fault_repeats: int = DEFAULT_FILE_FAULT_REPEATS
    #: Seconds between a callback and its duplicate.
    duplicate_delay_s: float = DEFAULT_DUPLICATE_DELAY_S
    #: Tasks whose callback spells the id ``task_id`` in ``data`` instead of ``taskId`` (some of
    #: the provider's samples do); the API and the signature name the same id as ever.
    task_id_spelling_share: float = 0.0
    #: Tasks whose callback carries a ``promptJson`` that is not valid JSON (the task's cut in
    #: half); the task keeps the well-formed one (its upscales and variations start from it).
    malformed_prompt_share: float = 0.0
    #: Of the tasks whose generation fails (``failure_share``), those whose record-info says
    #: successFlag 3 (created but generation failed) instead of 2; their callback is the same.
    failed_after_creation_share: float = 0.0
    #: Submit calls (generate, generateUpscale, generateVary) answered with body code 500, 501 or
    #: 505 (HTTP 200, ``data`` null) instead of a task: no task made, no credit spent. Drawn per
    #: submit call by its number in the run (0 first, counting the calls past the key, maintenance
    #: and rate limit checks), so the same seed fails the same calls, whichever their bodies.
    api_error_share: float = 0.0

    def __post_init__(self) -> None:
        shares = {
            "failure_share": self.failure_share,
            "duplicate_share": self.duplicate_share,
            "drop_share": self.drop_share,
            "file_error_share": self.file_error_share,
            "file_slow_share": self.file_slow_share,
            "file_truncated_share": self.file_truncated_share,
            "file_expired_share": self.file_expired_share,
            "task_id_spelling_share": self.task_id_spelling_share,
            "malformed_prompt_share": self.malformed_prompt_share,
            "failed_after_creation_share": self.failed_after_creation_share,
            "api_error_share": self.api_error_share,
        }
        for name, share in shares.items():
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {share}")
        if self.file_fault_share > 1.0 + SHARE_SUM_TOLERANCE:
            raise ValueError("the file fault shares add up to more than 1")
        if self.file_fault_repeats < 0 or self.file_slow_delay_s < 0 or self.duplicate_delay_s < 0:
            raise ValueError("fault repeats and delays must not be negative")

    @property
    def file_fault_share(self) -> float:
        """The share of files with any fault (the file faults exclude each other)."""
        return (
            self.file_error_share + self.file_slow_share + self.file_truncated_share + self.file_expired_share
        )


@dataclass(frozen=True, kw_only=True)
class SimulatorConfig:
    """The simulated provider. Defaults follow the real one where it has a value."""

    host: str = "127.0.0.1"
    #: 0 picks a free port.
    port: int = 0
    #: Base of result URLs; empty means ``http://{host}:{port}`` as bound (so a wildcard
    #: ``host``, 0.0.0.0, needs one).
    public_url: str = ""
    #: The Bearer key the API accepts.
    api_key: str = "sim-api-key"
    #: When set, callbacks carry X-Webhook-Timestamp and X-Webhook-Signature.
    hmac_key: str = ""
    #: Factor on the callback retry schedule: 0.001 turns 1/5/15 minutes into 60/300/900 ms.
    time_scale: float = 1.0
    retry_delays_s: tuple[float, ...] = PROVIDER_RETRY_DELAYS_S
    #: Seconds from submission to the result (and its callback), plus up to ``generation_jitter_s``.
    generation_delay_s: float = DEFAULT_GENERATION_DELAY_S
    generation_jitter_s: float = 0.0
    callback_timeout_s: float = DEFAULT_CALLBACK_TIMEOUT_S
    #: Threads sending callbacks: callbacks in flight at most (each waits up to
    #: ``callback_timeout_s`` on a slow receiver, holding a thread).
    delivery_threads: int = DEFAULT_DELIVERY_THREADS
    #: Size of generated PNGs, pixels. 1024x1024 is ~1.4-1.8 MB.
    image_width: int = DEFAULT_WIDTH
    image_height: int = DEFAULT_HEIGHT
    #: Size of the MP4 files of video tasks, bytes: exactly this, as many frames as fit (the
    #: default holds 2 s of 112x64 video; see ``simulator.video.video_layout``).
    video_bytes: int = DEFAULT_VIDEO_BYTES
    #: Generated files kept in memory, at most this many and ``file_cache_bytes`` bytes (least
    #: recently used are dropped; a file larger than that is made for each request).
    file_cache_size: int = 64
    file_cache_bytes: int = DEFAULT_CACHE_BYTES
    #: Seconds a result URL stays valid (410 after; download-url gives a fresh link while the media
    #: is kept).
    url_ttl_s: float = DEFAULT_URL_TTL_S
    #: Seconds the task's media is kept after it completed (404 for every link after, and from
    #: download-url); None means the longer of :data:`DEFAULT_MEDIA_TTL_S` and ``url_ttl_s``, so
    #: that a result link never outlives the media unless told to.
    media_ttl_s: float | None = None
    refreshed_url_ttl_s: float = REFRESHED_URL_TTL_S
    #: Secret signing result URLs; empty means a random one per run.
    url_secret: str = ""
    #: API calls (any endpoint) allowed per ``rate_window_s`` (code 429 beyond); 0 means no limit.
    rate_limit: int = 0
    rate_window_s: float = 10.0
    #: Credits; each submission costs one (code 402 when none is left). None means unlimited.
    credits: int | None = None
    #: Every API call answers code 455 (maintenance).
    maintenance: bool = False
    #: The HTTP status of API answers: 200 with the code in the body (False), or the body code.
    http_status_mirrors_code: bool = False
    #: Seconds the HTTP server waits on a client's socket; connections served at once.
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    #: Start of every taskId (``TASK_ID_PREFIX_PATTERN``); empty means ``mjsim-<random hex>-``.
    task_id_prefix: str = ""
    faults: FaultConfig = field(default_factory=FaultConfig)

    def __post_init__(self) -> None:
        if is_wildcard(self.host) and not self.public_url:
            raise ValueError(
                f"host {self.host or '(empty)'} listens on every address but is none to download"
                " from: result URLs need public_url (--public-url), the base URL clients reach"
                " the simulator at"
            )
        if self.time_scale <= 0:
            raise ValueError("time_scale must be positive")
        if not (1 <= self.image_width <= MAX_IMAGE_SIDE and 1 <= self.image_height <= MAX_IMAGE_SIDE):
            raise ValueError(f"image sizes must be from 1 to {MAX_IMAGE_SIDE} pixels")
        if not MIN_VIDEO_BYTES <= self.video_bytes <= MAX_VIDEO_BYTES:
            raise ValueError(
                f"video_bytes must be from {MIN_VIDEO_BYTES} (one 16x16 frame and its MP4 boxes) "
                f"to {MAX_VIDEO_BYTES}, not {self.video_bytes}"
            )
        if self.generation_delay_s < 0 or self.generation_jitter_s < 0:
            raise ValueError("generation delays must not be negative")
        if min(self.delivery_threads, self.file_cache_size, self.file_cache_bytes, self.max_connections) < 1:
            raise ValueError(
                "delivery_threads, file_cache_size, file_cache_bytes and max_connections must be at least 1"
            )
        if self.request_timeout_s <= 0:
            raise ValueError("request_timeout_s must be positive")
        if self.url_ttl_s <= 0 or (self.media_ttl_s is not None and self.media_ttl_s <= 0):
            raise ValueError("url_ttl_s and media_ttl_s must be positive")
        if self.task_id_prefix and TASK_ID_PREFIX_PATTERN.fullmatch(self.task_id_prefix) is None:
            raise ValueError(f"task id prefix {self.task_id_prefix!r} must be {TASK_ID_PREFIX_RULE}")

    @property
    def kept_s(self) -> float:
        """Seconds the task's media is kept after it completed: ``media_ttl_s``, or by default the
        longer of 14 days and ``url_ttl_s``."""
        if self.media_ttl_s is not None:
            return self.media_ttl_s
        return max(DEFAULT_MEDIA_TTL_S, self.url_ttl_s)

    @property
    def scaled_retry_delays_s(self) -> tuple[float, ...]:
        """The retry schedule in real seconds: each delay is counted from the previous attempt."""
        return tuple(delay * self.time_scale for delay in self.retry_delays_s)


def is_wildcard(host: str) -> bool:
    """Whether ``host`` means every address of the machine (``""``, ``0.0.0.0``, ``::``)."""
    try:
        return not host or ipaddress.ip_address(host).is_unspecified
    except ValueError:  # a name
        return False
