"""``bastion upload`` against a real SeaweedFS S3 gateway (Object Lock bucket)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from harness.evidence import NODE, Site, record_sessions
from harness.wait import wait_until

from bastion.demo.procs import free_port
from bastion.demo.s3 import SeaweedS3
from bastion.storage.objects import compress
from bastion.storage.upload import UploadLock

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS for the module; each test uses its own bucket."""
    with SeaweedS3(tmp_path_factory.mktemp("seaweedfs")) as s3:
        yield s3


def _bucket(store: SeaweedS3, name: str, lock: bool = True) -> str:
    store.create_bucket(name, object_lock=lock)
    return name


def test_upload_several_sessions_then_a_rerun_uploads_nothing(
        store: SeaweedS3, tmp_path: Path) -> None:
    site = Site(tmp_path, store, _bucket(store, "upload-several"))
    folders = site.record(3)

    code, summary, stderr = site.upload()
    assert code == 0, (summary, stderr)
    assert summary["status"] == "ok"
    assert sorted(summary["uploaded"]) == sorted(f.name for f in folders)
    # per session: recording, session.json, signature, manifest
    assert summary["objects_uploaded"] == 12
    assert summary["object_lock"] == "GOVERNANCE for 1 days"
    assert not any(f.exists() for f in folders)  # verified in S3, so removed locally

    keys = [key for key, _ in site.versions()]
    day = folders[0].name[:8]
    base = f"evidence/{day[:4]}/{day[4:6]}/{day[6:8]}/{NODE}/{folders[0].name}"
    assert {f"{base}/1-shell.cast.gz", f"{base}/session.json.gz", f"{base}/manifest.sig",
            f"{base}/manifest.json"} <= set(keys)
    head = store.client().head_object(Bucket=site.bucket, Key=f"{base}/manifest.json",
                                      ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"]

    before = site.versions()
    code, summary, _ = site.upload()
    assert code == 0 and summary["uploaded"] == [] and summary["objects_uploaded"] == 0
    assert site.versions() == before

    verified = site.verify()
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "VERIFIED: 3 sessions" in verified.stdout


def test_kept_sessions_are_not_uploaded_twice(store: SeaweedS3, tmp_path: Path) -> None:
    site = Site(tmp_path, store, _bucket(store, "upload-keep"), keep_days=7)
    folders = site.record(2)
    code, summary, _ = site.upload()
    assert code == 0 and len(summary["uploaded"]) == 2
    assert all((f / "uploaded.json").is_file() and (f / "1-shell.cast").is_file()
               for f in folders)
    before = site.versions()
    code, summary, _ = site.upload()
    assert code == 0 and summary["uploaded"] == [] and sorted(summary["kept"]) == sorted(
        f.name for f in folders)
    assert site.versions() == before


def test_interrupted_run_is_verified_not_reuploaded(store: SeaweedS3, tmp_path: Path) -> None:
    site = Site(tmp_path, store, _bucket(store, "upload-resume"))
    [folder] = site.record(1)
    # As if a run was killed after the recording went up but before the manifest did.
    client = store.client()
    day = folder.name[:8]
    key = f"evidence/{day[:4]}/{day[4:6]}/{day[6:8]}/{NODE}/{folder.name}/1-shell.cast.gz"
    compress(folder / "1-shell.cast", tmp_path / "packed.gz")
    # With the retention the run would have given it (retention_days = 1).
    client.put_object(Bucket=site.bucket, Key=key, Body=(tmp_path / "packed.gz").read_bytes(),
                      ObjectLockMode="GOVERNANCE",
                      ObjectLockRetainUntilDate=datetime.now(UTC) + timedelta(days=1))
    code, summary, stderr = site.upload()
    assert code == 0, (summary, stderr)
    assert summary["uploaded"] == [folder.name] and summary["objects_uploaded"] == 3
    assert len([k for k, _ in site.versions() if k == key]) == 1  # not overwritten
    assert site.verify().returncode == 0


def test_multipart_upload_of_a_large_recording(store: SeaweedS3, tmp_path: Path) -> None:
    site = Site(tmp_path, store, _bucket(store, "upload-multipart"))
    [folder] = site.record(1, output_bytes=12 * 1024 * 1024)
    code, summary, stderr = site.upload()
    assert code == 0, (summary, stderr)
    day = folder.name[:8]
    key = f"evidence/{day[:4]}/{day[4:6]}/{day[6:8]}/{NODE}/{folder.name}/1-shell.cast.gz"
    head = store.client().head_object(Bucket=site.bucket, Key=key, ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"].endswith("-2")  # composite: two parts, each checked by S3
    assert site.verify().returncode == 0


@pytest.mark.parametrize("mode", ["GOVERNANCE", "COMPLIANCE"])
def test_object_lock_refuses_a_delete(store: SeaweedS3, tmp_path: Path, mode: str) -> None:
    site = Site(tmp_path, store, _bucket(store, f"upload-locked-{mode.lower()}"),
                lock_mode=mode)
    site.record(1)
    assert site.upload()[0] == 0
    client = store.client(max_attempts=1)
    for key, version in site.versions():
        retention = client.get_object_retention(Bucket=site.bucket, Key=key,
                                                VersionId=version)["Retention"]
        assert retention["Mode"] == mode
        with pytest.raises(client.exceptions.ClientError, match="AccessDenied"):
            client.delete_object(Bucket=site.bucket, Key=key, VersionId=version)
    assert site.verify().returncode == 0


def test_store_killed_mid_upload_then_the_next_run_completes(tmp_path: Path) -> None:
    with SeaweedS3(tmp_path / "own-store") as own:
        own.create_bucket("upload-crash")
        site = Site(tmp_path / "site", own, "upload-crash", concurrency=1)
        small = site.record(1)
        large = site.record(3, output_bytes=24 * 1024 * 1024)
        proc = subprocess.Popen(site.argv("upload", "--config", str(site.config), "--json"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=site.env())
        try:
            # Await the first session verified in S3 (its marker), then freeze the uploader so
            # the store dies while it is certainly in the middle of the large sessions.
            marker = small[0] / "uploaded.json"
            running = proc
            wait_until(lambda: marker.exists() or running.poll() is not None, 60,
                       "the first session verified in S3")
            assert marker.exists() and proc.poll() is None, "the upload ended before the store died"
            os.kill(proc.pid, signal.SIGSTOP)
            own.kill()
            os.kill(proc.pid, signal.SIGCONT)
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 1, (out, err)
        summary = json.loads(out)
        assert summary["status"] == "failed"
        assert any("cannot reach the object store" in f["error"] for f in summary["failed"])
        # Nothing was deleted locally; the session verified before the crash is marked so.
        assert summary["removed"] == [] and small[0].name in summary["uploaded"]
        assert (small[0] / "uploaded.json").is_file()
        for folder in small + large:
            assert (folder / "manifest.json").is_file() and (folder / "1-shell.cast").is_file()

        own.start()  # same data, same ports
        code, summary, stderr = site.upload()
        assert code == 0, (summary, stderr)
        assert not any(f.exists() for f in small + large)
        verified = site.verify()
        assert verified.returncode == 0, verified.stdout
        assert "VERIFIED: 4 sessions" in verified.stdout


def test_two_uploads_at_once_never_overlap(store: SeaweedS3, tmp_path: Path) -> None:
    site = Site(tmp_path, store, _bucket(store, "upload-twice"))
    site.record(2)
    # Another process holds the run lock, as a long upload would.
    lock_path = UploadLock(site.state).path
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys\n"
         f"fd = os.open({str(lock_path)!r}, os.O_RDWR | os.O_CREAT, 0o640)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\nsys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    waiting: subprocess.Popen[str] | None = None
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        code, summary, _ = site.upload()  # without --wait: exits at once, nothing done
        assert code == 0 and summary["status"] == "busy" and summary["uploaded"] == []
        waiting = subprocess.Popen(site.argv("upload", "--config", str(site.config), "--json",
                                             "--wait"),
                                   stdout=subprocess.PIPE, text=True, env=site.env())
        # --wait blocks on the lock (the kernel lists it as a waiter) and uploads nothing yet.
        proc = waiting
        wait_until(lambda: proc.poll() is not None or _blocked_on(lock_path), 60,
                   "upload --wait to block on the lock (or exit)")
        assert waiting.poll() is None, "upload --wait exited while another run held the lock"
        assert len(_sealed_in_spool(site)) == 2
    finally:
        assert holder.stdin is not None
        holder.stdin.close()  # the holder exits and its lock goes
        holder.wait(timeout=30)
        if waiting is not None and waiting.poll() is None and holder.returncode is None:
            waiting.kill()
    assert waiting is not None
    out, _ = waiting.communicate(timeout=120)
    assert waiting.returncode == 0 and len(json.loads(out)["uploaded"]) == 2

    site.record(2)
    runs = [subprocess.Popen(site.argv("upload", "--config", str(site.config), "--json"),
                             stdout=subprocess.PIPE, text=True, env=site.env())
            for _ in range(2)]
    results = [json.loads(r.communicate(timeout=120)[0]) for r in runs]
    assert [r.returncode for r in runs] == [0, 0]
    uploaded = [s for r in results for s in r["uploaded"]]
    assert len(uploaded) == 2 == len(set(uploaded))  # each session went up exactly once
    keys = [key for key, _ in site.versions()]
    assert len(keys) == len(set(keys)) == 16  # no object has a second version


def test_the_store_refuses_an_object_whose_sha256_does_not_match(store: SeaweedS3) -> None:
    # What every upload relies on: S3 recomputes x-amz-checksum-sha256 and refuses a mismatch.
    store.create_bucket("upload-checksum", object_lock=False)
    client = store.client(max_attempts=1)
    wrong = base64.b64encode(hashlib.sha256(b"other bytes").digest()).decode()
    with pytest.raises(client.exceptions.ClientError, match="BadDigest"):
        client.put_object(Bucket="upload-checksum", Key="k", Body=b"these bytes",
                          ChecksumSHA256=wrong)
    assert client.list_objects_v2(Bucket="upload-checksum").get("KeyCount", 0) == 0


def test_kept_sessions_are_removed_once_their_keep_period_is_over(
        store: SeaweedS3, tmp_path: Path) -> None:
    site = Site(tmp_path, store, _bucket(store, "upload-expire"), keep_days=7)
    [folder] = site.record(1)
    assert site.upload()[0] == 0 and folder.is_dir()
    marker = json.loads((folder / "uploaded.json").read_text())
    marker["uploaded_at"] = "2000-01-01T00:00:00Z"  # as if uploaded long ago
    (folder / "uploaded.json").write_text(json.dumps(marker))
    code, summary, _ = site.upload()
    assert code == 0 and summary["removed"] == [folder.name] and not folder.exists()


def test_unsealed_and_altered_sessions_are_reported_and_kept(
        store: SeaweedS3, tmp_path: Path) -> None:
    site = Site(tmp_path, store, _bucket(store, "upload-problems"))
    [altered] = site.record(1)
    with (altered / "1-shell.cast").open("ab") as fh:
        fh.write(b'[99.0, "o", "added after sealing"]\n')
    [unsealed] = record_sessions(site.spool, 1)  # finished, but never sealed
    code, summary, _ = site.upload()
    assert code == 1 and summary["status"] == "failed"
    assert summary["failed"] == [{"session": altered.name, "error": f"{altered / '1-shell.cast'} "
                                  "does not match its manifest; not uploaded (investigate: the "
                                  "recording changed after sealing)"}]
    assert [u["session"] for u in summary["unsealed"]] == [unsealed.name]
    assert altered.is_dir() and unsealed.is_dir() and site.versions() == []

    shutil.rmtree(altered)
    code, summary, _ = site.upload()
    assert code == 3 and summary["status"] == "attention"  # only the unsealed one is left


def test_unreachable_store_is_one_clear_failure(store: SeaweedS3, tmp_path: Path) -> None:
    site = Site(tmp_path, store, "no-such-store")
    [folder] = site.record(1)
    site.config.write_text(site.config.read_text().replace(
        store.endpoint_url, f"http://127.0.0.1:{free_port()}"))
    code, summary, _ = site.upload()
    assert code == 1
    assert summary["failed"][0]["error"].startswith(
        "s3://no-such-store: reading Object Lock settings: cannot reach the object store")
    assert (folder / "manifest.json").is_file()
    human = subprocess.run(site.argv("upload", "--config", str(site.config), "--no-json"),
                           capture_output=True, text=True, env=site.env(), timeout=120)
    assert human.returncode == 1 and "Traceback" not in human.stderr
    assert f"FAIL {folder.name}: not attempted: the object store is unreachable" in human.stderr


def _blocked_on(path: Path) -> bool:
    """Whether some process waits for a lock on ``path`` (a "->" line in /proc/locks)."""
    inode = os.stat(path).st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) > 6 and fields[1] == "->" and fields[6].endswith(f":{inode}"):
            return True
    return False


def _sealed_in_spool(site: Site) -> list[Path]:
    return [p for p in site.spool.iterdir() if (p / "manifest.json").exists()]
