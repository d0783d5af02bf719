"""The in-memory data set (`InteractionData`) and the reader for MMRec's file layout.

A data set folder holds `<name>.inter` (tab-separated, header with at least `userID`, `itemID`, `x_label`;
x_label 0/1/2 = train/valid/test; ids 0-based) and one `.npy` file per item modality (row i = item i).
Every check below fails with a `DataError` naming the file and the problem.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

REQUIRED_COLUMNS = ("userID", "itemID", "x_label")
TRAIN, VALID, TEST = 0, 1, 2


class DataError(ValueError):
    """A data set file is missing or malformed; the message names the file and the problem."""


@dataclass
class InteractionData:
    """Users, items, the three splits as binary CSR matrices [n_users, n_items] and item modalities.

    `modalities` maps a modality name (image, text, audio, ...) to a float32 tensor [n_items, dim].
    `fingerprint` identifies the content (interactions and features) for cache keys.
    """

    n_users: int
    n_items: int
    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix
    modalities: dict[str, torch.Tensor] = field(default_factory=dict)
    name: str = "data"
    fingerprint: str = ""

    def __post_init__(self) -> None:
        for split in ("train", "valid", "test"):
            matrix = getattr(self, split)
            if matrix.shape != (self.n_users, self.n_items):
                raise DataError(
                    f"{self.name}: {split} matrix has shape {matrix.shape}, expected "
                    f"({self.n_users}, {self.n_items})"
                )
        for modality, features in self.modalities.items():
            if features.shape[0] != self.n_items:
                raise DataError(
                    f"{self.name}: modality {modality!r} has {features.shape[0]} rows, "
                    f"expected one per item ({self.n_items})"
                )
        if not self.fingerprint:
            self.fingerprint = fingerprint(self)

    def eval_users(self, split: str) -> np.ndarray:
        """Users evaluated on `split` ('valid' or 'test'): with ground truth there and training items."""
        truth = getattr(self, split)
        return np.flatnonzero((np.diff(truth.indptr) > 0) & (np.diff(self.train.indptr) > 0))

    @property
    def modality_dims(self) -> dict[str, int]:
        return {name: int(features.shape[1]) for name, features in self.modalities.items()}

    def summary(self) -> str:
        mods = ", ".join(f"{k} {v}-d" for k, v in self.modality_dims.items()) or "none"
        return (
            f"{self.name}: {self.n_users:,} users, {self.n_items:,} items, train {self.train.nnz:,} / "
            f"valid {self.valid.nnz:,} / test {self.test.nnz:,}; modalities: {mods}"
        )


def fingerprint(data: InteractionData, features: bool = True) -> str:
    """A short content hash of the splits and (unless `features=False`) the modality features."""
    digest = hashlib.sha256()
    for matrix in (data.train, data.valid, data.test):
        digest.update(np.asarray(matrix.indptr, dtype=np.int64).tobytes())
        digest.update(np.asarray(matrix.indices, dtype=np.int64).tobytes())
    for name in sorted(data.modalities) if features else ():
        digest.update(name.encode())
        digest.update(data.modalities[name].numpy().tobytes())
    return digest.hexdigest()[:16]


def csr_from_pairs(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    """A binary CSR matrix with sorted column indices from (user, item) pairs."""
    matrix = sp.csr_matrix(
        (np.ones(len(users), dtype=np.float32), (users.astype(np.int64), items.astype(np.int64))),
        shape=(n_users, n_items),
    )
    matrix.sum_duplicates()
    matrix.sort_indices()
    return matrix


def from_interactions(
    users: np.ndarray,
    items: np.ndarray,
    labels: np.ndarray,
    modalities: Mapping[str, np.ndarray | torch.Tensor] | None = None,
    *,
    n_users: int | None = None,
    n_items: int | None = None,
    name: str = "data",
) -> InteractionData:
    """Build an `InteractionData` from interaction rows; n_users/n_items default to max id + 1."""
    n_users = int(users.max()) + 1 if n_users is None else n_users
    n_items = int(items.max()) + 1 if n_items is None else n_items
    splits = [csr_from_pairs(users[labels == s], items[labels == s], n_users, n_items) for s in (0, 1, 2)]
    features = {k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in (modalities or {}).items()}
    return InteractionData(n_users, n_items, *splits, modalities=features, name=name)


def _read_inter(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot be parsed as a tab-separated table ({error})") from error
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (header has {list(frame.columns)})")
    for column in REQUIRED_COLUMNS:
        values = frame[column].str.strip()
        valid = values.str.fullmatch(r"-?\d+")
        if not valid.all():
            row = int(np.flatnonzero(~valid.to_numpy())[0])
            raise DataError(f"{path}: column {column} must hold integers; line {row + 2} has {values[row]!r}")
        frame[column] = values.astype(np.int64)
        if (frame[column] < 0).any():
            row = int(np.flatnonzero(frame[column].to_numpy() < 0)[0])
            raise DataError(f"{path}: column {column} has a negative value on line {row + 2}")
    bad_label = ~frame["x_label"].isin([TRAIN, VALID, TEST])
    if bad_label.any():
        row = int(np.flatnonzero(bad_label.to_numpy())[0])
        raise DataError(
            f"{path}: x_label must be 0, 1 or 2 (train/valid/test); line {row + 2} has "
            f"{frame['x_label'].iloc[row]}"
        )
    duplicated = frame.duplicated(subset=["userID", "itemID"], keep="first")
    if duplicated.any():
        row = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise DataError(
            f"{path}: duplicate (userID, itemID) pair on line {row + 2} "
            f"({frame['userID'].iloc[row]}, {frame['itemID'].iloc[row]}); "
            f"{int(duplicated.sum())} duplicate row(s) in all"
        )
    if not (frame["x_label"] == TRAIN).any():
        raise DataError(f"{path}: the train split (x_label 0) is empty")
    return frame


def _read_features(path: Path, n_items: int) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: feature file not found")
    try:
        features = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise DataError(f"{path}: not a readable .npy array ({error})") from error
    if features.ndim != 2:
        raise DataError(f"{path}: expected a 2-D array [n_items, dim], got shape {features.shape}")
    if features.shape[0] != n_items:
        raise DataError(
            f"{path}: has {features.shape[0]} rows but the interactions have {n_items} items "
            "(row i must be item i)"
        )
    if not np.issubdtype(features.dtype, np.number):
        raise DataError(f"{path}: dtype {features.dtype} is not numeric")
    features = features.astype(np.float32, copy=False)
    finite = np.isfinite(features)
    if not finite.all():
        row = int(np.flatnonzero(~finite.all(axis=1))[0])
        raise DataError(
            f"{path}: contains NaN or inf (first in row {row}); {int((~finite).sum())} non-finite value(s)"
        )
    return features


def read_mmrec(folder: str | Path, name: str, modalities: Mapping[str, str] | None = None) -> InteractionData:
    """Read and validate `folder/<name>.inter` and the modality files `{modality: file name}`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: data folder not found (set data.path to the folder holding {name}.inter)")
    frame = _read_inter(folder / f"{name}.inter")
    users = frame["userID"].to_numpy()
    items = frame["itemID"].to_numpy()
    n_items = int(items.max()) + 1
    features = {mod: _read_features(folder / file, n_items) for mod, file in (modalities or {}).items()}
    return from_interactions(users, items, frame["x_label"].to_numpy(), features, n_items=n_items, name=name)


def write_mmrec(
    data: InteractionData, folder: str | Path, modality_files: Mapping[str, str] | None = None
) -> Path:
    """Write `data` in MMRec's layout (used for synthetic fixtures and exports)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    frames = []
    for label, matrix in enumerate((data.train, data.valid, data.test)):
        coo = matrix.tocoo()
        frames.append(
            pd.DataFrame(
                {"userID": coo.row, "itemID": coo.col, "rating": 1.0, "timestamp": 0, "x_label": label}
            )
        )
    files = dict(modality_files or {m: f"{m}_feat.npy" for m in data.modalities})
    for modality, file in files.items():
        np.save(folder / file, data.modalities[modality].numpy())
    path = folder / f"{data.name}.inter"
    pd.concat(frames).to_csv(path, sep="\t", index=False)
    return path
