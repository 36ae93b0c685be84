"""The entropy-rate tables as training sees them: the estimator's output, the warm-up prior and the table files.

Everything lives in :mod:`bitstream_diffusion.schedulers.entropy_tables` (one home for loading, saving, validation
and conversion); this module re-exports the names training code has always imported from here.
"""

from ..schedulers.entropy_tables import (
    TABLE_NAMES,
    EntropyTables,
    check_entropy_tables,
    edges_from_midpoints,
    load_entropy_tables,
    lognormal_prior_tables,
    save_entropy_tables,
    tables_from_config,
    tables_to_config,
)

__all__ = [
    "TABLE_NAMES",
    "EntropyTables",
    "check_entropy_tables",
    "edges_from_midpoints",
    "load_entropy_tables",
    "lognormal_prior_tables",
    "save_entropy_tables",
    "tables_from_config",
    "tables_to_config",
]
