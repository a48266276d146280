"""Per-run lock files and start logs, so workers sharing a sweep folder run each run once.

    WORKDIR/runs/RUN_ID/lock        {"host", "pid", "pid_start", "time"}; created O_CREAT|O_EXCL
    WORKDIR/runs/RUN_ID/starts.log  one line "host pid time" per start of the run

A worker holds the lock of the run it is training and refreshes the file's mtime from a
heartbeat thread. A lock is stale when its holder is gone: on this host, its pid is not alive
(or was reused by another process, told apart by the process start time); on another host, its
heartbeat is older than `stale_after` seconds. A stale lock is taken over under a second,
short-lived `takeover` lock, so two workers that both see a stale lock do not both win.

This needs a POSIX filesystem that every worker sharing the sweep sees, with an exclusive
create that is atomic between hosts and mtimes that other hosts read fresh: a local disk (one
host, or one multi-host job, where process 0 takes every lock), NFS (e.g. Filestore), Lustre or
GPFS. An object store does not qualify, neither as a URI (`gs://`) nor through a FUSE mount
(gcsfuse, s3fs, ...): there an exclusive create is only exclusive within one mount, and cached
metadata hides another host's heartbeat. `storage_problem` names such storage before any run.
"""
from __future__ import annotations

import json
import os
import pathlib
import socket
import threading
import time

from scalable_elicitation import paths

LOCK = "lock"
TAKEOVER = "lock.takeover"
STARTS = "starts.log"
TAKEOVER_STALE_S = 60.0  # a takeover is a few file operations; older means its taker died
# FUSE file systems backed by an object store (the mount type /proc/mounts lists)
OBJECT_STORE_MOUNTS = frozenset({
    "fuse.gcsfuse", "fuse.s3fs", "fuse.goofys", "fuse.geesefs", "fuse.rclone",
    "fuse.blobfuse", "fuse.blobfuse2", "fuse.mountpoint-s3"})
LOCK_STORAGE_HELP = ("locks need a POSIX filesystem with an atomic exclusive create: a local "
                     "disk (workers on one host, or one multi-host job), NFS/Filestore, Lustre "
                     "or GPFS; keep records on the bucket and pass --lock_dir=DIR on such a "
                     "filesystem (see README, 'Launching sweeps at scale')")


def _unescape_mount(field: str) -> str:
    """/proc/mounts writes space, tab, newline and backslash as octal escapes."""
    return field.replace("\\040", " ").replace("\\011", "\t").replace(
        "\\012", "\n").replace("\\134", "\\")


def mount_type(path: str | os.PathLike, mounts: str | None = None) -> str | None:
    """The file-system type of the mount holding `path` (longest mount point that contains
    it, after resolving symlinks), from /proc/mounts or the given text; None when unknown."""
    if mounts is None:
        try:
            mounts = pathlib.Path("/proc/mounts").read_text()
        except OSError:
            return None
    target = os.path.realpath(os.path.abspath(os.fspath(path)))
    best, best_type = "", None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = _unescape_mount(fields[1])
        inside = point == "/" or target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, best_type = point, fields[2]
    return best_type


def storage_problem(path: str | os.PathLike, mounts: str | None = None) -> str | None:
    """Why run locks under `path` would not be exclusive between workers (None when they
    are): an object-store URI, or a FUSE mount of an object store."""
    if paths.is_uri(path):
        return f"{os.fspath(path)} is an object-store URI, which cannot hold a lock: " \
               + LOCK_STORAGE_HELP
    kind = mount_type(path, mounts)
    if kind in OBJECT_STORE_MOUNTS:
        return (f"{os.fspath(path)} is on a {kind} mount, where an exclusive create is only "
                "exclusive within one mount and cached metadata hides other hosts' "
                "heartbeats: " + LOCK_STORAGE_HELP)
    return None


def hostname() -> str:
    return socket.gethostname()


def pid_start(pid: int) -> str | None:
    """Start time of a process (clock ticks since boot, Linux), or None when unknown."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    return stat.rsplit(")", 1)[1].split()[19]


def pid_alive(pid: int, start: str | None = None) -> bool:
    """Whether `pid` runs on this host (and, if `start` is known, is the same process)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by another user
    if start is not None:
        now = pid_start(pid)
        if now is not None and now != start:
            return False  # the pid was reused
    # a zombie (killed, not yet reaped by its parent) holds nothing
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


def read_holder(path: pathlib.Path) -> dict | None:
    """The lock's content, or None when absent; {} when present but not yet (or badly) written."""
    try:
        text = pathlib.Path(path).read_text()
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(text)
        return holder if isinstance(holder, dict) else {}
    except json.JSONDecodeError:
        return {}


def is_stale(path: pathlib.Path, holder: dict, stale_after: float, now: float | None = None
             ) -> bool:
    """Whether the lock at `path` with content `holder` belongs to a worker that is gone."""
    now = time.time() if now is None else now
    try:
        age = now - pathlib.Path(path).stat().st_mtime  # the heartbeat refreshes the mtime
    except FileNotFoundError:
        return False  # released meanwhile: not ours to take over, try acquiring again
    if not holder:  # created but its content is not written yet, or torn: judge by age only
        return age > max(stale_after, TAKEOVER_STALE_S)
    if holder.get("host") == hostname():
        return not pid_alive(int(holder.get("pid", -1)), holder.get("pid_start"))
    return age > stale_after


class RunLock:
    """The lock of one run folder. `acquire()` returns True when this process now holds it."""

    def __init__(self, run_dir: str | os.PathLike, *, stale_after: float = 3600.0,
                 heartbeat_s: float | None = None):
        if stale_after <= 0:
            raise ValueError(f"stale_after={stale_after} must be > 0 seconds")
        self.run_dir = paths.local_path(run_dir, "a run lock")
        self.path = self.run_dir / LOCK
        self.stale_after = stale_after
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else min(60.0,
                                                                           stale_after / 4)
        self.held = False
        self.took_over: dict | None = None  # the stale holder this lock replaced, if any
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # -- acquiring -------------------------------------------------------------------------
    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        me = {"host": hostname(), "pid": os.getpid(), "pid_start": pid_start(os.getpid()),
              "time": time.time()}
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(me) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def acquire(self) -> bool:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self._create():
            return self._hold()
        holder = read_holder(self.path)
        if holder is None:  # released between our two looks
            return self._create() and self._hold()
        if not is_stale(self.path, holder, self.stale_after):
            return False
        return self._take_over(holder)

    def _take_over(self, stale: dict) -> bool:
        guard = self.run_dir / TAKEOVER
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:  # a taker that died inside its few file operations leaves the guard behind
                if time.time() - guard.stat().st_mtime > TAKEOVER_STALE_S:
                    guard.unlink()
            except FileNotFoundError:
                pass
            return False
        os.close(fd)
        try:
            # under the guard nobody else replaces the lock; recheck it is the one judged stale
            if read_holder(self.path) != stale:
                return False
            self.path.unlink(missing_ok=True)
            if not self._create():
                return False
            self.took_over = stale
            return self._hold()
        finally:
            guard.unlink(missing_ok=True)

    def _hold(self) -> bool:
        self.held = True
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, daemon=True,
                                      name=f"lock-heartbeat-{self.run_dir.name}")
        self._beat.start()
        return True

    def _heartbeat(self):
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return

    # -- holding -----------------------------------------------------------------------------
    def log_start(self) -> str:
        """Append this start (host, pid, time) to the run's starts.log; returns the line."""
        line = f"{hostname()} {os.getpid()} {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n"
        fd = os.open(self.run_dir / STARTS, os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o644)
        try:
            os.write(fd, line.encode())  # one short O_APPEND write: lines never interleave
            os.fsync(fd)
        finally:
            os.close(fd)
        return line

    def release(self) -> None:
        """Stop the heartbeat and remove the lock, if this process holds it."""
        if not self.held:
            return
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        holder = read_holder(self.path)
        if holder and holder.get("pid") == os.getpid() and holder.get("host") == hostname():
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def starts(run_dir: str | os.PathLike) -> list[str]:
    """The lines of a run's starts.log (empty when it never started)."""
    try:
        return pathlib.Path(run_dir, STARTS).read_text().splitlines()
    except FileNotFoundError:
        return []
