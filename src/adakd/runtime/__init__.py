"""The runtime under every layer: device and precision, seeding, distributed primitives (knows nothing of training)."""
