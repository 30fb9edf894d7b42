"""Talking to and running the model server (TorchServe): HTTP client, process manager, archive builder."""
