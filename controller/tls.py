"""TLS and credentials of the controller's two clients, re-read when their files change.

Wired by :mod:`controller.cli`:

* the push client (:class:`controller.push.HttpPusher`) takes its TLS settings
  as ``verify: ssl.SSLContext | bool``; :func:`client_context` builds that
  context from ``writers.tls`` (CA bundle, optional client certificate for
  mTLS). :class:`ReloadingPusher` rebuilds the pusher - token and context -
  when the token file or a certificate file changes, so a Secret can be
  rotated under a running controller;
* the Prometheus sensor gets a verifying ``requests`` session
  (:func:`prometheus_session`: never ``disable_ssl``) and an auth hook that
  reads the bearer token or basic-auth password from its file, again
  re-reading it when it changes.

"Changed" is judged by the file's identity and content stamp
(:class:`FileWatch`: device, inode, size, mtime, following symlinks), which
also catches the atomic symlink swap Kubernetes uses to update a mounted
Secret. A file that cannot be read during a reload keeps the last good
credentials (logged) rather than stopping the loop.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import requests
from requests.auth import AuthBase, HTTPBasicAuth

from controller.config import BasicAuthConfig, PrometheusConfig, TlsClientConfig
from controller.errors import ConfigError
from controller.push import InForce, Pusher, PushResult
from writer.api import TargetsPush

__all__ = [
    "FileWatch",
    "client_context",
    "ReloadingPusher",
    "tls_files",
    "FileTokenAuth",
    "FileBasicAuth",
    "prometheus_session",
    "prometheus_auth",
]

log = logging.getLogger(__name__)

_Stamp = tuple[int, int, int, int] | None


def _stamp(path: Path) -> _Stamp:
    try:
        st = os.stat(path)  # follows symlinks: a Secret's ..data swap changes the inode
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class FileWatch:
    """Tells whether any of ``paths`` changed since the last call (the first call says no)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self._paths = list(paths)
        self._stamps = [_stamp(p) for p in self._paths]

    def changed(self) -> bool:
        now = [_stamp(p) for p in self._paths]
        if now == self._stamps:
            return False
        self._stamps = now
        return True


def client_context(tls: TlsClientConfig | None) -> ssl.SSLContext | bool:
    """The ``verify`` for a client: ``True`` (system trust) without settings, else a context.

    Raises :class:`ConfigError` naming the file when a certificate or key cannot be loaded.
    """
    if tls is None:
        return True
    try:
        ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file is not None else None)
        ctx.check_hostname = tls.check_hostname
        if tls.cert_file is not None and tls.key_file is not None:
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except (OSError, ssl.SSLError) as e:
        files = [str(f) for f in (tls.ca_file, tls.cert_file, tls.key_file) if f is not None]
        raise ConfigError(files[0] if files else "tls", [f"tls {files}: cannot load: {e}"]) from None
    return ctx


def tls_files(tls: TlsClientConfig | None) -> list[Path]:
    if tls is None:
        return []
    return [f for f in (tls.ca_file, tls.cert_file, tls.key_file) if f is not None]


class ReloadingPusher:
    """A :class:`~controller.push.Pusher` rebuilt by ``build`` whenever one of ``files`` changes.

    ``build`` reads the files (token, CA, client certificate) and returns a
    fresh pusher; a failing rebuild keeps the previous pusher and logs why.
    """

    def __init__(self, build: Callable[[], Pusher], files: Sequence[Path]) -> None:
        self._build = build
        self._watch = FileWatch(files)
        self._pusher = build()
        self.reloads = 0

    def push(self, writers: Sequence[str], body: TargetsPush) -> list[PushResult]:
        if self._watch.changed():
            try:
                old, self._pusher = self._pusher, self._build()
                _close(old)  # its pooled connections carry the old credentials
                self.reloads += 1
                log.info("push credentials changed on disk: token / certificates reloaded")
            except ConfigError as e:
                log.error("push credentials changed but cannot be loaded, keeping the previous ones: %s", e)
        return self._pusher.push(writers, body)

    def read_in_force(self, writers: Sequence[str], deadline_seconds: float) -> list[InForce]:
        return self._pusher.read_in_force(writers, deadline_seconds)

    def close(self) -> None:
        _close(self._pusher)


def _close(pusher: object) -> None:
    close = getattr(pusher, "close", None)
    if callable(close):
        close()


def _read_secret(path: Path) -> str:
    text = path.read_text().strip()
    if not text:
        raise ValueError(f"{path} is empty")
    return text


class _FileSecret:
    """The content of a secret file, re-read when it changes; the last good value on a failed read."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._watch = FileWatch([path])
        self._lock = threading.Lock()
        try:
            self._value = _read_secret(path)
        except (OSError, ValueError) as e:
            raise ConfigError(str(path), [f"{path}: cannot read: {e}"]) from None

    def value(self) -> str:
        with self._lock:
            if self._watch.changed():
                try:
                    self._value = _read_secret(self._path)
                except (OSError, ValueError) as e:
                    log.error("%s changed but cannot be read, keeping the previous value: %s", self._path, e)
            return self._value


class FileTokenAuth(AuthBase):
    """``Authorization: Bearer <token from file>``, the file re-read when it changes."""

    def __init__(self, path: Path) -> None:
        self._secret = _FileSecret(path)

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self._secret.value()}"
        return r


class FileBasicAuth(AuthBase):
    """HTTP basic auth with the password from a file, re-read when it changes."""

    def __init__(self, cfg: BasicAuthConfig) -> None:
        self._username = cfg.username
        self._secret = _FileSecret(cfg.password_file)

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        return HTTPBasicAuth(self._username, self._secret.value())(r)


def prometheus_auth(cfg: PrometheusConfig) -> AuthBase | None:
    if cfg.bearer_token_file is not None:
        return FileTokenAuth(cfg.bearer_token_file)
    if cfg.basic_auth is not None:
        return FileBasicAuth(cfg.basic_auth)
    return None


def prometheus_session(cfg: PrometheusConfig) -> requests.Session:
    """A session that always verifies TLS: against ``prometheus.tls.ca_file`` when given.

    ``requests`` takes a CA bundle path per session (it re-reads it for new
    connections), and a client certificate as a (cert, key) pair.
    """
    session = requests.Session()
    tls = cfg.tls
    session.verify = str(tls.ca_file) if tls is not None and tls.ca_file is not None else True
    if tls is not None and tls.cert_file is not None and tls.key_file is not None:
        session.cert = (str(tls.cert_file), str(tls.key_file))
    return session
