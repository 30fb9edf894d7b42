"""Index storage: versions in a folder or S3 (store.py), their checked manifest (manifest.py) and
the ANN graph file (ann.py)."""
