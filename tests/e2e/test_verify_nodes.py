"""Several nodes, one bucket: two nodes (own node id, spool, signing key and hash chain) seal and
upload to the same SeaweedFS bucket; ``bastion verify`` checks each node's chain and names the
node whose chain lost a session."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.evidence import Site, record_sessions

from bastion.demo.s3 import SeaweedS3
from bastion.evidence.seal import Sealer
from bastion.evidence.signing import Signer

pytestmark = pytest.mark.e2e

BUCKET = "two-nodes"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    with SeaweedS3(tmp_path_factory.mktemp("seaweedfs")) as s3:
        yield s3


def node_site(store: SeaweedS3, root: Path, node: str, trusted: list[Path]) -> Site:
    """A Site (spool, state, signing key, bastion.toml) whose node id is ``node``."""
    site = Site(root, store, BUCKET, lock_mode="none")
    text = site.config.read_text(encoding="utf-8")
    text = text.replace('node_id = "bastion-test"', f'node_id = "{node}"')
    keys = ", ".join(f'"{p}"' for p in [*trusted, site.pub])
    text = text.replace(f'public_keys = ["{site.pub}"]', f"public_keys = [{keys}]")
    site.config.write_text(text, encoding="utf-8")
    site.sealer = Sealer(Signer.from_file(root / "signing.key"), root / "state" / "chain", node)
    return site


def record(site: Site, node: str, count: int) -> list[Path]:
    folders = record_sessions(site.spool, count, node_id=node)
    for folder in folders:
        site.sealer.seal(folder)
    return folders


def test_verify_checks_every_nodes_chain_in_one_bucket(store: SeaweedS3,
                                                       tmp_path: Path) -> None:
    store.create_bucket(BUCKET, object_lock=False)
    node_a = node_site(store, tmp_path / "a", "node-a", [])
    node_b = node_site(store, tmp_path / "b", "node-b", [node_a.pub])
    record(node_a, "node-a", 3)
    b_folders = record(node_b, "node-b", 3)
    for site in (node_a, node_b):
        code, summary, stderr = site.upload()
        assert code == 0, (summary, stderr)

    proc = node_b.verify("--json")  # node B's config trusts both nodes' signing keys
    result = json.loads(proc.stdout)
    assert proc.returncode == 0 and result["ok"], result
    chains = {c["node_id"]: (c["first"], c["last"]) for c in result["chains"]}
    assert chains == {"node-a": (1, 3), "node-b": (1, 3)}
    assert {s["node_id"] for s in result["sessions"]} == {"node-a", "node-b"}

    # Node B's second session disappears from the bucket: its chain breaks, node A's does not.
    client = store.client()
    missing = b_folders[1].name
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix="evidence/")
    for obj in listing.get("Contents", []):
        if f"/node-b/{missing}/" in obj["Key"]:
            client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    proc = node_b.verify("--json")
    result = json.loads(proc.stdout)
    assert proc.returncode == 1 and not result["ok"]
    broken = {c["node_id"]: c["failures"] for c in result["chains"]}
    assert broken["node-a"] == [] and broken["node-b"], broken
    human = node_b.verify()
    assert "FAIL chain node-b" in human.stdout and "FAIL chain node-a" not in human.stdout
