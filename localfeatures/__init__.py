"""Local features: the details of a photo (SIFT keypoints) that confirm the very product (localfeatures/sift.py)."""
