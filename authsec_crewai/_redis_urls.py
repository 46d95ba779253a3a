"""The one reading of a Redis store URL: one node, a Cluster, or a Sentinel-managed master.

::

    redis://[user:password@]host:port/db                  one node (rediss:// for TLS)
    redis+cluster://[user:password@]host:port[,host:port...]        a Cluster
    redis+sentinel://[user:password@]host:port[,host:port...]/service/db

Each scheme has its ``rediss`` form for TLS. The credentials are the data
nodes' (an ACL user, or only a password for ``requirepass``). Settings
validate with it and the store connects with it, so the two cannot disagree.
Nothing here imports coredis, and no message quotes the URL: it may hold a
password (:meth:`RedisTarget.masked` shows it with the password hidden).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote

__all__ = ["RedisTarget", "parse_redis_url"]

Topology = Literal["node", "cluster", "sentinel"]

_SCHEMES: dict[str, tuple[Topology, bool]] = {
    "redis": ("node", False),
    "rediss": ("node", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
}
_DEFAULT_PORT = {"node": 6379, "cluster": 6379, "sentinel": 26379}
FORMS = (
    "redis://host:6379/0, redis+cluster://host:7000,host:7001 or "
    "redis+sentinel://host:26379/service/0 (rediss... for TLS; user:password@ before the hosts)"
)


@dataclass(frozen=True)
class RedisTarget:
    """Where a Redis store connects, parsed; ``password`` never shows in its repr."""

    scheme: str
    topology: Topology
    tls: bool
    hosts: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0
    service: str | None = None

    def masked(self) -> str:
        """The URL with the password hidden: what logs, errors and reprs may show."""
        auth = ""
        if self.username or self.password:
            auth = (self.username or "") + (":***" if self.password else "") + "@"
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.hosts)
        path = "" if self.topology == "cluster" else f"/{self.db}"
        if self.topology == "sentinel":
            path = f"/{self.service}{path}"
        return f"{self.scheme}://{auth}{hosts}{path}"


def parse_redis_url(url: str) -> RedisTarget:
    """A :class:`RedisTarget`, or a ValueError that never quotes ``url``."""
    scheme, sep, rest = url.strip().partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _SCHEMES:
        raise ValueError(f"a Redis store URL is one of {FORMS}")
    topology, tls = _SCHEMES[scheme]
    rest = rest.split("?", 1)[0].split("#", 1)[0]
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
        if not colon and username is not None:  # redis://secret@host: a bare password
            username, password = None, username
    hosts = tuple(_host(part, _DEFAULT_PORT[topology]) for part in hostlist.split(","))
    if topology == "node" and len(hosts) != 1:
        raise ValueError(f"redis:// names one node; for several use one of {FORMS}")
    parts = [p for p in path.split("/") if p]
    service = None
    if topology == "sentinel":
        if not parts:
            raise ValueError(
                "a Sentinel store names its service: redis+sentinel://host:26379/service/0"
            )
        service, parts = unquote(parts[0]), parts[1:]
    if topology == "cluster" and parts not in ([], ["0"]):
        raise ValueError("a Redis Cluster has only database 0: redis+cluster://host:port,...")
    if len(parts) > 1:
        raise ValueError(f"too many path parts in the Redis store URL; it is one of {FORMS}")
    try:
        db = int(parts[0]) if parts else 0
    except ValueError:
        raise ValueError("the Redis database is a number: redis://host:6379/0") from None
    if db < 0:
        raise ValueError("the Redis database is a number: redis://host:6379/0")
    return RedisTarget(scheme, topology, tls, hosts, username, password, db, service)


def _host(text: str, default_port: int) -> tuple[str, int]:
    text = text.strip()
    if text.startswith("["):  # [::1]:6379
        host, _, port_text = text[1:].partition("]")
        port_text = port_text.removeprefix(":")
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise ValueError(f"a Redis store URL names its hosts: {FORMS}")
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise ValueError("a Redis port is a number: host:6379") from None
    if not 0 < port < 65536:
        raise ValueError("a Redis port is between 1 and 65535")
    return host, port
