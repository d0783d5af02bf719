"""ml100k builder: fast tests with a fake wheel and encoder; slow tests build the real data set once."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mgrec.data import ml100k
from mgrec.data.split import mmrec_split

FAKE_INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "50\t7\t4\t100\n"
    "50\t3\t5\t90\n"
    "9\t7\t1\t300\n"
    "50\t7\t2\t110\n"
    "9\t12\t3\t200\n"
)
FAKE_ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "3\tToy Story\t1995\tAnimation Children's Comedy\n"
    "7\tMisérables, Les\t1995\tDrama Musical\n"
    "12\tunkonwn\tunkonwn\tunknown\n"
    "99\tNever Rated\t1990\tDrama\n"
)
EXPECTED_FILES = {ml100k.INTER_FILE, ml100k.TEXT_FILE, ml100k.INFO_FILE}


def fake_encode(sentences: list[str]) -> np.ndarray:
    seeds = [int.from_bytes(hashlib.sha256(s.encode()).digest()[:4], "little") for s in sentences]
    return np.stack([np.random.default_rng(s).standard_normal(ml100k.TEXT_DIM) for s in seeds]).astype(
        np.float32
    )


@pytest.fixture
def fake_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("wheel") / ml100k.RECBOLE_WHEEL
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(ml100k.WHEEL_INTER, FAKE_INTER)
        archive.writestr(ml100k.WHEEL_ITEM, FAKE_ITEM)
    return path


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, fake_wheel: Path) -> list[str]:
    """Serve the fake wheel and encoder; return the encoded sentences."""
    sentences: list[str] = []

    def encode(batch: list[str]) -> np.ndarray:
        sentences.extend(batch)
        return fake_encode(batch)

    monkeypatch.setattr(ml100k, "_download_wheel", lambda dest: fake_wheel)
    monkeypatch.setattr(ml100k, "_encode", encode)
    return sentences


def read_inter(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / ml100k.INTER_FILE, sep="\t")


def test_movie_sentence() -> None:
    sentence = ml100k._movie_sentence
    assert sentence("Toy Story", "1995", "Animation Children's Comedy") == (
        "Toy Story (1995). Genres: Animation, Children's, Comedy."
    )
    assert sentence("unkonwn", "unkonwn", "unknown") == "Unknown title. Genres: unknown."
    assert sentence("Land Before Time III (1995)", "V", "Animation") == (
        "Land Before Time III (1995). Genres: Animation."
    )


def test_build_with_fake_wheel(tmp_path: Path, offline: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    moved: list[str] = []
    replace = os.replace

    def record(src: Path, dst: Path) -> None:
        moved.append(Path(dst).name)
        replace(src, dst)

    monkeypatch.setattr(ml100k.os, "replace", record)
    folder = ml100k.build_ml100k(tmp_path / "ml100k", seed=5)

    assert folder == tmp_path / "ml100k"
    assert os.listdir(tmp_path) == ["ml100k"]
    assert set(os.listdir(folder)) == EXPECTED_FILES
    assert moved[-1] == ml100k.INTER_FILE
    assert (folder / ml100k.INTER_FILE).read_text().splitlines()[
        0
    ] == "userID\titemID\trating\ttimestamp\tx_label"

    inter = read_inter(folder)
    rows = set(inter[["userID", "itemID", "rating", "timestamp"]].itertuples(index=False, name=None))
    # raw users 9 -> 0, 50 -> 1; raw items 3 -> 0, 7 -> 1, 12 -> 2 (item 99 has no interactions)
    assert rows == {(0, 1, 1, 300), (0, 2, 3, 200), (1, 0, 5, 90), (1, 1, 4, 100)}
    np.testing.assert_array_equal(inter["x_label"], mmrec_split(inter["userID"].to_numpy(), 5))
    assert offline == [
        "Toy Story (1995). Genres: Animation, Children's, Comedy.",
        "Misérables, Les (1995). Genres: Drama, Musical.",
        "Unknown title. Genres: unknown.",
    ]
    text = np.load(folder / ml100k.TEXT_FILE)
    np.testing.assert_array_equal(text, fake_encode(offline))
    info = json.loads((folder / ml100k.INFO_FILE).read_text())
    assert info["n_users"] == 2 and info["n_items"] == 3 and info["n_interactions"] == 4
    assert info["seed"] == 5 and info["source"] == ml100k.RECBOLE_WHEEL


def test_ensure_reuses_and_repairs(
    tmp_path: Path, offline: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = ml100k.ensure_ml100k(tmp_path / "ml100k")
    calls: list[Path] = []
    monkeypatch.setattr(ml100k, "build_ml100k", lambda f, *, seed: calls.append(Path(f)) or Path(f))
    ml100k.ensure_ml100k(folder)
    assert calls == []
    (folder / ml100k.TEXT_FILE).unlink()
    ml100k.ensure_ml100k(folder)
    assert calls == [folder]


def failing(message: str):
    def fail(*args: object, **kwargs: object) -> None:
        raise ml100k.WheelDownloadError(message)

    return fail


@pytest.mark.parametrize("stage", ["download", "encode", "move"])
def test_failed_build_leaves_nothing(
    stage: str, tmp_path: Path, offline: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if stage == "download":
        monkeypatch.setattr(ml100k, "_download_wheel", failing("pip could not reach the index"))
    elif stage == "encode":
        monkeypatch.setattr(ml100k, "_encode", failing("pip could not reach the index"))
    else:
        replace = os.replace

        def replace_until_inter(src: Path, dst: Path) -> None:
            if Path(dst).name == ml100k.INTER_FILE:
                raise OSError("pip could not reach the index")
            replace(src, dst)

        monkeypatch.setattr(ml100k.os, "replace", replace_until_inter)
    with pytest.raises(RuntimeError, match=r"(?s)pip could not reach the index.*Nothing was written"):
        ml100k.build_ml100k(tmp_path / "ml100k")
    assert os.listdir(tmp_path) == []


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        return ml100k.build_ml100k(tmp_path_factory.mktemp("real") / "ml100k", seed=2024)
    except RuntimeError as exc:
        if isinstance(exc.__cause__, ml100k.WheelDownloadError):
            lines = str(exc).splitlines()
            pytest.skip(f"cannot download the recbole wheel from PyPI: {lines[0]} ... {lines[-1]}")
        raise


def test_real_shapes(built: Path) -> None:
    assert set(os.listdir(built)) == EXPECTED_FILES
    inter = read_inter(built)
    assert list(inter.columns) == ["userID", "itemID", "rating", "timestamp", "x_label"]
    assert len(inter) == 100_000
    assert inter["userID"].nunique() == inter["userID"].max() + 1 == 943
    assert inter["itemID"].nunique() == inter["itemID"].max() + 1 == 1682
    assert not inter.duplicated(["userID", "itemID"]).any()
    assert set(inter["rating"].unique()) == {1, 2, 3, 4, 5}
    text = np.load(built / ml100k.TEXT_FILE)
    assert text.dtype == np.float32 and text.shape == (1682, 384)
    info = json.loads((built / ml100k.INFO_FILE).read_text())
    assert info["sha256"] == ml100k.RECBOLE_WHEEL_SHA256
    assert (info["n_users"], info["n_items"], info["n_interactions"]) == (943, 1682, 100_000)


def test_real_split_rule(built: Path) -> None:
    inter = read_inter(built)
    counts = pd.crosstab(inter["userID"], inter["x_label"])
    n = counts.sum(axis=1).to_numpy()
    held = np.where(n < 10, 2, n // 5)
    held[n < 3] = 0
    np.testing.assert_array_equal(counts[1].to_numpy(), held // 2)
    np.testing.assert_array_equal(counts[2].to_numpy(), held - held // 2)


def test_real_text_features(built: Path) -> None:
    text = np.load(built / ml100k.TEXT_FILE)
    assert np.isfinite(text).all()
    assert text.std() > 0 and (text.std(axis=1) > 0).all()
    # a few movies appear twice under different ids with the same title, year and genres
    assert len(np.unique(text, axis=0)) > 1600


def test_real_deterministic(built: Path, tmp_path: Path) -> None:
    again = ml100k.build_ml100k(tmp_path / "ml100k", seed=2024)
    for name in EXPECTED_FILES:
        assert (again / name).read_bytes() == (built / name).read_bytes(), name


def test_real_ensure_does_not_rebuild(built: Path) -> None:
    before = {name: (built / name).stat().st_mtime_ns for name in EXPECTED_FILES}
    assert ml100k.ensure_ml100k(built) == built
    assert {name: (built / name).stat().st_mtime_ns for name in EXPECTED_FILES} == before
