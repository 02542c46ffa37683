"""Training: the segmentation LightningModule, schedules, callbacks and the autoPET metrics.

Import the submodules directly (``petflare.training.module``, ``petflare.training.metrics``);
this package does not import Lightning eagerly, so the metrics stay cheap to import.
"""
