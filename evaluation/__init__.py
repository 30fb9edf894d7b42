"""Offline retrieval-quality evaluation of an index. Production code never imports this package."""
