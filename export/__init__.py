"""Deployment artifacts: the export folder (``artifact``: manifest, open/verify, transactional write)
and the ONNX exporter that fills it (``onnx_export``). Importing this package loads neither."""
