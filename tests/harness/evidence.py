"""Recorded sessions for the evidence tests, written by the real spool and sealed for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bastion.demo.s3 import SeaweedS3
from bastion.evidence.seal import Sealer
from bastion.evidence.signing import Signer, generate_signing_key
from bastion.recording.spool import Spool

NODE = "bastion-test"


def record_sessions(spool_dir: Path, count: int, *, node_id: str = NODE,
                    output_bytes: int = 2000, state: str = "closed") -> list[Path]:
    """Record ``count`` finished sessions with the real spool; return their folders in order."""
    spool = Spool(spool_dir, node_id)
    spool.lock()
    folders = []
    try:
        for index in range(count):
            recording = spool.start_session({
                "identity": {"issuer": "local", "subject": f"user{index}", "name": f"user{index}",
                             "email": None, "groups": ["ops"], "method": "publickey"},
                "client": {"address": "127.0.0.1", "port": 50000 + index,
                           "key_fingerprint": "SHA256:abc"},
                "target": {"name": "web01", "address": "127.0.0.1", "port": 22,
                           "login": "deploy", "host_key_fingerprint": "SHA256:def"}})
            writer = recording.open_channel("shell", width=80, height=24, term="xterm",
                                            command=None, user=f"user{index}", target="web01",
                                            login="deploy")
            # Random text: it does not compress away, so sizes stay as large as asked.
            text = os.urandom(output_bytes // 2).hex().encode()
            for start in range(0, len(text), 4096):
                writer.output(text[start:start + 4096])
            recording.finish(state, "client closed")
            folders.append(recording.path)
    finally:
        spool.unlock()
    return folders


def make_sealer(work: Path, node_id: str = NODE) -> tuple[Sealer, Path]:
    """A sealer with a fresh signing key; returns it and the public key file."""
    key = work / "signing.key"
    if not key.exists():
        generate_signing_key(key)
    return Sealer(Signer.from_file(key), work / "state" / "chain", node_id), Path(f"{key}.pub")


def write_config(path: Path, *, spool: Path, state: Path, bucket: str, endpoint: str,
                 signing_key: Path, public_key: Path, keep_days: int = 0, concurrency: int = 2,
                 multipart_threshold: int = 5 * 1024 * 1024, lock_mode: str = "GOVERNANCE",
                 max_attempts: int = 2, prefix: str = "evidence") -> Path:
    """A bastion.toml with [paths], [vault], [evidence] and [storage] for upload tests."""
    path.write_text(f"""
[paths]
state_dir = "{state}"
spool_dir = "{spool}"

[server]
node_id = "{NODE}"

[vault]
key_env = "BASTION_TEST_VAULT_KEY"

[evidence]
signing_key = "{signing_key}"
public_keys = ["{public_key}"]
keep_days = {keep_days}

[storage]
bucket = "{bucket}"
prefix = "{prefix}"
endpoint_url = "{endpoint}"
object_lock_mode = "{lock_mode}"
retention_days = 1
concurrency = {concurrency}
multipart_threshold = {multipart_threshold}
max_attempts = {max_attempts}
""", encoding="utf-8")
    return path


class Site:
    """A bastion's spool, state, signing key and config, uploading to one bucket."""

    def __init__(self, root: Path, store: SeaweedS3, bucket: str, **config: Any) -> None:
        self.root, self.store, self.bucket = root, store, bucket
        root.mkdir(parents=True, exist_ok=True)
        self.spool = root / "spool"
        self.state = root / "state"
        self.sealer, self.pub = make_sealer(root)
        self.config = write_config(root / "bastion.toml", spool=self.spool, state=self.state,
                                   bucket=bucket, endpoint=store.endpoint_url,
                                   signing_key=root / "signing.key", public_key=self.pub,
                                   **config)

    def record(self, count: int, **kwargs: Any) -> list[Path]:
        folders = record_sessions(self.spool, count, **kwargs)
        for folder in folders:
            self.sealer.seal(folder)
        return folders

    def env(self) -> dict[str, str]:
        return {**os.environ, **self.store.env()}

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "bastion", *args]

    def upload(self, *args: str) -> tuple[int, dict[str, Any], str]:
        proc = subprocess.run(self.argv("upload", "--config", str(self.config), *args),
                              capture_output=True, text=True, env=self.env(), timeout=120)
        return proc.returncode, json.loads(proc.stdout), proc.stderr

    def verify(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv("verify", f"s3://{self.bucket}/evidence",
                                        "--config", str(self.config), *args),
                              capture_output=True, text=True, env=self.env(), timeout=120)

    def versions(self) -> list[tuple[str, str]]:
        listing = self.store.client().list_object_versions(Bucket=self.bucket)
        return sorted((v["Key"], v["VersionId"]) for v in listing.get("Versions", []))
