"""Evaluation and benchmarks over the codec: rate-distortion on image sets (learned and classical
codecs), BD-rates against published anchors, R-D figures, and per-stage latency, memory and MACs.

Sits above ``hpcm.runtime`` (it opens codecs through ``runtime.session``) and below ``hpcm.cli``: what
``hpcm eval``, ``plot`` and ``bench`` do is decided here (``evaluate.learned_plan``/``evaluate_images``,
``plot.compare_curves``, ``bench.bench_plan``/``run_bench``); the commands parse options and print.
"""
