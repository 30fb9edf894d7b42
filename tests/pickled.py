"""Code hidden in a pickle: ``Payload`` counts how often unpickling ran it, so a test can show that a file read
from storage (a checkpoint, an index's arrays) is refused without its code ever running."""

from __future__ import annotations


class Payload:
    ran = 0

    def __reduce__(self):
        return (_run, ())


def _run() -> dict:
    Payload.ran += 1
    return {}
