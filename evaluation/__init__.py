"""Evaluation and benchmarks over the codec: rate-distortion on image sets (learned and classical
codecs), BD-rates against published anchors, R-D figures, and per-stage latency, memory and MACs.

Sits above ``hpcm.runtime`` (it opens codecs through ``runtime.session``) and below ``hpcm.cli``.
"""
