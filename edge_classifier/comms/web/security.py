"""Who may use the web studio, and from which page.

Three checks, in this order, on every request (:class:`Guard`)::

    guard = Guard(config.web, tls=False)
    guard.host_problem(request)      # None, or why the Host header is refused
    guard.origin_problem(request)    # None, or why a state-changing request is refused
    guard.authenticated(request)     # session cookie, or Basic / Bearer credentials

* **Host**: IP addresses and ``localhost`` always pass, names in ``web.hosts`` too, and with a
  password any name. Otherwise the name is refused, which stops DNS rebinding: a page on
  ``evil.example`` whose name was re-pointed at 127.0.0.1 sends ``Host: evil.example``.
* **Origin** (requests other than GET/HEAD/OPTIONS): a browser says which page sent the
  request; anything but this studio's own origin is refused, ``null`` too; without an
  ``Origin``, a ``Sec-Fetch-Site`` other than ``same-origin``/``none`` is refused. Clients that
  are not browsers (curl, Node-RED) send neither and pass.
* **Password** (when one is configured): the page logs in once (a random session token in an
  ``HttpOnly; SameSite=Strict`` cookie, kept in memory only); other clients send the password
  as HTTP Basic (any user name) or ``Authorization: Bearer <password>``. Failed attempts are
  limited to :data:`MAX_FAILURES` a minute, then refused for the rest of it.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hmac
import ipaddress
import secrets
import time
from typing import Callable, Optional

from edge_classifier.config import parse_listen, read_web_password, web_hosts
from edge_classifier.config import is_loopback

SESSION_COOKIE = "edge_classifier_session"
SESSION_SECONDS = 7 * 24 * 3600
MAX_SESSIONS = 64
MAX_FAILURES = 10  # per minute
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                               "media-src 'self' blob: mediastream:; style-src 'self'; "
                               "script-src 'self'; connect-src 'self'; object-src 'none'; "
                               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def host_name(host_header: str) -> str:
    """The name in a Host header, without port or IPv6 brackets, lower-case."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host[1:]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class Guard:
    """The checks of the module docstring for one studio. ``now`` is a monotonic clock (the
    session lifetime and the failure limit)."""

    def __init__(self, web_config, tls: bool = False,
                 now: Callable[[], float] = time.monotonic):
        self.password = "" if web_config.auth == "none" else read_web_password(web_config)
        host, _ = parse_listen(web_config.listen or "0")
        self.loopback = is_loopback(host)
        self.hosts = frozenset(web_hosts(web_config.hosts))
        self.tls = tls
        self._now = now
        self._sessions: "collections.OrderedDict[str, float]" = collections.OrderedDict()
        self._failures: "collections.deque[float]" = collections.deque()

    @property
    def required(self) -> bool:
        """A password must be given."""
        return bool(self.password)

    # -- the checks ----------------------------------------------------------------------------
    def host_problem(self, host_header: str) -> Optional[str]:
        name = host_name(host_header).rstrip(".")
        if not name or _is_ip(name) or name == "localhost" or name in self.hosts:
            return None
        if self.password:
            return None
        return (f"the studio is not served under the name {name[:80]!r}: open it by IP address "
                f"or localhost, or add the name to web.hosts")

    def origin_problem(self, method: str, host_header: str, origin: Optional[str],
                       fetch_site: Optional[str]) -> Optional[str]:
        if method.upper() in SAFE_METHODS:
            return None
        if origin is not None:
            own = f"{'https' if self.tls else 'http'}://{host_header}".lower()
            if origin.strip().lower() != own:
                shown = origin[:80] if origin != "null" else "a sandboxed or local page"
                return f"a request from {shown} was refused: only the studio's own page may " \
                       "change the device"
            return None
        if fetch_site is not None and fetch_site.lower() not in ("same-origin", "none"):
            return "a cross-site request was refused"
        return None

    def authenticated(self, cookie: Optional[str], authorization: Optional[str]) -> bool:
        if not self.password:
            return True
        if cookie and self._session_valid(cookie):
            return True
        scheme, _, value = (authorization or "").partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "bearer":
            return self.check(value)
        if scheme == "basic":
            try:
                decoded = base64.b64decode(value, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return self.check(None)
            return self.check(decoded.partition(":")[2])
        return False

    # -- passwords and sessions ----------------------------------------------------------------
    def locked_out(self) -> bool:
        """Too many failed attempts in the last minute."""
        horizon = self._now() - 60
        while self._failures and self._failures[0] < horizon:
            self._failures.popleft()
        return len(self._failures) >= MAX_FAILURES

    def check(self, password: Optional[str]) -> bool:
        """True if ``password`` is the studio's (constant time); failures are counted."""
        if not self.password:
            return True
        if self.locked_out():
            return False
        good = password is not None and hmac.compare_digest(
            password.encode("utf-8", "surrogatepass"), self.password.encode("utf-8"))
        if not good:
            self._failures.append(self._now())
        return good

    def login(self, password: Optional[str]) -> Optional[str]:
        """A new session token for the right password, else None."""
        if not self.check(password):
            return None
        token = secrets.token_urlsafe(32)
        self._sessions[token] = self._now() + SESSION_SECONDS
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return token

    def logout(self, token: Optional[str]) -> None:
        if token:
            self._sessions.pop(token, None)

    def _session_valid(self, token: str) -> bool:
        expires = self._sessions.get(token)
        if expires is None:
            return False
        if expires < self._now():
            del self._sessions[token]
            return False
        return True

    def cookie_flags(self) -> dict:
        return {"httponly": True, "samesite": "Strict", "secure": self.tls, "path": "/",
                "max_age": SESSION_SECONDS}
