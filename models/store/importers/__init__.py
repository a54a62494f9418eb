"""One-off converters from foreign weight files into roadseg's safetensors checkpoints.

Importers run once, by hand or in tests, never while serving: the service only
ever loads the converted checkpoints (see :mod:`models.store.checkpoint`).
"""
