"""Deployment: graph runners (eager PyTorch, ONNX Runtime, TensorRT), what computes a codec (``session``:
which model, which tables, which runner, decided once), and the parity tools that compare runners
(``check``, ``mismatch``)."""
