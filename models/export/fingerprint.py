"""The fingerprint that names exported artifacts: weights, model card and input size."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from models.store.checkpoint import ModelCard

FINGERPRINT_EXCLUDED = ("metrics", "provenance")  # card fields that do not change an exported graph


def model_fingerprint(model: nn.Module, card: ModelCard, input_size: tuple[int, int]) -> str:
    """Identifies exported artifacts (ONNX files, TensorRT engines) for cache lookups: the
    weights, the model card and the input size. The card's ``metrics`` and ``provenance`` say
    what was measured and where the weights came from, not what the graph computes: eval
    recording new metrics must not invalidate (and rebuild) the engine it just scored."""
    body = json.loads(card.to_json())
    for volatile in FINGERPRINT_EXCLUDED:
        body.pop(volatile, None)
    digest = hashlib.sha256()
    digest.update(json.dumps(body, sort_keys=True).encode())
    digest.update(json.dumps(list(input_size)).encode())
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
