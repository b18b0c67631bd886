"""HTTP download credentials: URL userinfo, a header from the environment, or a netrc entry."""

from __future__ import annotations

import base64
import functools
import logging
import netrc
import os
import re
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.client import HTTPMessage
from typing import IO
from urllib.parse import unquote, urlsplit, urlunsplit

from schemas.errors import ConfigError

LOGGER = logging.getLogger(__name__)
HEADER_ENV = "MLSP_DOWNLOAD_HEADER"  # "Name: value" sent to every http(s) host
# HEADER_ENV + "_" + host in upper case with each character other than A-Z, 0-9 as "_":
# MLSP_DOWNLOAD_HEADER_DATA_EXAMPLE_COM is sent to data.example.com only, and wins over HEADER_ENV.
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
MIN_MASKED = 4  # shorter values are not masked in messages (they would mangle the text)
NO_CREDENTIALS = (
    f"no credentials sent (give user:password@ in the URL, a netrc entry or {HEADER_ENV})"
)


@dataclass(frozen=True)
class Credentials:
    """What one request sends: its URL without userinfo, credential headers, and their origin.

    Attributes:
        url: the URL to request (userinfo removed).
        headers: credential headers (sent to this host only, never across a redirect to another).
        origin: where they come from, for messages; never the secret itself.
        secrets: values to mask if they ever appear in a message.
    """

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    origin: str = NO_CREDENTIALS
    secrets: tuple[str, ...] = ()


def split_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """(url without userinfo, user, password), user and password percent-decoded."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return url, None, None
    user, colon, password = userinfo.partition(":")
    bare = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return bare, unquote(user), unquote(password) if colon else None


def host_variable(host: str) -> str:
    """The per-host header variable: MLSP_DOWNLOAD_HEADER_DATA_EXAMPLE_COM for data.example.com."""
    return f"{HEADER_ENV}_{re.sub(r'[^A-Z0-9]', '_', host.upper())}"


def parse_header(variable: str, text: str) -> tuple[str, str]:
    """'Name: value' -> (Name, value).

    Raises:
        ConfigError: not of that form; the message names the variable, never its value.
    """
    name, colon, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not colon or not HEADER_NAME.match(name) or not value or re.search(r"[\r\n]", value):
        raise ConfigError(
            f"{variable}: expected 'Header-Name: value' (e.g. 'Authorization: "
            "Bearer TOKEN') on one line"
        )
    return name, value


def check_header_environment(environ: Mapping[str, str] | None = None) -> list[str]:
    """The header variables set, each checked (a job-level check before any download).

    Raises:
        ConfigError: one of them is malformed.
    """
    environ = os.environ if environ is None else environ
    names = sorted(name for name in environ if name.startswith(HEADER_ENV))
    for name in names:
        parse_header(name, environ[name])
    return names


def netrc_path(environ: Mapping[str, str] | None = None) -> str:
    """$NETRC when set (as curl and requests read it), else ~/.netrc."""
    environ = os.environ if environ is None else environ
    return environ.get("NETRC") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".netrc"
    )


@functools.lru_cache(maxsize=8)
def _parsed_netrc(path: str, mtime_ns: int) -> netrc.netrc | None:
    try:
        return netrc.netrc(path)
    except (netrc.NetrcParseError, OSError) as error:
        LOGGER.warning("netrc %s is ignored: %s", path, getattr(error, "msg", error))
        return None


def netrc_login(host: str, environ: Mapping[str, str] | None = None) -> tuple[str, str, str] | None:
    """(login, password, netrc path) for a host (or the default entry), if any."""
    path = netrc_path(environ)
    try:
        mtime_ns = os.stat(path).st_mtime_ns
    except OSError:
        return None
    parsed = _parsed_netrc(path, mtime_ns)
    entry = parsed.authenticators(host) if parsed is not None else None
    if entry is None or not (entry[0] or entry[2]):
        return None
    login, _, password = entry
    return login or "", password or "", path


def basic(user: str, password: str) -> str:
    """Authorization header value of HTTP Basic auth."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def resolve(url: str, environ: Mapping[str, str] | None = None) -> Credentials:
    """Credentials for one http(s) URL: userinfo, else the per-host or global header variable,
    else a netrc entry for the host, else none.

    Raises:
        ConfigError: a malformed header variable.
    """
    environ = os.environ if environ is None else environ
    bare, user, password = split_userinfo(url)
    if user is not None:
        value = basic(user, password or "")
        return Credentials(
            bare,
            {"Authorization": value},
            f"Basic auth from the URL's userinfo (user {user!r})",
            _maskable(password, value),
        )
    host = urlsplit(bare).hostname or ""
    for variable in (host_variable(host), HEADER_ENV):
        if environ.get(variable):
            name, value = parse_header(variable, environ[variable])
            return Credentials(
                bare,
                {name: value},
                f"{name} header from {variable}",
                _maskable(value, value.partition(" ")[2]),
            )
    found = netrc_login(host, environ)
    if found is not None:
        login, secret, path = found
        value = basic(login, secret)
        return Credentials(
            bare,
            {"Authorization": value},
            f"Basic auth from netrc {path} (login {login!r})",
            _maskable(secret, value),
        )
    return Credentials(bare)


def _maskable(*values: str | None) -> tuple[str, ...]:
    return tuple(value for value in values if value and len(value) >= MIN_MASKED)


def _same_origin(old: str, new: str) -> bool:
    """Same host and port, or the same host upgraded from http to https."""
    before, after = urlsplit(old), urlsplit(new)
    if (before.hostname or "").lower() != (after.hostname or "").lower():
        return False
    if (before.scheme, before.port) == (after.scheme, after.port):
        return True
    return (
        (before.scheme, after.scheme) == ("http", "https")
        and before.port in (None, 80)
        and after.port in (None, 443)
    )


class CredentialRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects, re-sending credential headers only to the same origin.

    Credentials are unredirected headers, which urllib never copies to the next request; this
    handler copies them back when the redirect stays on the host (a signed-URL redirect to a
    storage host gets none).
    """

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        carried: dict[str, str] = getattr(req, "credential_headers", {})
        if new is not None and carried and _same_origin(req.full_url, new.full_url):
            attach(new, carried)
        return new


def attach(request: urllib.request.Request, headers: dict[str, str]) -> None:
    """Add credential headers to a request (unredirected: see CredentialRedirects)."""
    for name, value in headers.items():
        request.add_unredirected_header(name, value)
    request.credential_headers = dict(headers)  # type: ignore[attr-defined]


OPENER: urllib.request.OpenerDirector = urllib.request.build_opener(CredentialRedirects)
