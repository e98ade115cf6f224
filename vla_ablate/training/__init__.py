"""Training: the loop (``loop``), its losses, batches and schedule, checkpoints, time budget,
signals and compile policy, one module each."""
