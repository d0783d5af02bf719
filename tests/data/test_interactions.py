from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mgrec.data import DataError, InteractionData, from_interactions, read_mmrec, write_mmrec

HEADER = "userID\titemID\trating\ttimestamp\tx_label\n"
GOOD_ROWS = [
    "0\t0\t1\t0\t0",
    "0\t1\t1\t0\t0",
    "1\t1\t1\t0\t0",
    "1\t2\t1\t0\t1",
    "2\t0\t1\t0\t2",
    "0\t2\t1\t0\t2",
]


def write_inter(folder: Path, rows: list[str], header: str = HEADER, name: str = "toy") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.inter"
    path.write_text(header + "\n".join(rows) + "\n")
    return path


def test_reads_splits_counts_and_features(tmp_path: Path) -> None:
    write_inter(tmp_path, GOOD_ROWS)
    np.save(tmp_path / "image_feat.npy", np.arange(6, dtype=np.float64).reshape(3, 2))
    data = read_mmrec(tmp_path, "toy", {"image": "image_feat.npy"})
    assert (data.n_users, data.n_items) == (3, 3)
    assert data.train.nnz == 3 and data.valid.nnz == 1 and data.test.nnz == 2
    assert data.train[0].indices.tolist() == [0, 1]
    assert data.modalities["image"].dtype.is_floating_point and data.modalities["image"].dtype.itemsize == 4
    assert data.modality_dims == {"image": 2}
    # user 2 has test truth but no training item: not evaluated (MMRec drops cold users)
    assert data.eval_users("test").tolist() == [0]
    assert data.eval_users("valid").tolist() == [1]


def test_only_required_columns_are_needed(tmp_path: Path) -> None:
    write_inter(tmp_path, ["0\t0\t0", "1\t1\t0", "1\t0\t1"], header="userID\titemID\tx_label\n")
    assert read_mmrec(tmp_path, "toy").train.nnz == 2


@pytest.mark.parametrize(
    ("rows", "header", "message"),
    [
        (GOOD_ROWS, "userID\titem\trating\ttimestamp\tx_label\n", "missing column"),
        (["0\t0\t1\t0\t0", "a\t1\t1\t0\t0"], HEADER, "must hold integers; line 3"),
        (["0\t0\t1\t0\t0", "0\t1.5\t1\t0\t0"], HEADER, "column itemID must hold integers"),
        (["0\t0\t1\t0\t0", "-1\t1\t1\t0\t0"], HEADER, "negative value on line 3"),
        (["0\t0\t1\t0\t0", "1\t1\t1\t0\t3"], HEADER, "x_label must be 0, 1 or 2"),
        (
            ["0\t0\t1\t0\t0", "0\t1\t1\t0\t0", "0\t0\t1\t0\t1"],
            HEADER,
            "duplicate (userID, itemID) pair on line 4",
        ),
        (["0\t0\t1\t0\t1", "1\t1\t1\t0\t2"], HEADER, "train split (x_label 0) is empty"),
    ],
)
def test_bad_interactions_name_file_and_problem(
    tmp_path: Path, rows: list[str], header: str, message: str
) -> None:
    path = write_inter(tmp_path, rows, header)
    with pytest.raises(DataError) as error:
        read_mmrec(tmp_path, "toy")
    assert str(path) in str(error.value)
    assert message in str(error.value)


def test_missing_folder_and_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data folder not found"):
        read_mmrec(tmp_path / "nowhere", "toy")
    tmp_path.mkdir(exist_ok=True)
    with pytest.raises(DataError, match=r"toy\.inter: file not found"):
        read_mmrec(tmp_path, "toy")


@pytest.mark.parametrize(
    ("features", "message"),
    [
        (np.zeros((2, 4)), "has 2 rows but the interactions have 3 items"),
        (np.array([[0.0, 1.0], [np.nan, 1.0], [0.0, 0.0]]), "NaN or inf (first in row 1)"),
        (np.array([[0.0, np.inf], [1.0, 1.0], [0.0, 0.0]]), "NaN or inf (first in row 0)"),
        (np.zeros(3), "expected a 2-D array"),
    ],
)
def test_bad_features_name_file_and_problem(tmp_path: Path, features: np.ndarray, message: str) -> None:
    write_inter(tmp_path, GOOD_ROWS)
    np.save(tmp_path / "image_feat.npy", features)
    with pytest.raises(DataError) as error:
        read_mmrec(tmp_path, "toy", {"image": "image_feat.npy"})
    assert str(tmp_path / "image_feat.npy") in str(error.value)
    assert message in str(error.value)


def test_missing_feature_file(tmp_path: Path) -> None:
    write_inter(tmp_path, GOOD_ROWS)
    with pytest.raises(DataError, match=r"text_feat\.npy: feature file not found"):
        read_mmrec(tmp_path, "toy", {"text": "text_feat.npy"})


def test_write_then_read_round_trip(tmp_path: Path, tiny_data: InteractionData) -> None:
    write_mmrec(tiny_data, tmp_path)
    again = read_mmrec(tmp_path, tiny_data.name, {m: f"{m}_feat.npy" for m in tiny_data.modalities})
    assert again.fingerprint == tiny_data.fingerprint
    assert (again.train != tiny_data.train).nnz == 0


def test_fingerprint_tracks_features_and_interactions(tiny_data: InteractionData) -> None:
    users, items = tiny_data.train.nonzero()
    base = from_interactions(
        users, items, np.zeros(len(users), dtype=int), {"image": np.ones((120, 2))}, n_users=200, n_items=120
    )
    other_features = from_interactions(
        users, items, np.zeros(len(users), dtype=int), {"image": np.zeros((120, 2))}, n_users=200, n_items=120
    )
    fewer = from_interactions(
        users[1:],
        items[1:],
        np.zeros(len(users) - 1, dtype=int),
        {"image": np.ones((120, 2))},
        n_users=200,
        n_items=120,
    )
    assert base.fingerprint != other_features.fingerprint
    assert base.fingerprint != fewer.fingerprint


def test_shape_mismatch_is_rejected(tiny_data: InteractionData) -> None:
    with pytest.raises(DataError, match="modality 'image' has 3 rows"):
        InteractionData(
            tiny_data.n_users,
            tiny_data.n_items,
            tiny_data.train,
            tiny_data.valid,
            tiny_data.test,
            modalities={"image": tiny_data.modalities["image"][:3]},
        )
