"""One build block's aligned arrays: what the engine's ``align`` produces and the store writes.

A *block* is the unit of a build: ``build.shard_samples`` consecutive samples, aligned together, written as one
region of the cube and marked done in the manifest as one entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class AlignedBlock:
    """Aligned arrays of a block of samples, keyed by cube variable name, plus why anything is missing.

    ``reasons[sample_id][modality]`` is set for every unavailable sample/modality.
    """

    arrays: dict[str, np.ndarray]
    reasons: dict[str, dict[str, str]] = field(default_factory=dict)
