"""
The backends under test, as picklable specs: each scenario gets a fresh namespace (a new
folder, Redis prefix or S3 bucket), and agent subprocesses open the same spec.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import anyio

from substantial.backends import Backend, FSBackend, MemoryBackend
from tests.server_processes import TEST_CREDENTIALS, RedisServer, S3Server, ServerUnavailable

KINDS = ("memory", "files", "redis", "s3")


@dataclass(frozen=True)
class Spec:
    """Where one scenario's data lives: enough to open the backend in any process."""

    kind: str
    root: str = ""
    url: str = ""
    prefix: str = ""
    bucket: str = ""
    endpoint_url: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Spec:
        return cls(**json.loads(text))

    def open(self, *, setup: bool = False) -> Backend:
        """
        A backend on this spec. ``setup=True`` gives a files backend without fsync, for
        writing fixtures fast (never for what is measured).
        """
        if self.kind == "memory":
            raise ValueError("a memory backend cannot be reopened")
        if self.kind == "files":
            return FSBackend(self.root, fsync=not setup)
        if self.kind == "redis":
            from substantial.backends.redis import RedisBackend

            return RedisBackend(self.url, prefix=self.prefix)
        if self.kind == "s3":
            from substantial.backends.s3 import S3Backend

            return S3Backend(self.bucket, endpoint_url=self.endpoint_url, region="us-east-1")
        raise ValueError(f"unknown backend kind {self.kind!r}")


@dataclass
class Target:
    """One backend kind in this bench run, with its server if it needs one."""

    kind: str
    workdir: Path
    redis: RedisServer | None = None
    s3: S3Server | None = None
    versions: dict[str, str] = field(default_factory=dict)

    async def fresh(self) -> tuple[Spec, Backend]:
        """A new, empty namespace and a backend open on it."""
        name = uuid.uuid4().hex[:20]
        if self.kind == "memory":
            return Spec("memory"), MemoryBackend()
        if self.kind == "files":
            spec = Spec("files", root=str(self.workdir / f"files-{name}"))
        elif self.kind == "redis":
            assert self.redis is not None
            spec = Spec("redis", url=self.redis.url, prefix=f"bench-{name}")
        else:
            assert self.s3 is not None
            bucket = f"bench-{name}"
            await anyio.to_thread.run_sync(self.s3.create_bucket, bucket)
            spec = Spec("s3", bucket=bucket, endpoint_url=self.s3.endpoint_url)
        return spec, spec.open()

    def close(self) -> None:
        for server in (self.redis, self.s3):
            if server is not None:
                server.stop()


def prepare(kinds: list[str], workdir: Path) -> tuple[list[Target], dict[str, str]]:
    """
    Start the servers the chosen backends need.

    :return: the usable targets, and for each skipped kind the reason
    """
    targets: list[Target] = []
    skipped: dict[str, str] = {}
    for kind in kinds:
        target = Target(kind, workdir)
        try:
            if kind == "redis":
                import redis

                target.redis = RedisServer(workdir)
                target.redis.start()
                target.versions = {
                    "redis-server": target.redis.version(),
                    "redis-py": redis.__version__,
                }
            elif kind == "s3":
                import aioboto3
                import moto

                os.environ.update(TEST_CREDENTIALS)
                os.environ.pop("AWS_SESSION_TOKEN", None)
                os.environ.pop("AWS_PROFILE", None)
                target.s3 = S3Server()
                target.s3.start()
                target.versions = {"moto": moto.__version__, "aioboto3": aioboto3.__version__}
        except (ServerUnavailable, ImportError, OSError) as exc:
            target.close()
            skipped[kind] = str(exc)
            continue
        targets.append(target)
    return targets, skipped


def default_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="substantial-bench-", dir=os.environ.get("BENCH_DIR")))
