"""Children die with ``gateway up``; a stale process never holds a port silently.

``gateway up`` may die without a chance to stop its children (SIGKILL from
the OOM killer or a container runtime). Two mechanisms end them anyway:

- **Parent-death signal** (Linux): every child asks the kernel, between fork
  and exec, to get SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``,
  see :func:`parent_death_signal`). It covers every child, Python or not (the
  embedded layer server, a local broker).
- **Lifeline pipe** (any POSIX system): ``gateway up`` holds the write end of
  a pipe whose read end its children inherit (:class:`Lifeline`); nobody ever
  writes to it, so a read returns end-of-file exactly when every copy of the
  write end is closed, i.e. when ``gateway up`` is gone however it ended.
  A ``gateway`` child watches it (:func:`watch_inherited`) and then stops as
  if it got SIGTERM (draining, bounded), and exits for good after
  :data:`EXIT_BOUND` seconds whatever state it is in.

:func:`port_in_use_message` turns "address already in use" into a message
naming the port and, where ``/proc`` tells, the process that holds it.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger("gateway.lifeline")

#: The environment variable naming the inherited read end of the lifeline pipe.
ENV = "GATEWAY_LIFELINE_FD"
#: Seconds a child whose supervisor is gone may take to stop before it exits anyway
#: (the time ``gateway up`` gives a child on a normal stop).
EXIT_BOUND = 20.0
#: ``prctl`` option number (linux/prctl.h).
PR_SET_PDEATHSIG = 1


def parent_death_signal(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get ``sig`` when its parent dies (Linux).

    Returns None where the kernel has no such feature. Call it in the thread
    that spawns, and spawn from the thread that lives as long as the
    supervisor: the signal fires when the parent *thread* ends, not the
    process. The parent may die between fork and the ``prctl`` call; the
    child then already belongs to another parent, so it checks
    ``os.getppid()`` after setting the signal and exits at once in that case.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the child only calls it
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def set_parent_death_signal() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return set_parent_death_signal


class Lifeline:
    """The supervisor's side of the lifeline pipe.

    Pass :attr:`fd` to each child (``pass_fds``) with :meth:`env` in its
    environment, and keep the object (and so the write end) for as long as
    the supervisor lives. Both ends are close-on-exec in the supervisor, so
    only the children it hands the read end to get it, and no child ever
    holds the write end.
    """

    def __init__(self) -> None:
        self.fd, self._write_fd = os.pipe()

    def env(self) -> dict[str, str]:
        """The environment entry that tells a child where its end is."""
        return {ENV: str(self.fd)}

    def close(self) -> None:
        """Close both ends (the children see end-of-file)."""
        for fd in (self.fd, self._write_fd):
            try:
                os.close(fd)
            except OSError:
                pass


def watch_inherited(bound: float = EXIT_BOUND) -> bool:
    """Stop this process when the supervisor that started it is gone.

    Does nothing (returns False) unless the environment names an inherited
    lifeline (``gateway up`` sets it). Otherwise a daemon thread waits for
    end-of-file on it, then sends this process SIGTERM (the daemons and
    ``gateway worker`` drain on it, as on a normal stop) and ends the process
    with exit code 1 if it still runs ``bound`` seconds later.
    """
    value = os.environ.pop(ENV, None)  # not for processes this one starts
    if not value:
        return False
    try:
        fd = int(value)
        os.fstat(fd)
    except (ValueError, OSError):
        log.warning("%s=%r names no open file; running without a lifeline", ENV, value)
        return False
    threading.Thread(target=_watch, args=(fd, bound), name="lifeline", daemon=True).start()
    return True


def _watch(fd: int, bound: float) -> None:
    while True:
        try:
            if not os.read(fd, 1):
                break
        except InterruptedError:
            continue
        except OSError:
            return
    log.warning("gateway up (the supervisor) is gone: stopping")
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(bound)
    log.error("still running %ss after the supervisor died; exiting now", bound)
    logging.shutdown()
    os._exit(1)


# -- who holds a port ------------------------------------------------------------------------


def port_in_use_message(exc: OSError, listen: str | None = None) -> str | None:
    """A clear message for a bind that failed with "address already in use".

    Names the address (from the error, else ``listen``) and, where ``/proc``
    tells, the process listening on it with its command line. None for any
    other error.
    """
    if exc.errno != errno.EADDRINUSE:
        return None
    found = re.search(r"\('([^']*)', (\d+)", str(exc))
    if found:
        host, port = found.group(1), int(found.group(2))
    elif listen and listen.rpartition(":")[2].isdigit():
        host, port = listen.rpartition(":")[0], int(listen.rpartition(":")[2])
    else:
        return f"cannot listen: address already in use ({exc})"
    message = f"cannot listen on {host}:{port}: the port is already in use"
    holder = port_holder(port)
    if holder is None:
        return message + " (by a process this user cannot see, or another program)"
    pid, command = holder
    command = command if len(command) <= 200 else command[:197] + "..."
    hint = ""
    if re.search(r"-m gateways |/gateway ", command):
        hint = (": a gateway left running, perhaps by a `gateway up` that was killed; "
                f"stop it (kill {pid}) or choose another port")
    return f"{message} by pid {pid} ({command}){hint}"


def port_holder(port: int) -> tuple[int, str] | None:
    """The pid and command line of a process listening on TCP ``port`` (Linux, same user), or None."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # local_address is HEXIP:HEXPORT; state 0A is LISTEN.
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    raw = (entry / "cmdline").read_bytes()
                    return int(entry.name), raw.replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # gone, or another user's
            continue
    return None
