"""Inspect and repoint a published index: ``python scripts/manage_index.py URI {list,rollback,prune}``.

    list                     versions, newest last, the published one marked with *
    rollback [--to VERSION]  publish an earlier complete version (default: the one before the current)
    prune --keep N           delete all but the newest N complete versions (never the published one)
"""

from __future__ import annotations

import argparse
import json
import sys

from indexstore.store import (
    MANIFEST,
    CorruptIndex,
    IndexNotFound,
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
        else:
            deleted = prune(store, args.keep)
            print(f"deleted {len(deleted)} version(s)" + "".join(f"\n  {v}" for v in deleted))
    except (IndexNotFound, CorruptIndex, StoreUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
