"""Process supervision for the local backend: start processes in their own sessions, notice deaths, stop groups.

Used by :mod:`experiments.backends.local` (and by any backend that runs the
experiment's processes on this machine). Every process is started in its own
session (process group) and tracked by one :class:`Supervisor`; a process
that dies unexpectedly fails the scenario with the tail of its log, and
stopping a process stops its whole group (grandchildren included).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

__all__ = ["ProcessFailed", "Supervisor", "entry_point", "wait_until", "http_ok", "json_event", "nonempty"]

log = logging.getLogger(__name__)

class ProcessFailed(RuntimeError):
    """A supervised process exited when it should have kept running (or failed to become ready)."""


@dataclass
class _Managed:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    expect_exit: bool


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text.splitlines()[-lines:]) or "    (empty log)"


class Supervisor:
    """Starts processes each in a new session and stops them as whole process groups.

    ``started_pids`` keeps every pid ever started (tests check that none is
    left). ``stop`` sends SIGTERM to the group, waits ``timeout``, then
    SIGKILLs the group (which also reaches grandchildren that outlived their
    parent).
    """

    def __init__(self, *, stop_timeout_seconds: float = 10.0) -> None:
        self.stop_timeout_seconds = stop_timeout_seconds
        self._running: list[_Managed] = []
        self.started_pids: list[int] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        stdout_path: Path | None = None,
        expect_exit: bool = False,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv``; stderr (and stdout unless ``stdout_path``) go to ``log_path``."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        err: IO[bytes] = open(log_path, "ab")
        out: IO[bytes] = open(stdout_path, "ab") if stdout_path is not None else err
        try:
            proc = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True,
                env={**os.environ, **(env or {})},
            )
        except OSError as exc:
            raise ProcessFailed(f"cannot start {name} ({argv[0]}): {exc.strerror}") from exc
        finally:
            err.close()
            if out is not err:
                out.close()
        self._running.append(_Managed(name, proc, log_path, expect_exit))
        self.started_pids.append(proc.pid)
        return proc

    def check(self) -> None:
        """Raise :class:`ProcessFailed` if a process that should be running has exited."""
        for m in self._running:
            code = m.proc.poll()
            if code is not None and not (m.expect_exit and code == 0):
                raise ProcessFailed(f"{m.name} (pid {m.proc.pid}) exited with status {code}; "
                                    f"last lines of {m.log_path}:\n{_tail(m.log_path)}")

    def describe_failure(self, proc: subprocess.Popen[bytes]) -> str:
        m = self._find(proc)
        return f"{m.name} exited with status {proc.returncode}; last lines of {m.log_path}:\n{_tail(m.log_path)}"

    def _find(self, proc: subprocess.Popen[bytes]) -> _Managed:
        for m in self._running:
            if m.proc is proc:
                return m
        raise KeyError(proc.pid)

    def stop(self, proc: subprocess.Popen[bytes], *, timeout: float | None = None) -> int | None:
        """Terminate ``proc``'s process group; returns its exit status.

        A process already reaped (waited for, or polled by :meth:`check`)
        gets no signal of its own: its id is free, and hours later, at the end
        of a run, a process that reused it could be signalled instead. Only
        stragglers of its group are killed, and only while no process holds
        its id (a process that reused the id would lead a group of that id).
        """
        if proc.returncode is not None:
            if not Path(f"/proc/{proc.pid}").exists():
                _signal_group(proc.pid, signal.SIGKILL)
            self._running = [m for m in self._running if m.proc is not proc]
            return proc.returncode
        timeout = self.stop_timeout_seconds if timeout is None else timeout
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("pid %d did not stop within %.0f s of SIGTERM; killing its process group", proc.pid, timeout)
        _signal_group(proc.pid, signal.SIGKILL)  # stragglers of the group, and the leader if still there
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log.error("pid %d survived SIGKILL (uninterruptible I/O?)", proc.pid)
        self._running = [m for m in self._running if m.proc is not proc]
        return proc.returncode

    def stop_all(self) -> None:
        """Stop every running process: SIGTERM to all groups first, so they stop in parallel, then wait."""
        for m in self._running:
            if m.proc.returncode is None:  # not yet reaped (see stop)
                _signal_group(m.proc.pid, signal.SIGTERM)
        for m in list(reversed(self._running)):
            self.stop(m.proc)

    @property
    def running(self) -> list[int]:
        return [m.proc.pid for m in self._running if m.proc.poll() is None]


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def entry_point(script: str, module: str) -> list[str]:
    """The console script beside this interpreter, else the same ``main`` through ``-c``."""
    candidate = Path(sys.executable).parent / script
    if candidate.exists():
        return [str(candidate)]
    return [sys.executable, "-c", f"import sys; from {module} import main; sys.argv[0] = {script!r}; main()"]


def wait_until(what: str, ready: Callable[[], bool], *, proc: subprocess.Popen[bytes] | None,
                supervisor: Supervisor, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ProcessFailed(f"{what}: {supervisor.describe_failure(proc)}")
        if ready():
            return
        time.sleep(0.1)
    raise ProcessFailed(f"{what}: not ready within {timeout:g} s")


@contextmanager
def http_ok(url: str) -> Iterator[Callable[[], bool]]:
    """A readiness check for :func:`wait_until`: ``GET url`` answers 200. Use as ``with http_ok(url) as ready``.

    One client for the whole wait, closed when the block ends however it ends: ``httpx.get`` would
    build a client (and a TLS context, ~50 ms of CPU) on each of the 10 polls a second.
    """
    with httpx.Client(timeout=1.0) as client:
        def ready() -> bool:
            try:
                return client.get(url).status_code == 200
            except httpx.HTTPError:
                return False
        yield ready


def json_event(path: Path, event: str) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            return False
        for line in lines:
            try:
                if json.loads(line).get("event") == event:
                    return True
            except (ValueError, AttributeError):
                continue
        return False
    return ready


def nonempty(path: Path) -> Callable[[], bool]:
    return lambda: path.exists() and path.stat().st_size > 0
