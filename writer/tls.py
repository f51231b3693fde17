"""HTTPS for the writer, and its secrets re-read from their files when they change.

:mod:`writer.cli` serves with :func:`uvicorn_config` (uvicorn builds one
``ssl.SSLContext`` from ``tls.cert_file`` / ``key_file``, and requires a
client certificate signed by ``tls.client_ca_file`` when that is set: mTLS).
:class:`CertReloader` watches those files and loads a changed certificate
chain *into the same context*: OpenSSL hands the context's current
certificate to every new handshake, so a Secret rotated on disk is served
from the next connection on, without a restart and without dropping the open
ones. (A rotated client CA is added to the trusted set; CAs that were
trusted before stay trusted until the writer restarts.)

:class:`TokenFile` does the same for the bearer token: each request compares
the file's stamp and re-reads it when it changed; a file that cannot be read
keeps the last good token, so a botched rotation never opens the API.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import BaseModel, ConfigDict

__all__ = ["TlsServerConfig", "FileStamp", "TokenFile", "CertReloader", "uvicorn_config"]

log = logging.getLogger(__name__)


class TlsServerConfig(BaseModel):
    """``tls:`` of the writer file: serve HTTPS with this certificate; optionally require client certificates."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    cert_file: Path
    key_file: Path
    #: CA bundle whose client certificates are accepted; set = mTLS required.
    client_ca_file: Path | None = None


class FileStamp:
    """Whether a set of files changed (device, inode, size, mtime; symlinks followed) since the last look."""

    def __init__(self, *paths: Path) -> None:
        self._paths = paths
        self._last = self._now()

    def _now(self) -> list[tuple[int, int, int, int] | None]:
        out: list[tuple[int, int, int, int] | None] = []
        for p in self._paths:
            try:
                st = os.stat(p)
                out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                out.append(None)
        return out

    def forget(self) -> None:
        """Make the next :meth:`changed` say yes (retry a reload that failed)."""
        self._last = []

    def changed(self) -> bool:
        now = self._now()
        if now == self._last:
            return False
        self._last = now
        return True


def _read_token(path: Path) -> str:
    token = path.read_text().strip()
    if not token:
        raise ValueError(f"token_file {path} is empty")
    return token


class TokenFile:
    """The bearer token, re-read when its file changes; the last good token if a re-read fails."""

    def __init__(self, path: Path, token: str) -> None:
        self._path = path
        self._stamp = FileStamp(path)
        self._token = token
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            if self._stamp.changed():
                try:
                    self._token = _read_token(self._path)
                    log.info("token_file %s changed: token reloaded", self._path)
                except (OSError, ValueError) as err:
                    log.error("token_file %s changed but cannot be read, keeping the previous token: %s", self._path, err)
                    self._stamp.forget()
            return self._token


def uvicorn_config(app: Any, *, host: str, port: int, log_level: str, tls: TlsServerConfig | None) -> uvicorn.Config:
    """uvicorn's config, with TLS (and mTLS) when ``tls`` is set; ``load()`` it to get the SSLContext."""
    kwargs: dict[str, Any] = {}
    if tls is not None:
        kwargs = {"ssl_certfile": str(tls.cert_file), "ssl_keyfile": str(tls.key_file)}
        if tls.client_ca_file is not None:
            kwargs.update(ssl_ca_certs=str(tls.client_ca_file), ssl_cert_reqs=ssl.CERT_REQUIRED)
    return uvicorn.Config(app, host=host, port=port, log_level=log_level.lower(), access_log=False, **kwargs)


class CertReloader:
    """Loads a changed certificate chain (and client CA) into a live server ``SSLContext``."""

    def __init__(self, context: ssl.SSLContext, tls: TlsServerConfig) -> None:
        self._ctx = context
        self._tls = tls
        files = [tls.cert_file, tls.key_file, *([tls.client_ca_file] if tls.client_ca_file else [])]
        self._stamp = FileStamp(*files)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reloads = 0

    def check(self) -> bool:
        """Reload if the files changed; True when a new chain was loaded."""
        if not self._stamp.changed():
            return False
        try:
            self._ctx.load_cert_chain(str(self._tls.cert_file), str(self._tls.key_file))
            if self._tls.client_ca_file is not None:
                self._ctx.load_verify_locations(cafile=str(self._tls.client_ca_file))
        except (OSError, ssl.SSLError) as err:
            # Half-written files during a rotation: keep serving the old chain, retry at the next change.
            log.error("TLS files changed but cannot be loaded, serving the previous certificate: %s", err)
            self._stamp.forget()
            return False
        self.reloads += 1
        log.info("TLS certificate reloaded from %s", self._tls.cert_file)
        return True

    def start(self, interval_seconds: float = 2.0) -> None:
        def loop() -> None:
            while not self._stop.wait(interval_seconds):
                self.check()

        self._thread = threading.Thread(target=loop, name="drcio-tls-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
