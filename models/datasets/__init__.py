"""Dataset readers shared by the offline tools (eval, train, TensorRT calibration) and the
live pipeline: the Cityscapes layout, image folders, and the synthetic drive. Blocking and
torch-free; ``stream.sources`` wraps them for async use."""
