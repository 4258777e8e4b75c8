"""Shadow execution of real PyTorch models (issue #21)."""
