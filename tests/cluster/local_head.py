"""A real Ray head node on loopback, for tests: ``ray start --head --block`` as a child
process, with token authentication on, and stopped without ``ray stop``.

Other Ray instances run on the same machine (the session's ``ray_local``, other test runs),
so the head must share nothing with them:

- every port that has a fixed default (GCS 6379, dashboard 8265, dashboard agent 52365,
  Ray Client 10001) is a free one; the others Ray already picks at random;
- its own ``--temp-dir``;
- its own token: a fresh one in a file named by ``RAY_AUTH_TOKEN_PATH``, so nothing is
  read from or written to ``~/.ray/auth_token`` (Ray's token loader reads
  ``RAY_AUTH_TOKEN``, then ``RAY_AUTH_TOKEN_PATH``, then ``~/.ray/auth_token``, and a head
  only generates a token when it finds none);
- ``ray stop`` would kill every Ray on the machine, so ``stop`` ends only this head's
  processes: its process group (``ray start --block`` and the daemons it launched), then
  whatever is left that carries this head's marker in its environment. Workers and job
  drivers run in process groups of their own (Ray gives each worker one, and a job's
  driver gets a new session), and the marker finds them even once they are orphaned.

If the test process dies without running its teardown, the kernel sends SIGTERM to
``ray start`` (``PR_SET_PDEATHSIG``), which shuts the head down.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import psutil

MARK = "MMTUNE_TEST_HEAD"  # environment variable every process of the head inherits


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on every interface (the GCS binds 0.0.0.0)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# Runs ``argv`` with SIGTERM on the death of its parent (PR_SET_PDEATHSIG survives exec);
# a launcher instead of Popen's preexec_fn, which is unsafe in a process with threads.
_DIE_WITH_PARENT = ("import ctypes, os, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGTERM); "
                    "os.execv(sys.argv[1], sys.argv[1:])")


class LocalHead:
    def __init__(self, root: Path, num_cpus: int = 2):
        self.root = Path(root)
        self.num_cpus = num_cpus
        self.mark = uuid.uuid4().hex
        self.token = secrets.token_hex(32)  # what `ray get-auth-token --generate` makes
        self.token_path = self.root / "auth_token"
        # Ray's unix socket paths must stay under 107 bytes; pytest's tmp dirs (longer with a
        # long user name, a high run number, or pytest-xdist's popen-gwN/) can exceed it.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="mmh"))
        self.log_path = self.root / "ray_start.log"
        self.gcs_port, self.dashboard_port, self.agent_port, self.client_port = free_ports(4)
        self.proc: subprocess.Popen | None = None
        self._seen: dict[int, psutil.Process] = {}

    # ------------------------------------------------------------------ addresses, env
    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def _token_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_ADDRESS")}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_path))
        # `python` in a job's entrypoint is this interpreter, as in an activated venv
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        return env

    def client_env(self) -> dict[str, str]:
        """The environment of a shell that talks to this head (docs/operations.md, section 1)."""
        return {**self._token_env(), "RAY_ADDRESS": self.dashboard_url}

    # ------------------------------------------------------------------ start
    def start(self, timeout: float = 120.0) -> None:
        self.token_path.write_text(self.token)
        self.token_path.chmod(0o600)
        env = {**self._token_env(), MARK: self.mark, "RAY_USAGE_STATS_ENABLED": "0"}
        cmd = [sys.executable, "-c", _DIE_WITH_PARENT, str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
               "--node-ip-address=127.0.0.1", f"--port={self.gcs_port}",
               "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
               f"--dashboard-agent-listen-port={self.agent_port}", f"--ray-client-server-port={self.client_port}",
               f"--num-cpus={self.num_cpus}", f"--temp-dir={self.temp_dir}", "--disable-usage-stats"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        """Until the Jobs API answers an authenticated request (the dashboard's HTTP server
        comes up before its job module does)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.http_status("/api/jobs/", self.headers) == 200:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the head's Jobs API did not answer in {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.5)

    def http_status(self, path: str, headers: dict[str, str] | None = None) -> int | None:
        req = urllib.request.Request(self.dashboard_url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None  # not listening (yet, or any more)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # ------------------------------------------------------------------ processes, stop
    def processes(self) -> list[psutil.Process]:
        """Every live process of this head: the ``ray start`` process, its descendants, and
        anything else carrying the marker (orphaned workers, job drivers)."""
        found: dict[int, psutil.Process] = {}
        if self.proc is not None:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(self.proc.pid)
                found[root.pid] = root
                found.update({p.pid: p for p in root.children(recursive=True)})
        want = f"{MARK}={self.mark}"
        for p in psutil.process_iter():
            if p.pid in found:
                continue
            with contextlib.suppress(psutil.Error, OSError):
                env = Path(f"/proc/{p.pid}/environ").read_bytes()
                if want.encode() in env.split(b"\0"):
                    found[p.pid] = p
        live = []
        for p in found.values():
            with contextlib.suppress(psutil.Error):
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    live.append(p)
        self._seen.update({p.pid: p for p in live})
        return live

    def process_names(self) -> set[str]:
        return {_name(p) for p in self.processes()} - {"?"}

    def stop(self, grace: float = 3.0, timeout: float = 30.0) -> None:
        """SIGTERM to the head's process group, SIGKILL to whatever of it is left after
        ``grace`` seconds. Idempotent; never raises for a process that is already gone."""
        if self.proc is None:
            return
        self.processes()  # remember them before anyone is orphaned
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(grace)
        deadline = time.monotonic() + timeout
        while True:
            left = [p for p in {**self._seen, **{p.pid: p for p in self.processes()}}.values() if _alive(p)]
            if not left or time.monotonic() > deadline:
                break
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            for p in left:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            psutil.wait_procs(left, timeout=2)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """What is still alive of every process this head ever showed, as 'pid name'."""
        return [f"{p.pid} {_name(p)}" for p in {**self._seen, **{p.pid: p for p in self.processes()}}.values()
                if _alive(p)]


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _name(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.Error:
        return "?"
