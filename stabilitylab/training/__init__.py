"""Training small models with SGD in each format, side by side (``train``)."""
