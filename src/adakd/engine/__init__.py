"""Training engine: run directory, checkpoints, device/precision, the trainer loop."""
