"""Inspect and repoint a published index: ``python scripts/manage_index.py URI {list,rollback,prune,builds}``.

    list                     versions, newest last, the published one marked with *
    rollback [--to VERSION]  publish an earlier complete version (default: the one before the current)
    prune --keep N           delete all but the newest N complete versions (never the published one)
    builds [--delete BUILD]  the builds with shards in the store (a running or killed build's, or one
                             abandoned: its catalog, model or shard size changed); delete those named
"""

from __future__ import annotations

import argparse
import json
import sys

from catalog.shards import ShardStore, list_builds
from indexstore.store import (
    MANIFEST,
    CorruptIndex,
    IndexNotFound,
    Store,
    StoreUnavailable,
    complete_versions,
    current_version,
    open_store,
    prune,
    rollback,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("uri", help="index folder or s3://bucket/prefix")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list")
    back = sub.add_parser("rollback")
    back.add_argument("--to", help="version to publish")
    trim = sub.add_parser("prune")
    trim.add_argument("--keep", type=int, required=True)
    builds = sub.add_parser("builds")
    builds.add_argument("--delete", action="append", default=[], metavar="BUILD", help="repeatable")
    args = parser.parse_args(argv)
    store = open_store(args.uri)
    try:
        if args.command == "list":
            try:
                current = current_version(store)
            except IndexNotFound:
                current = None
            for version in complete_versions(store):
                manifest = json.loads(store.get(f"versions/{version}/{MANIFEST}"))
                mark = "*" if version == current else " "
                print(f"{mark} {version}  {manifest['count']:>7} products  {manifest['backbone']}")
        elif args.command == "rollback":
            print(f"published {rollback(store, args.to)}")
        elif args.command == "builds":
            return _builds(store, args.delete)
        else:
            deleted = prune(store, args.keep)
            print(f"deleted {len(deleted)} version(s)" + "".join(f"\n  {v}" for v in deleted))
    except (IndexNotFound, CorruptIndex, StoreUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _builds(store: Store, delete: list[str]) -> int:
    """List the store's builds with their shard files, or delete the named ones (only names it lists)."""
    found = list_builds(store)
    unknown = [name for name in delete if name not in found]
    if unknown:
        print(f"error: no build {', '.join(map(repr, unknown))} in {store.uri} (see: builds)", file=sys.stderr)
        return 2
    for name in delete:
        ShardStore(store, name).clear()
        print(f"deleted build {name}")
    if not delete:
        print("\n".join(found) if found else f"no build has shards in {store.uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
