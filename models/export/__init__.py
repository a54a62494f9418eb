"""Export tooling: the ONNX graphs (``onnx_export``, ``onnx_graph``) and the TensorRT engine
builder and cache (``tensorrt_build``, ``tensorrt_cache``)."""
