"""Helpers the tests (and benchmarks) share, one module per idea; the fixtures built on them live in conftest.py.

paths (the repository, the shared data), config (composing and shrinking the real config), cli (the entry points in
a fresh process), files (JSON lines, tree snapshots), dicom (DICOM files), bombs (image decompression bombs), page
(the HTML report), lm_families (tiny checkpoints of each LM family), models (tiny models, batches, training steps),
import_graph (r2gen's imports), seq2seq (tiny T5 checkpoints), text_models (tiny BERT and RadGraph folders for the scoring extras).
"""
