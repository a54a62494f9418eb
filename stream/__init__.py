"""Frames, sources, queues, batching, the pipeline runner, telemetry and the CLI."""
