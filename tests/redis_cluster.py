"""A real Redis Cluster on loopback for tests and benchmarks: masters and their replicas, each a
redis-server process (the binary the embedded default uses), slots assigned and replicas attached
with CLUSTER commands (no redis-cli needed), every address announced as 127.0.0.1.

    with LocalRedisCluster(tmp_path) as cluster:   # 3 masters, 3 replicas
        store = open_store(cluster.url)
        cluster.kill_master_of("lw:{cam}:stream")   # SIGKILL; its replica is promoted
"""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.cluster import key_slot

from longwatch.memory.redis_server import find_redis_server

SLOTS = 16384
BUS_OFFSET = 10000  # a node's cluster bus listens on its port + 10000


@dataclass
class ClusterNode:
    port: int
    folder: Path
    args: list[str]
    process: subprocess.Popen[bytes]
    node_id: str = ""

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


class LocalRedisCluster:
    def __init__(self, root: Path, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1000) -> None:
        self.root = root
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.nodes: list[ClusterNode] = []

    @property
    def url(self) -> str:
        """Any live node's URL: a cluster client finds the others from it."""
        return f"redis://127.0.0.1:{next(n for n in self.nodes if n.alive).port}"

    def start(self, timeout_s: float = 60.0) -> LocalRedisCluster:
        binary = find_redis_server()
        for n, port in enumerate(_free_ports(self.masters * (1 + self.replicas))):
            folder = self.root / f"node-{n}"
            folder.mkdir(parents=True, exist_ok=True)
            args = [
                binary,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(self.node_timeout_ms),
                "--cluster-announce-ip", "127.0.0.1",
                "--appendonly", "yes",
                "--save", "",
                "--dir", str(folder),
                "--logfile", "redis.log",
            ]  # fmt: skip
            self.nodes.append(
                ClusterNode(port, folder, args, subprocess.Popen(args, stdin=subprocess.DEVNULL))
            )
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            node.node_id = _until(deadline, lambda n=node: _node_id(n), f"node on port {node.port} to start")
        masters, replicas = self.nodes[: self.masters], self.nodes[self.masters :]
        bounds = [SLOTS * i // self.masters for i in range(self.masters + 1)]
        for node, start, end in zip(masters, bounds, bounds[1:], strict=False):
            with node.client() as c:
                c.execute_command("CLUSTER ADDSLOTS", *range(start, end))
        with masters[0].client() as c:
            for node in self.nodes[1:]:
                c.execute_command("CLUSTER MEET", "127.0.0.1", node.port)
        everyone = len(self.nodes)
        for node in self.nodes:
            _until(deadline, lambda n=node: _known_nodes(n) == everyone, "every node to meet every other")
        for n, node in enumerate(replicas):
            with node.client() as c:
                c.execute_command("CLUSTER REPLICATE", masters[n % self.masters].node_id)
        for node in replicas:
            _until(deadline, lambda n=node: _replica_linked(n), f"replica on port {node.port} to sync")
        self.wait_healthy(deadline - time.monotonic())
        return self

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        """Until every live node says cluster_state:ok and agrees on which nodes serve each slot."""
        deadline = time.monotonic() + timeout_s
        _until(deadline, self._healthy, "the cluster to be ok on every node")

    def master_of(self, key: str) -> ClusterNode:
        slot = key_slot(key.encode())
        for node in self.nodes:
            if not node.alive:
                continue
            with node.client() as c:
                for start, end, master, *_ in c.execute_command("CLUSTER SLOTS"):
                    if start <= slot <= end:
                        port = int(master[1])
                        return next(n for n in self.nodes if n.port == port)
        raise RuntimeError(f"no live node serves the slot of {key!r}")

    def kill_master_of(self, key: str) -> ClusterNode:
        """SIGKILL the master holding `key`'s slot (its replica takes over after the node timeout)."""
        node = self.master_of(key)
        node.process.send_signal(signal.SIGKILL)
        node.process.wait()
        return node

    def restart(self, node: ClusterNode, timeout_s: float = 30.0) -> None:
        """Start a killed node again on its folder: it rejoins as a replica of whoever took over,
        and this returns once it has synced."""
        node.process = subprocess.Popen(node.args, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        _until(deadline, lambda: _node_id(node), f"node on port {node.port} to start again")
        _until(deadline, lambda: _replica_linked(node), f"node on port {node.port} to sync as a replica")

    def wait_failover(self, key: str, dead: ClusterNode, timeout_s: float = 30.0) -> ClusterNode:
        """Until a live node other than `dead` masters `key`'s slot; returns it."""
        deadline = time.monotonic() + timeout_s

        def promoted() -> ClusterNode | None:
            try:
                node = self.master_of(key)
            except (redis.RedisError, RuntimeError):
                return None
            return node if node is not dead and node.alive else None

        return _until(deadline, promoted, f"a replica to take over {key!r}'s slot")

    def stop(self) -> None:
        for node in self.nodes:
            if node.alive:
                node.process.send_signal(signal.SIGKILL)
                node.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalRedisCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _healthy(self) -> bool:
        views = set()
        for node in self.nodes:
            if not node.alive:
                continue
            try:
                with node.client() as c:
                    if c.cluster("info").get("cluster_state") != "ok":
                        return False
                    views.add(
                        tuple((s, e, int(m[1])) for s, e, m, *_ in sorted(c.execute_command("CLUSTER SLOTS")))
                    )
            except redis.RedisError:
                return False
        return len(views) == 1


def _free_ports(n: int) -> list[int]:
    """n loopback ports whose cluster-bus port (+10000) is free too."""
    ports: list[int] = []
    rng = random.Random()
    while len(ports) < n:
        port = rng.randrange(20000, 55000)
        if port in ports or not (_free(port) and _free(port + BUS_OFFSET)):
            continue
        ports.append(port)
    return ports


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _node_id(node: ClusterNode) -> str | None:
    if not node.alive:
        raise RuntimeError(f"redis-server on port {node.port} exited; see {node.folder / 'redis.log'}")
    try:
        with node.client() as c:
            return c.execute_command("CLUSTER MYID").decode()
    except redis.RedisError:
        return None


def _known_nodes(node: ClusterNode) -> int:
    with node.client() as c:
        return len(c.execute_command("CLUSTER NODES"))  # redis-py parses it: node address -> details


def _replica_linked(node: ClusterNode) -> bool:
    with node.client() as c:
        return c.info("replication").get("master_link_status") == "up"


def _until(deadline: float, check, what: str):  # noqa: ANN001, ANN202 (a polling helper)
    while True:
        try:
            value = check()
        except redis.RedisError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)
