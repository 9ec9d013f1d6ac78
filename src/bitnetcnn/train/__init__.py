"""Training on PyTorch Lightning: a run's settings, the LightningModule, its callbacks and run folder, and `eval` and
`convert` outside a run (docs/architecture.md). Importing this package imports nothing; its modules that need
Lightning import it themselves."""
