"""The worker's life cycle: notice that it should stop, and stop within a deadline.

Three pieces, all standard library (no torch), used by :mod:`spherediff_core.worker`:

* :class:`ParentWatch` calls back when the process that started the worker is gone
  (POSIX: the worker was re-parented, or the given pid no longer exists; Windows: the
  parent's process handle is signalled, checked against pid reuse by creation time).
* :class:`SignalWakeup` sees SIGINT/SIGTERM/SIGBREAK *as they arrive*, even while the main
  thread is inside one long native call (a model call, a KD-tree query): Python runs
  signal handlers only between bytecodes of the main thread, so without this a signal
  would wait for the call to return, minutes for a big view on a CPU.
* :class:`StopDeadline`: once a stop was requested, the main thread gets ``grace_s`` to
  stop by itself (it polls the cancel flag between view batches, plan-build rounds and
  blended views, and removes its partial outputs). If it is still busy then, the deadline
  runs the hard-stop callback (which sends the ``cancelled`` event) and ends the process
  with ``os._exit``. That is safe because every place that writes files runs inside
  :func:`protected`: the hard stop waits for it to finish (the writer then places or
  removes its files itself), so it never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator

__all__ = ["ParentWatch", "SignalWakeup", "StopDeadline", "protected"]

logger = logging.getLogger(__name__)

_guard = threading.Condition()
_busy = 0  # how many protected sections are running (any thread)


@contextlib.contextmanager
def protected() -> Iterator[None]:
    """A section a hard stop must not cut (writing or placing files): it waits for it."""
    global _busy
    with _guard:
        _busy += 1
    try:
        yield
    finally:
        with _guard:
            _busy -= 1
            _guard.notify_all()


class StopDeadline:
    """Ends the process ``grace_s`` after :meth:`arm` unless it has ended by itself.

    ``on_hard_stop`` runs on the deadline's thread when the main thread has not finished
    (it reports the stop and removes what only the worker knows about) and returns the
    exit code. After :meth:`settle` (the main thread has sent its final event and cleaned
    up) the deadline only ends the process with the settled code, should the interpreter's
    own shutdown be slow.
    """

    def __init__(self, grace_s: float, on_hard_stop: Callable[[], int]) -> None:
        self.grace_s = grace_s
        self.on_hard_stop = on_hard_stop
        self._armed = threading.Event()
        self._code: int | None = None
        self._epoch = 0  # bumped by disarm(): a countdown of an earlier epoch does nothing

    @property
    def armed(self) -> bool:
        return self._armed.is_set()

    def arm(self) -> None:
        """Start the countdown (idempotent, any thread, also from a signal handler)."""
        with _guard:  # (re-entrant: a signal handler may run while this thread holds it)
            if self._armed.is_set():
                return
            self._armed.set()
            epoch = self._epoch  # read with the flag, so a disarm() cannot come between
        threading.Thread(
            target=self._run, args=(epoch,), name="spherediff-stop-deadline", daemon=True
        ).start()

    def settle(self, code: int) -> None:
        """The main thread is done: nothing is left to clean up; exit with ``code``."""
        with _guard:
            self._code = code

    def disarm(self) -> None:
        """The job that was asked to stop has stopped by itself and the process goes on
        (a serving worker's next job): a countdown already running ends without effect.

        Call it inside the :func:`protected` section that sent the job's final event, so
        the countdown cannot fire between that event and the disarming.
        """
        with _guard:
            self._epoch += 1
            self._code = None
            self._armed.clear()

    def _run(self, epoch: int) -> None:
        time.sleep(self.grace_s)
        with _guard:
            while _busy:  # a file is being written or placed: let it finish
                _guard.wait(0.05)
            if epoch != self._epoch:  # disarmed: the job stopped in time
                return
            # Holding the guard: no new protected section can start from here on.
            code = self._code
            if code is None:
                try:
                    code = self.on_hard_stop()
                except Exception:  # the process must end, whatever failed
                    logger.exception("hard stop: cleanup failed")
                    code = 1
                logger.info("stopped the worker hard %.1f s after the stop request", self.grace_s)
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(AttributeError, OSError, ValueError):
                    stream.flush()
            os._exit(code)


class SignalWakeup:
    """Calls ``on_signal(signum)`` on a thread the moment a handled signal arrives.

    Uses ``signal.set_wakeup_fd`` (a socket pair, which works on Windows too): the C-level
    handler writes the signal number there at once, while the Python-level handlers
    (:func:`spherediff_core.runner.install_cancel_signals`) still run as usual when the
    main thread gets back to Python. Call :meth:`start` from the main thread.
    """

    def __init__(self, on_signal: Callable[[int], None]) -> None:
        self.on_signal = on_signal
        self._pair: tuple[socket.socket, socket.socket] | None = None

    def start(self) -> bool:
        try:
            reader, writer = socket.socketpair()
            writer.setblocking(False)
            signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        except (OSError, ValueError, AttributeError) as exc:  # not the main thread, say
            logger.debug("no signal wake-up (%s)", exc)
            return False
        self._pair = (reader, writer)
        threading.Thread(target=self._read, name="spherediff-signals", daemon=True).start()
        return True

    def _read(self) -> None:
        assert self._pair is not None
        reader = self._pair[0]
        while True:
            try:
                data = reader.recv(64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                self.on_signal(signum)


class ParentWatch:
    """Calls ``on_gone(reason)`` once when process ``pid`` (the worker's client) is gone.

    POSIX: when ``pid`` is the worker's parent, the worker being re-parented (to init or a
    subreaper) means it died; that cannot be fooled by pid reuse. Another pid (a launcher
    between them) is polled with ``kill(pid, 0)``. Windows: the worker waits on a handle
    of the process (a venv's python.exe is a launcher, so the client passes its own pid
    rather than relying on the direct parent). Polls every ``interval_s``.
    """

    def __init__(self, pid: int, on_gone: Callable[[str], None], interval_s: float = 0.2) -> None:
        self.pid = pid
        self.on_gone = on_gone
        self.interval_s = interval_s
        self.gone = threading.Event()

    def start(self) -> None:
        target = self._watch_windows if os.name == "nt" else self._watch_posix
        threading.Thread(target=target, name="spherediff-parent-watch", daemon=True).start()

    def _report(self) -> None:
        if not self.gone.is_set():
            self.gone.set()
            self.on_gone(f"the parent process {self.pid} is gone")

    def _watch_posix(self) -> None:
        direct = self.pid == os.getppid()
        while True:
            if direct:
                alive = os.getppid() == self.pid
            else:
                try:
                    os.kill(self.pid, 0)
                    alive = True
                except ProcessLookupError:
                    alive = False
                except OSError:  # EPERM: it exists, owned by someone else
                    alive = True
            if not alive:
                self._report()
                return
            time.sleep(self.interval_s)

    def _watch_windows(self) -> None:
        if _wait_for_windows_process(self.pid):
            self._report()


def _wait_for_windows_process(pid: int) -> bool:
    """Block until process ``pid`` ends: True when it ended (or was gone already), False
    when it cannot be watched (no access): then standard input's end is the only sign."""
    import ctypes
    from ctypes import wintypes

    synchronize = 0x00100000
    query_limited = 0x1000
    error_invalid_parameter = 87  # OpenProcess: no such process
    wait_object_0, wait_failed, infinite = 0x0, 0xFFFFFFFF, 0xFFFFFFFF

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    kernel32.OpenProcess.argtypes = [wintypes.DWORD, wintypes.BOOL, wintypes.DWORD]
    kernel32.OpenProcess.restype = wintypes.HANDLE
    kernel32.WaitForSingleObject.argtypes = [wintypes.HANDLE, wintypes.DWORD]
    kernel32.WaitForSingleObject.restype = wintypes.DWORD
    kernel32.GetCurrentProcess.restype = wintypes.HANDLE
    kernel32.CloseHandle.argtypes = [wintypes.HANDLE]
    times = [ctypes.POINTER(wintypes.FILETIME)] * 4
    kernel32.GetProcessTimes.argtypes = [wintypes.HANDLE, *times]
    kernel32.GetProcessTimes.restype = wintypes.BOOL

    def created(handle: int) -> int | None:
        t = [wintypes.FILETIME() for _ in range(4)]
        if not kernel32.GetProcessTimes(handle, *(ctypes.byref(x) for x in t)):
            return None
        return (t[0].dwHighDateTime << 32) | t[0].dwLowDateTime

    handle = kernel32.OpenProcess(synchronize | query_limited, False, pid)
    if not handle:
        err = ctypes.get_last_error()
        if err == error_invalid_parameter:
            return True
        logger.warning("cannot watch the parent process %d (Windows error %d)", pid, err)
        return False
    try:
        # A pid is reused once its process is gone: a process created after this worker
        # cannot be the one that started it.
        parent_created, own_created = created(handle), created(kernel32.GetCurrentProcess())
        if None not in (parent_created, own_created) and parent_created > own_created:
            return True
        while True:
            result = kernel32.WaitForSingleObject(handle, infinite)
            if result == wait_object_0:
                return True
            if result == wait_failed:
                logger.warning("cannot wait for the parent process %d", pid)
                return False
    finally:
        kernel32.CloseHandle(handle)
