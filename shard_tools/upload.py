"""Put a finished build into object storage, checked, its manifest last.

    python shard_tools/upload.py OUT/<dataset> s3://bucket/prefix/<dataset> [--overwrite] [--no-verify]

Every shard is checked against the local manifest (size, sha256) before it is sent, its object's size
after; the manifest goes last, so a build whose upload stopped half-way has no manifest and no reader
takes it for a build. Then the remote build is verified as ``shard_tools/verify.py`` would (every shard
fetched and checked against the manifest, every record decoded); ``--no-verify`` leaves that out.
A prefix that already holds a manifest is refused unless ``--overwrite``. Credentials and endpoints
come from the client's standard environment (``AWS_ENDPOINT_URL``, ``AWS_PROFILE``, ...).
Exit 0 when the build is in place, 1 when verification found problems, 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from shard_format.errors import ShardError  # noqa: E402
from shard_format.location import filesystem, is_remote, join, object_size  # noqa: E402
from shard_format.manifest import manifest_path, read_manifest  # noqa: E402
from shard_format.schema import MANIFEST_NAME  # noqa: E402
from shard_format.writer import file_sha256  # noqa: E402
from shard_tools.verify import verify_build  # noqa: E402


def upload_build(build: Path, url: str, overwrite: bool = False) -> int:
    """Upload the local build ``build`` to ``url`` (shards, then the manifest); returns the bytes sent."""
    if not is_remote(url):
        raise ShardError(f"{url}: not an object-store location (s3://, gs://, https://)")
    manifest = read_manifest(build)
    if object_size(join(url, MANIFEST_NAME)) is not None and not overwrite:
        raise ShardError(f"{url} already holds a build ({MANIFEST_NAME}): refused (--overwrite replaces it)")
    fs, sent = filesystem(url), 0
    for entry in manifest["shards"]:
        local, remote = build / entry["name"], join(url, entry["name"])
        if not local.is_file() or local.stat().st_size != entry["bytes"] or file_sha256(local) != entry["sha256"]:
            raise ShardError(f"{local} differs from {manifest_path(build)} (missing, size or sha256): not uploaded; "
                             "run shard_tools/verify.py on the build")
        fs.put_file(str(local), remote)
        if object_size(remote) != entry["bytes"]:
            raise ShardError(f"{remote}: {object_size(remote)} bytes after the upload, {entry['bytes']} sent")
        sent += entry["bytes"]
    fs.put_file(str(manifest_path(build)), join(url, MANIFEST_NAME))
    return sent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("build", type=Path, help="a finished local build (OUT/<dataset>)")
    p.add_argument("url", help="where it goes: s3://bucket/prefix/<dataset> (or gs://, https://)")
    p.add_argument("--overwrite", action="store_true", help="replace a build already at URL")
    p.add_argument("--no-verify", action="store_true", help="do not re-read the uploaded build")
    a = p.parse_args(argv)
    try:
        sent = upload_build(a.build, a.url, a.overwrite)
    except (ShardError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{a.url}: uploaded {sent / 2**20:.1f} MiB from {a.build}")
    problems = [] if a.no_verify else verify_build(a.url)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
