"""The import path README gives for re-analysing the evaluate stage's probe files.

The probe itself lives in :mod:`pipeline.common.probe`; this module only keeps
``from pipeline.probe import read_probe_file`` working.
"""

from pipeline.common.probe import GROUPS, OutOfFold, paired_difference, pooled_r2, r2_with_ci, read_probe_file

__all__ = ["GROUPS", "OutOfFold", "paired_difference", "pooled_r2", "r2_with_ci", "read_probe_file"]
