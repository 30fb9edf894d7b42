"""What crosses the model's boundary, shared by the model archive, its client and the index build: image
decoding (imaging.py) and the embedding answer's wire format (protocol.py)."""
