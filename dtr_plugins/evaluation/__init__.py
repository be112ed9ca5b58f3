"""Evaluation, one job per module; :mod:`dtr_plugins.evaluation.evaluate` wires them together.

- :mod:`.inputs`: folders, ``.npz`` files, arrays and dataset items as ``uint8`` RGB image sets (with labels);
- :mod:`.references`: the reference syntax (``dataset:NAME?k=v``) and each reference's content identity;
- :mod:`.features`: feature extraction and class prediction through torch-fidelity's extractors;
- :mod:`.stats_cache`: reference statistics and their cache (``.npz`` read without pickle, keyed by content);
- :mod:`.metrics`: metric settings, the up-front checks (:func:`.metrics.check_eval_settings`) and the metrics.
"""
