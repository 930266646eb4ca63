"""Evidence: canonical JSON, signed manifests, the per-node hash chain, sealing and verification.

canonical.py (RFC 8785, and the schema 1 form), manifest.py (build and parse), signing.py (keys,
manifest.sig), seal.py (the chain and the sealer), sources.py (evidence read from folders),
verify.py (the policies and the verifier), report.py (what a verify run found). The S3 key
layout and the S3 reader live in bastion.storage, above this package.
"""
