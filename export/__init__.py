"""Deployment artifacts: the export folder (``artifact``: manifest, open/verify, transactional write)
and the ONNX exporter that fills it (``onnx_export``: one graph at a time, over ``tracing``,
``graph_checks`` and ``precision``). Importing this package loads none of them."""
