"""Training: configuration, data, augmentation, losses, the loop, resumable state, and the demo model recipe."""
