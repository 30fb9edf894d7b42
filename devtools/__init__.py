"""Development tooling: a TorchServe process for local runs, the demo and the tests (process.py)."""
