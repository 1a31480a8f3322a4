"""Post-processing: from the ensemble's probability maps to the ink maps that are submitted.

threshold.py   which threshold (and minimum blob area) a submission uses, and why
"""
