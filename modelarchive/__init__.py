"""Building the model archive (build time): the ONNX export and runtime choice (export.py) and the
``.mar`` itself (archive.py)."""
