"""Deployment: graph runners (eager PyTorch, ONNX Runtime, TensorRT), opening a codec on one of them,
and the parity tools that compare runners (``check``, ``mismatch``)."""
