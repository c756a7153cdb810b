"""The provider's body codes, and the one exception that carries them to the HTTP layer."""

from __future__ import annotations

CODE_OK = 200
CODE_BAD_REQUEST = 400
CODE_UNAUTHORIZED = 401
CODE_NO_CREDITS = 402
CODE_NOT_FOUND = 404
CODE_VALIDATION = 422
CODE_RATE_LIMITED = 429
CODE_MAINTENANCE = 455
CODE_SERVER_ERROR = 500
CODE_GENERATION_FAILED = 501
CODE_FEATURE_DISABLED = 505


class ProviderError(Exception):
    """An API call answered with body ``{"code": code, "msg": msg, "data": null}``."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(f"{code} {msg}")
        self.code = code
        self.msg = msg
