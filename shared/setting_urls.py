"""The checks of the settings that hold a URL (shared/settings.py): each is read by its own client
library's parser, which connects nowhere, so that a URL the library cannot use is refused at
start-up with the parser's reason, and never with the URL's user or password in it."""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

import httpx
import pika
import redis.connection
from minio.helpers import BaseURL

#: URL schemes of a Redis (``MJHOOK_REDIS_URL``, and a broker whose queues live in Redis).
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
#: URL schemes of a RabbitMQ broker.
AMQP_SCHEMES = ("amqp://", "amqps://")
#: URL schemes of the provider's API and of our public address.
HTTP_SCHEMES = ("http://", "https://")

#: A URL's scheme and authority up to its userinfo's "@" (the last one before the path).
_USERINFO = re.compile(r"^((?:[A-Za-z][A-Za-z0-9+.\-]*:)?//)[^/?#]*@")
#: A ``password=`` in a URL's query (redis-py reads one as the password).
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)
#: The path of a redis:// or rediss:// URL: empty, or a database number.
_DATABASE_PATH = re.compile(r"/?[0-9]*/?")


def masked(url: str) -> str:
    """``url`` with its user and password, and the value of a ``password=`` in its query, shown as
    ``***``."""
    return _QUERY_PASSWORD.sub(r"\1***", _USERINFO.sub(r"\1***@", url, count=1))


def redis_url(url: str) -> str:
    """``url`` when redis-py can use it as a Redis's, else a ValueError saying why."""
    # redis-py would refuse "127.0.0.1:6379" only at the first command, with a bare ValueError
    return _readable(_with_scheme(url, REDIS_SCHEMES), _redis_parse, "Redis")


def broker_url(url: str) -> str:
    """``url`` when it is a Redis's (:func:`redis_url`) or a RabbitMQ's pika can read, else a
    ValueError saying why."""
    if _with_scheme(url, REDIS_SCHEMES + AMQP_SCHEMES).startswith(AMQP_SCHEMES):
        return _readable(url, _pika_parse, "RabbitMQ")
    return redis_url(url)


def s3_endpoint(url: str) -> str:
    """``url`` when minio can use it as an S3 endpoint, else a ValueError saying why."""
    return _readable(url, _minio_endpoint, "S3 endpoint")


def http_base_url(url: str) -> str:
    """``url`` when httpx can use it as a base URL that paths are added to (the provider's API, our
    public address), else a ValueError saying why."""
    # The scheme in any case, as httpx reads it (HTTPS://)
    url = _readable(_with_scheme(url, HTTP_SCHEMES, any_case=True), _httpx_url, "HTTP")
    if "?" in url or "#" in url:
        # The paths of the provider's API and of our callback are added to it: after a query
        # or a fragment they would be read as part of it, and every call go to the host's root
        raise ValueError("the base URL must have no query (?...) or fragment (#...)")
    return url


def _with_scheme(url: str, schemes: tuple[str, ...], *, any_case: bool = False) -> str:
    """``url`` when it starts with one of ``schemes`` (in any case when ``any_case``: redis-py and
    the broker's choice read them in lower case only), else a ValueError naming them (not the URL,
    which may hold a password)."""
    if not (url.lower() if any_case else url).startswith(schemes):
        raise ValueError(f"the URL must start with {', '.join(schemes)}")
    return url


def _redis_parse(url: str) -> None:
    redis.connection.parse_url(url)  # type: ignore[no-untyped-call]
    if url.startswith("unix://"):
        return
    # redis-py reads a path that is no number ("/x") as database 0, silently, and "/1/2" as 12
    if not _DATABASE_PATH.fullmatch(unquote(urlsplit(url).path)):
        raise ValueError("its path must be a database number (/0, /1, ...) or nothing")
    _names_a_host(url)


def _pika_parse(url: str) -> None:
    pika.URLParameters(url)
    _names_a_host(url)


def _readable(url: str, parse: Callable[[str], object], kind: str) -> str:
    """``url`` when ``parse`` (its client library's own parser, which connects nowhere) takes it,
    else a ValueError with the parser's reason, without the URL's user and password."""
    try:
        parse(url)
    except Exception as exc:  # a parser raises more than ValueError (pika a TypeError, from ssl)
        raise ValueError(f"not a valid {kind} URL: {_without_credentials(str(exc), url)}") from None
    return url


def _without_credentials(reason: str, url: str) -> str:
    """A parser's ``reason`` for refusing ``url``, with the URL's user and password (all between
    ``//`` and the last ``@``) left out: a parser quotes them as part of ``user:pw@host``. A reason
    that shows the password otherwise (alone, or percent-decoded) is left out whole."""
    credentials = url.partition("//")[2].rpartition("@")[0]
    if any(delimiter in credentials for delimiter in "/?#"):
        # The parser cut the URL inside them: a piece of the password may be anywhere in its reason
        return "its user or password holds a / ? or # that is not percent-encoded"
    if not credentials:
        return reason
    reason = reason.replace(f"{credentials}@", "***@")
    password = credentials.partition(":")[2]
    if password and (password in reason or unquote(password) in reason):
        return "the reason would show the URL's password"
    return reason


def _minio_endpoint(url: str) -> None:
    # shared/storage.py gives minio the endpoint's host and port alone (a path is ignored)
    parts = urlsplit(url)
    BaseURL(f"{parts.scheme}://{parts.netloc}", None)
    _names_a_host(url)


def _httpx_url(url: str) -> None:
    # httpx takes a port past 65535 (the socket then raises OverflowError): urlsplit refuses it
    urlsplit(url).port  # noqa: B018
    _names_a_host(url)
    httpx.URL(url)


def _names_a_host(url: str) -> None:
    # minio and httpx take "http://" (and "http://:80"), to fail every request; redis-py and pika
    # read "redis://:pw@:6379/0" and "amqp://" as localhost, which the URL did not say
    if not urlsplit(url).hostname:
        raise ValueError("it names no host")
