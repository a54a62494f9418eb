"""Segmentation models: the 8 Cityscapes categories, model factory, checkpoints, backends, metrics."""
