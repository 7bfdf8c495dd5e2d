"""Who may call the HTTP server, and how often: bearer tokens that name owners, and a rate limit per owner
(without tokens there are no owners, and the server answers only this machine: nothing is limited).

Tokens come from `--tokens-file` (one `owner:token` a line; blank lines and `#` comments skipped) and from
`MCP_SESSIONS_TOKENS` (`owner:token` pairs separated by commas). A token is compared in constant time.

`--admins` names owners who oversee the others: over REST (and so the dashboard) their tokens read every
owner's sessions and filter the list by owner; anything that changes a session stays their own (MCP, too,
shows them only theirs). Everyone else sees only their own sessions, whatever they ask.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import re
import time
from dataclasses import dataclass, field

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken, TokenVerifier

from .settings import Settings

OWNER = re.compile(r"^[A-Za-z0-9_.@-]{1,100}$")
MIN_TOKEN_CHARS = 16
SCOPE = "sessions"


class ConfigError(Exception):
    """The HTTP server cannot start as configured; the message says why and what to change."""


def parse_tokens(text: str, where: str, separator: str = "\n") -> dict[str, str]:
    """token -> owner, from `owner:token` entries."""
    found: dict[str, str] = {}
    for number, entry in enumerate(text.split(separator), 1):
        entry = entry.strip()
        if not entry or entry.startswith("#"):
            continue
        owner, colon, token = entry.partition(":")
        owner, token = owner.strip(), token.strip()
        place = f"{where}, entry {number}"
        if not colon or not OWNER.match(owner):
            raise ConfigError(f"{place}: expected owner:token, the owner made of letters, digits and _.@- (at most 100).")
        if len(token) < MIN_TOKEN_CHARS:
            raise ConfigError(f"{place}: the token of {owner!r} is shorter than {MIN_TOKEN_CHARS} characters.")
        if token in found and found[token] != owner:
            raise ConfigError(f"{place}: the token of {owner!r} is also given to {found[token]!r}.")
        found[token] = owner
    return found


def load_tokens(settings: Settings) -> dict[str, str]:
    tokens: dict[str, str] = {}
    if settings.tokens_file is not None:
        try:
            text = settings.tokens_file.read_text()
        except OSError as e:
            raise ConfigError(f"cannot read the tokens file {settings.tokens_file}: {e.strerror or e}") from e
        tokens.update(parse_tokens(text, str(settings.tokens_file)))
    if settings.tokens is not None:
        tokens.update(parse_tokens(settings.tokens.get_secret_value(), "MCP_SESSIONS_TOKENS", separator=","))
    return tokens


def load_admins(settings: Settings, tokens: dict[str, str]) -> frozenset[str]:
    """The owners `--admins` names; each must be an owner of the tokens (a typo would make nobody an admin)."""
    named = {a.strip() for a in (settings.admins or "").split(",") if a.strip()}
    unknown = sorted(named - set(tokens.values()))
    if unknown:
        raise ConfigError(f"--admins names {', '.join(map(repr, unknown))}, who has no token: give each admin a token too.")
    return frozenset(named)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings, tokens: dict[str, str]) -> None:
    """Without tokens anyone who can connect may run commands, so only this machine may connect."""
    if not tokens and not is_loopback(settings.host):
        raise ConfigError(
            f"refusing to listen on {settings.host} without tokens: anyone who can reach it could run commands "
            "in sessions. Give --tokens-file (lines owner:token) or MCP_SESSIONS_TOKENS, or listen on 127.0.0.1."
        )


class StaticTokenVerifier(TokenVerifier):
    """Verifies bearer tokens against a fixed table; the owner becomes the token's client_id."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self._tokens = [(t.encode(), owner) for t, owner in tokens.items()]

    async def verify_token(self, token: str) -> AccessToken | None:
        given = token.encode()
        match = None
        for known, owner in self._tokens:  # every entry is compared, so the time says nothing of which matched
            if hmac.compare_digest(given, known):
                match = owner
        return AccessToken(token=token, client_id=match, scopes=[SCOPE]) if match else None


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class RateLimiter:
    """A token bucket per owner: `rate` requests a second on average, bursts of twice that."""

    rate: float
    buckets: dict[str, _Bucket] = field(default_factory=dict)

    @property
    def burst(self) -> float:
        return max(1.0, 2 * self.rate)

    def take(self, key: str) -> float:
        """0 if the request may go on, else the seconds to wait before the next one may."""
        if self.rate <= 0:
            return 0.0
        moment = time.monotonic()
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = _Bucket(self.burst, moment)
        bucket.tokens = min(self.burst, bucket.tokens + (moment - bucket.at) * self.rate)
        bucket.at = moment
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate

    @staticmethod
    def retry_after(wait: float) -> str:
        return str(max(1, math.ceil(wait)))


def caller() -> str | None:
    """Who calls an MCP method: the owner named by the HTTP bearer token; None (every session) on stdio."""
    token = get_access_token()
    return token.client_id if token else None
