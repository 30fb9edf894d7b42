"""Safe access to untrusted places: URLs fetched without SSRF (safe_http.py), local paths kept inside
their root and URLs redacted for reports (paths.py), matrices bigger than memory read a block at a time with
their headers checked (rowfile.py)."""
