"""Redact passwords, tokens and signed-URL signatures from URLs and messages before they are kept."""

from __future__ import annotations

import re
from urllib.parse import unquote_plus, urlsplit, urlunsplit

MASK = "***"
# Query parameters whose value is a secret, by exact (lower-case) name ...
SECRET_PARAMS = frozenset(
    {
        "sig",  # Azure SAS
        "key",  # Google API keys
        "apikey",
        "api_key",
        "api-key",
        "access_key",
        "auth",
        "authorization",
        "password",
        "passwd",
        "pwd",
        "policy",  # CloudFront signed policies
        "key-pair-id",
    }
)
# ... or by a part of the name: X-Amz-Signature, X-Amz-Credential, X-Amz-Security-Token,
# X-Goog-Signature, X-Goog-Credential, Signature, token, access_token, client_secret, ...
SECRET_PARTS = ("signature", "credential", "token", "secret", "password", "session")
SCHEME = r"[A-Za-z][A-Za-z0-9+.-]*://"
# A URL in a message runs to a space, a quote or the next URL (lists such as "a.zip,b.zip").
URL_IN_TEXT = re.compile(SCHEME + r"""(?:(?!""" + SCHEME + r""")[^\s'"<>])+""")


def is_secret_param(name: str) -> bool:
    """Whether a query parameter's value is a credential or a signature."""
    lowered = unquote_plus(name).strip().lower()
    return lowered in SECRET_PARAMS or any(part in lowered for part in SECRET_PARTS)


def _redact_query(query: str) -> str:
    parts = []
    for part in query.split("&"):
        name, equals, value = part.partition("=")
        parts.append(f"{name}={MASK}" if equals and value and is_secret_param(name) else part)
    return "&".join(parts)


def _redact_netloc(netloc: str) -> str:
    userinfo, at, host = netloc.rpartition("@")
    if not at:
        return netloc
    user, colon, _ = userinfo.partition(":")
    # user:password keeps the user name; a lone user part may itself be a token (TOKEN@host).
    return f"{user}:{MASK}@{host}" if colon else f"{MASK}@{host}"


def redact_url(url: str) -> str:
    """The URL with its userinfo password (or lone token) and secret query values masked.

    `http://alice:pw@host/a.jpg?X-Amz-Signature=ab&v=1` -> `http://alice:***@host/a.jpg?
    X-Amz-Signature=***&v=1`. Plain paths and URLs without secrets come back unchanged.
    """
    if "://" not in url and "?" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an invalid IPv6 host: mask every userinfo and secret we can see
        return _redact_unparsed(url)
    netloc = _redact_netloc(parts.netloc)
    query = _redact_query(parts.query) if parts.query else parts.query
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _redact_unparsed(url: str) -> str:
    head, sep, query = url.partition("?")
    scheme, slashes, rest = head.partition("://")
    if slashes:
        netloc, slash, path = rest.partition("/")
        head = f"{scheme}://{_redact_netloc(netloc)}{slash}{path}"
    return head + (sep + _redact_query(query) if sep else "")


def redact_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    """A message with every URL in it redacted and each given secret value masked."""
    redacted = URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)
    for secret in secrets:
        if secret:
            redacted = redacted.replace(secret, MASK)
    return redacted
