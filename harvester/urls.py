"""URL facts kept in one place: an origin, and a URL or text with its credentials masked."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from yarl import URL

SECRET_PARAMS = frozenset({
    "access_token", "token", "api_key", "apikey", "key", "password", "secret", "client_secret",
    "refresh_token", "code", "private_link", "signature", "x-amz-signature",
    "x-amz-credential", "x-amz-security-token",
})
_SECRET_TEXT = re.compile(  # the same names in free text, and Authorization-style values
    rf"(?i)\b((?:{'|'.join(map(re.escape, SECRET_PARAMS))})=)[^&\s\"']+"
    r"|\b((?:token|basic|bearer)\s+)[A-Za-z0-9._~+/=-]{8,}"
)


def origin_of(url: str | URL) -> str:
    """`scheme://host:port` of an absolute URL (default ports made explicit); ValueError if none."""
    u = URL(url)
    if not u.scheme or not u.host:
        raise ValueError(f"not an absolute URL: {sanitize_url(str(url))!r}")
    return f"{u.scheme.lower()}://{u.host.lower()}:{u.port}"


def sanitize_url(url: str | URL) -> str:
    """The URL as it may be shown: no userinfo or fragment, credential-like query values masked.

    A URL with nothing secret in it comes back exactly as given (less its fragment)."""
    text = str(url)
    try:
        parts = urlsplit(text)
    except ValueError:
        return redact(text)
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(k.lower() in SECRET_PARAMS for k, _ in pairs):
        query = urlencode([(k, "REDACTED" if k.lower() in SECRET_PARAMS else v) for k, v in pairs])
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def redact(text: str) -> str:
    """Free text (an error message) with credential-looking values masked."""
    return _SECRET_TEXT.sub(lambda m: (m.group(1) or m.group(2)) + "REDACTED", text)
