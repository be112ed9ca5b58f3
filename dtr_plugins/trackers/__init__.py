"""Tracker plugins (TensorBoard, W&B, MLflow); the contract is in :mod:`dtr_plugins.core.tracking`."""
