"""Floor 3, input and output: reading user logits (``sources``, ``userdata``), writing files atomically
(``atomic``), standard output that survives a closed pipe (``output``), and the environment
fingerprint (``environment``).  Below analysis; above experiments (user rows become cases)."""
