"""Reading, validating, generating and serving data sets."""

from mgrec.data.datamodule import RecDataModule, SyntheticDataModule
from mgrec.data.interactions import DataError, InteractionData, from_interactions, read_mmrec, write_mmrec
from mgrec.data.synthetic import make_synthetic

__all__ = [
    "DataError",
    "InteractionData",
    "RecDataModule",
    "SyntheticDataModule",
    "from_interactions",
    "make_synthetic",
    "read_mmrec",
    "write_mmrec",
]
