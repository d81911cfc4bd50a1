"""A real Redis Sentinel deployment on loopback: a primary, replicas and three sentinels.

Owns starting them (the same redis-server binary as ``peers.redis``, with `--sentinel`
for the sentinels), waiting until the sentinels know both servers, a failover by
SIGKILL of the primary (``kill_primary``, which returns once the sentinels have
promoted a replica), and stopping everything.
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .base import LOOPBACK, PeerContext, free_port
from .redis import RedisServer, find_redis_server

SERVICE = "tracegate"


def _command(port: int, *words: str, timeout: float = 1.0) -> str:
    """One command in RESP, answered with its raw reply (enough for the checks here)."""
    payload = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as conn:
        conn.sendall(payload.encode())
        time.sleep(0.05)
        return conn.recv(65536).decode(errors="replace")


def _role(port: int) -> list[str]:
    """A server's ROLE: ["master"], or ["slave", its primary's port, its link state]."""
    reply = _command(port, "ROLE").split("\r\n")
    if reply[2] == "master":
        return ["master"]
    return [reply[2], reply[5].lstrip(":"), reply[7]]


class SentinelDeployment(PeerContext):
    """`url` is the `redis+sentinel://` URL of the three sentinels and the service."""

    def __init__(self, replicas: int = 2) -> None:
        sync_now = ["--repl-diskless-sync-delay", "0"]
        self.primary = RedisServer(durable=True, extra_args=sync_now)
        self._replica_count = replicas
        self.replicas: list[RedisServer] = []
        self.sentinel_ports: list[int] = []
        self._sentinels: list[subprocess.Popen[bytes]] = []
        self._workdir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        hosts = ",".join(f"{LOOPBACK}:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self) -> None:
        self.primary.start()
        for _ in range(self._replica_count):
            replica = RedisServer(
                durable=True,
                extra_args=[
                    "--replicaof", LOOPBACK, str(self.primary.port),
                    "--repl-diskless-sync-delay", "0",
                ],
            )  # fmt: skip
            replica.start()
            self.replicas.append(replica)
        self._workdir = tempfile.TemporaryDirectory(prefix="tracegate-sentinel-")
        binary = find_redis_server()
        for _ in range(3):
            port = free_port()
            config = Path(self._workdir.name) / f"sentinel-{port}.conf"
            config.write_text(
                f"port {port}\nbind {LOOPBACK}\n"
                f"sentinel monitor {SERVICE} {LOOPBACK} {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 5000\n"
                f"logfile {Path(self._workdir.name) / f'sentinel-{port}.log'}\n"
            )
            self._sentinels.append(
                subprocess.Popen(
                    [binary, str(config), "--sentinel"],
                    cwd=self._workdir.name,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            self.sentinel_ports.append(port)
        # Ready when the replicas are in sync and every sentinel has found them and
        # its fellow sentinels.
        for replica in self.replicas:
            self._await(
                lambda port=replica.port: (
                    "master_link_status:up" in _command(port, "INFO", "replication")
                ),
                20,
            )
        self._await(lambda: all(self._knows_all(port) for port in self.sentinel_ports), 20)

    def _knows_all(self, port: int) -> bool:
        try:
            replicas = _command(port, "SENTINEL", "REPLICAS", SERVICE)
            others = _command(port, "SENTINEL", "SENTINELS", SERVICE)
        except OSError:
            return False
        return all(str(r.port) in replicas for r in self.replicas) and others.startswith("*2")

    def primary_port(self) -> int:
        """The primary's port as the (first) sentinel sees it now."""
        return self._named_primary(self.sentinel_ports[0])

    def kill_primary(self, timeout: float = 30) -> int:
        """SIGKILL the primary; return the port of the replica the sentinels promoted."""
        old = self.primary.port
        self.primary.kill()
        self._await(lambda: self.primary_port() != old, timeout)
        return self.primary_port()

    def await_settled(self, timeout: float = 30) -> int:
        """Wait until the deployment has one primary again; return its port.

        A failover can leave two servers that say they are the primary for a while (a
        replica promoted in one attempt, another in the next): clients that asked the
        sentinels at different moments then write to different servers until the
        sentinels turn the loser into a replica. Settled: every sentinel names the
        same primary, it says it is one, and every other live server replicates from
        it over a working link."""

        def settled() -> bool:
            named = {self._named_primary(port) for port in self.sentinel_ports}
            if len(named) != 1:
                return False
            primary = named.pop()
            for server in (self.primary, *self.replicas):
                try:
                    role = _role(server.port)
                except OSError:
                    continue  # the one that was killed
                if server.port == primary:
                    if role[0] != "master":
                        return False
                elif role[:3] != ["slave", str(primary), "connected"]:
                    return False
            return True

        self._await(settled, timeout)
        return self.primary_port()

    def _named_primary(self, sentinel_port: int) -> int:
        reply = _command(sentinel_port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(reply.split("\r\n")[-2])

    def describe(self, job_id: str) -> str:
        """Each live server's role and what it holds of job `job_id` (for a failure)."""
        lines = []
        for server in (self.primary, *self.replicas):
            try:
                role = _role(server.port)
                status = _command(server.port, "HGET", f"rq:job:{job_id}", "status")
                held = _command(server.port, "LLEN", "rq:queue:default:intermediate")
            except OSError as error:
                lines.append(f"{server.port}: {error}")
                continue
            lines.append(f"{server.port}: role {role} status {status!r} intermediate {held!r}")
        for port in self.sentinel_ports:
            try:
                named: object = self._named_primary(port)
            except (OSError, ValueError, IndexError) as error:
                named = error
            lines.append(f"sentinel {port} names {named} the primary")
        if self._workdir is not None:
            for log in sorted(Path(self._workdir.name).glob("sentinel-*.log")):
                lines.append(f"{log.name}:\n{log.read_text()[-4000:]}")
        return "; ".join(lines)

    @staticmethod
    def _await(condition: object, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if callable(condition) and condition():
                    return
            except (OSError, ValueError, IndexError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the Sentinel deployment did not get there in {timeout:g}s")

    def stop(self) -> None:
        for process in self._sentinels:
            process.kill()
            process.wait(timeout=5)
        self._sentinels.clear()
        for replica in self.replicas:
            replica.stop()
        self.primary.stop()
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None
