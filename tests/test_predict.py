"""Recommendations: `top_k` against a brute-force ranking, and the predict task (files, users, errors)."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import mgrec
from mgrec.data import DataError, InteractionData
from mgrec.models.base import Recommender
from mgrec.predict import PAD_ITEM, predict, resolve_users, top_k
from mgrec.train import CONFIG_DIR, train

from .conftest import FAST, TINY
from .test_train import cli

K = 10


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One tiny LightGCN run (its score goes through the evaluation cache), shared by the tests."""
    folder = tmp_path_factory.mktemp("predict_run")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train.yaml",
            overrides=[*FAST, "model=lightgcn", "trainer.max_epochs=2"],
            return_hydra_config=True,
        )
    with open_dict(cfg):
        for key in ("output_dir", "log_dir", "cache_dir"):
            cfg.paths[key] = str(folder / key)
        cfg.hydra.runtime.output_dir = cfg.paths.output_dir
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    train(cfg)
    GlobalHydra.instance().clear()
    yield Path(cfg.paths.output_dir)


@pytest.fixture(scope="module")
def loaded(trained_run: Path) -> tuple[Recommender, InteractionData]:
    return mgrec.load_run(trained_run)


@pytest.fixture
def predict_cfg(make_cfg: Callable[..., DictConfig], trained_run: Path) -> Callable[..., DictConfig]:
    def build(*overrides: str) -> DictConfig:
        return make_cfg(
            f"ckpt_path={trained_run / 'checkpoints' / 'best.ckpt'}",
            "extras.print_config=false",
            *overrides,
            config_name="predict.yaml",
        )

    return build


def brute_force(model: Recommender, data: InteractionData, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Every user scored at once, training items set to -inf, a full stable sort per user."""
    with torch.no_grad():
        scores = model.score(torch.arange(data.n_users)).numpy().astype(np.float64)
    scores[data.train.toarray() > 0] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def read(run: Path, name: str = f"top{K}.csv") -> pd.DataFrame:
    path = run / name
    return pd.read_parquet(path) if name.endswith(".parquet") else pd.read_csv(path)


def files(folder: Path) -> list[str]:
    """The files in a folder (none if it does not exist), temporary ones included."""
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# ----------------------------------------------------------------------------- top_k
def test_top_k_matches_brute_force_and_masks_training_items(loaded: tuple) -> None:
    model, data = loaded
    calls: list[int] = []
    score = model.score
    model.score = lambda users: (calls.append(len(users)), score(users))[1]  # type: ignore[method-assign]
    try:
        items, scores = top_k(model, torch.arange(data.n_users), K, batch_size=17)
    finally:
        del model.score
    # scored in blocks of at most batch_size users, never all users at once
    assert max(calls) == 17 and sum(calls) == data.n_users and len(calls) == -(-data.n_users // 17)
    expected_items, expected_scores = brute_force(model, data, K)
    assert items.shape == scores.shape == (data.n_users, K)
    assert items.dtype == torch.long and scores.dtype == torch.float32
    np.testing.assert_allclose(scores.numpy(), expected_scores, rtol=1e-5, atol=1e-6)
    assert (items.numpy() == expected_items).mean() > 0.99  # only exact ties may be ordered differently
    rows = np.repeat(np.arange(data.n_users), K)
    assert not np.asarray(data.train[rows, items.numpy().ravel()]).any()
    assert (np.diff(scores.numpy(), axis=1) <= 0).all()


def test_top_k_restores_mode_and_cache_and_equals_recommend(loaded: tuple) -> None:
    model, _ = loaded
    users = torch.tensor([5, 0, 199, 5, 42])
    model.train()
    try:
        items, _ = top_k(model, users, K)
        assert model.training and model._cache is None
    finally:
        model.eval()
    assert torch.equal(items, model.recommend(users, K))
    assert torch.equal(items[0], items[3])  # row i is users[i], duplicates included


def test_top_k_pads_when_fewer_items_than_k_remain(loaded: tuple) -> None:
    model, data = loaded
    k = data.n_items + 5  # more than there are items at all
    items, scores = top_k(model, torch.arange(data.n_users), k, batch_size=64)
    available = data.n_items - np.diff(data.train.indptr)
    padded = items.numpy() == PAD_ITEM
    # exactly the ranks past the user's unseen items are padding, with score -inf
    assert (padded.sum(axis=1) == k - available).all()
    assert (padded == (np.arange(k) >= available[:, None])).all()
    assert torch.isneginf(scores[torch.from_numpy(padded)]).all()
    assert torch.isfinite(scores[~torch.from_numpy(padded)]).all()
    for user in range(data.n_users):  # every unseen item exactly once, no training item
        shown = items[user][items[user] >= 0].numpy()
        assert sorted(shown) == sorted(set(range(data.n_items)) - set(data.train[user].indices))


def test_top_k_rejects_bad_arguments(loaded: tuple) -> None:
    model, data = loaded
    with pytest.raises(ValueError, match=r"out of range \[0, 200\): \[200\]"):
        top_k(model, [0, data.n_users], K)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        top_k(model, [0], 0)
    with pytest.raises(ValueError, match="integer ids"):
        top_k(model, [0.5], K)


def test_resolve_users(tmp_path: Path) -> None:
    assert resolve_users(None, 4).tolist() == [0, 1, 2, 3]
    assert resolve_users([3, 1, 3], 4).tolist() == [1, 3]
    assert resolve_users(2, 4).tolist() == [2]
    listed = tmp_path / "users.txt"
    listed.write_text("user\n3  # a comment\n\n0,2\n")
    assert resolve_users(str(listed), 4).tolist() == [0, 2, 3]
    listed.write_text("1\n2\nx7\n")
    with pytest.raises(DataError, match=r"users.txt:3: user id 'x7' is not an integer"):
        resolve_users(str(listed), 4)
    with pytest.raises(DataError, match=r"user id -1 is out of range \[0, 4\)"):
        resolve_users([0, -1], 4)
    with pytest.raises(DataError, match="must be integers"):
        resolve_users([1.5], 4)
    with pytest.raises(DataError, match="users file not found"):
        resolve_users(str(tmp_path / "absent.txt"), 4)


# ----------------------------------------------------------------------------- the task
def test_predict_writes_brute_force_top_k_for_all_users(
    predict_cfg: Callable[..., DictConfig], loaded: tuple, tmp_path: Path
) -> None:
    model, data = loaded
    entry = predict(predict_cfg(f"k={K}", "batch_size=16"))
    frame = read(tmp_path / "run")
    assert list(frame.columns) == ["user", "rank", "item", "score"]
    assert len(frame) == data.n_users * K == entry["n_rows"]
    # sorted by user then rank, ranks 1..k for every user
    assert frame[["user", "rank"]].equals(frame[["user", "rank"]].sort_values(["user", "rank"]))
    assert (frame["rank"].to_numpy().reshape(-1, K) == np.arange(1, K + 1)).all()
    assert (frame["user"].to_numpy().reshape(-1, K) == np.arange(data.n_users)[:, None]).all()
    # training items never appear
    assert not np.asarray(data.train[frame["user"].to_numpy(), frame["item"].to_numpy()]).any()
    expected_items, expected_scores = brute_force(model, data, K)
    np.testing.assert_allclose(
        frame["score"].to_numpy().reshape(-1, K), expected_scores, rtol=1e-5, atol=1e-6
    )
    assert (frame["item"].to_numpy().reshape(-1, K) == expected_items).mean() > 0.99
    # the same as recommend()
    recommended = model.recommend(torch.arange(data.n_users), K)
    assert (frame["item"].to_numpy().reshape(-1, K) == recommended.numpy()).all()

    metadata = json.loads((tmp_path / "run" / "metadata.json").read_text())["predictions"]
    assert metadata == entry
    assert (metadata["k"], metadata["n_users"], metadata["format"], metadata["file"]) == (
        K,
        data.n_users,
        "csv",
        f"top{K}.csv",
    )
    assert metadata["checkpoint"] == str(Path(predict_cfg().ckpt_path).resolve())
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "run" / f"top{K}.csv").stat().st_mode & 0o777 == 0o666 & ~umask  # not a private file


def test_predict_for_given_users_list_and_file(
    predict_cfg: Callable[..., DictConfig], tmp_path: Path
) -> None:
    predict(predict_cfg(f"k={K}"))
    everyone = read(tmp_path / "run")
    predict(predict_cfg(f"k={K}", "users=[42,7,199,7]", "output=subset.csv"))
    subset = read(tmp_path / "run", "subset.csv")
    assert subset["user"].unique().tolist() == [7, 42, 199]
    expected = everyone[everyone["user"].isin([7, 42, 199])].reset_index(drop=True)
    pd.testing.assert_frame_equal(subset, expected)
    listed = tmp_path / "users.txt"
    listed.write_text("199\n7\n42\n")
    predict(predict_cfg(f"k={K}", f"users={listed}", "output=file.csv"))
    pd.testing.assert_frame_equal(read(tmp_path / "run", "file.csv"), expected)
    assert json.loads((tmp_path / "run" / "metadata.json").read_text())["predictions"]["n_users"] == 3


def test_predict_k_beyond_unseen_items_writes_fewer_rows(
    predict_cfg: Callable[..., DictConfig], loaded: tuple, tmp_path: Path
) -> None:
    _, data = loaded
    k = data.n_items
    predict(predict_cfg(f"k={k}"))
    frame = read(tmp_path / "run", f"top{k}.csv")
    per_user = frame.groupby("user").size().reindex(range(data.n_users), fill_value=0).to_numpy()
    assert (per_user == data.n_items - np.diff(data.train.indptr)).all()
    assert (frame["item"] >= 0).all() and np.isfinite(frame["score"]).all()
    assert not np.asarray(data.train[frame["user"].to_numpy(), frame["item"].to_numpy()]).any()


def test_predict_parquet_round_trip(predict_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    predict(predict_cfg(f"k={K}"))
    entry = predict(predict_cfg(f"k={K}", "format=parquet"))
    assert entry["file"] == f"top{K}.parquet" and entry["format"] == "parquet"
    parquet = read(tmp_path / "run", f"top{K}.parquet")
    assert dict(parquet.dtypes.astype(str)) == {
        "user": "int64",
        "rank": "int32",
        "item": "int64",
        "score": "float32",
    }
    csv = read(tmp_path / "run").astype({"rank": "int32", "score": "float32"})
    pd.testing.assert_frame_equal(parquet, csv)


def test_parquet_without_pyarrow_is_a_clear_error(
    predict_cfg: Callable[..., DictConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` raises ImportError
    with pytest.raises(SystemExit) as exit_info:
        predict(predict_cfg("format=parquet"))
    assert exit_info.value.code == 2
    assert "format=parquet needs pyarrow" in capsys.readouterr().err
    assert files(tmp_path / "run") == []


@pytest.mark.parametrize(
    ("users", "message"),
    [
        ("users=[0,200]", r"users: user id 200 is out of range \[0, 200\)"),
        ("users=[0,-3]", r"users: user id -3 is out of range"),
        ("users=[1,abc]", r"users: user ids must be integers, got \['abc'\]"),
        ("users=/no/such/users.txt", r"/no/such/users.txt: users file not found"),
    ],
)
def test_bad_users_exit_non_zero_without_output(
    predict_cfg: Callable[..., DictConfig], tmp_path: Path, capsys, users: str, message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        predict(predict_cfg(users))
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert files(tmp_path / "run") == []


def test_failure_while_writing_leaves_no_partial_file(
    predict_cfg: Callable[..., DictConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mgrec.predict as module

    real = module._block_frame
    written: list[int] = []

    def failing(*block: torch.Tensor) -> pd.DataFrame:
        if written:
            raise RuntimeError("disk full")
        written.append(1)
        return real(*block)

    monkeypatch.setattr(module, "_block_frame", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        predict(predict_cfg("batch_size=50"))
    assert written and files(tmp_path / "run") == []


@pytest.mark.slow
def test_command_line_predict(trained_run: Path, tmp_path: Path) -> None:
    common = [f"ckpt_path={trained_run / 'checkpoints' / 'best.ckpt'}", f"paths.log_dir={tmp_path}"]
    result = cli("predict.py", *common, "k=3", "users=[4,2]", "extras.print_config=false")
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "predict" / "runs").iterdir()
    frame = pd.read_csv(run / "top3.csv")
    assert frame["user"].tolist() == [2, 2, 2, 4, 4, 4] and frame["rank"].tolist() == [1, 2, 3] * 2
    assert json.loads((run / "metadata.json").read_text())["predictions"]["k"] == 3

    failed = cli(
        "predict.py", *common, f"users=[{TINY['n_users']}]", "hydra.run.dir=" + str(tmp_path / "bad")
    )
    assert failed.returncode == 2
    assert f"user id {TINY['n_users']} is out of range" in failed.stderr and "Traceback" not in failed.stderr
    assert not list((tmp_path / "bad").glob("top*"))


def test_nan_scores_are_an_error_and_minus_inf_items_are_never_recommended(loaded: tuple) -> None:
    model, data = loaded
    score = model.score

    def nan_score(users: torch.Tensor) -> torch.Tensor:
        scores = score(users)
        scores[:, 3] = float("nan")
        return scores

    model.score = nan_score  # type: ignore[method-assign]
    try:
        with pytest.raises(RuntimeError, match="NaN scores"):
            top_k(model, [0, 1], K)
        model.score = lambda users: score(users).index_fill(1, torch.arange(3, data.n_items), float("-inf"))  # type: ignore[method-assign]
        items, scores = top_k(model, torch.arange(data.n_users), K)
    finally:
        del model.score
    # only items 0, 1, 2 have a finite score: unseen ones among them, then padding
    assert set(items.unique().tolist()) <= {PAD_ITEM, 0, 1, 2}
    assert ((items >= 0).sum(dim=1).numpy() == 3 - data.train[:, :3].sum(axis=1).A1).all()
    assert torch.isneginf(scores[items == PAD_ITEM]).all()


def test_only_rank_zero_writes(
    predict_cfg: Callable[..., DictConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANK", "1")
    predict(predict_cfg("k=2"))
    assert files(tmp_path / "run") == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_top_k_on_the_gpu_matches_the_cpu(trained_run: Path) -> None:
    model, data = mgrec.load_run(trained_run)
    cpu_items, cpu_scores = top_k(model, torch.arange(data.n_users), K, batch_size=64)
    model.to("cuda")
    items, scores = top_k(model, torch.arange(data.n_users), K, batch_size=64)
    assert items.device.type == scores.device.type == "cuda"
    torch.testing.assert_close(scores.cpu(), cpu_scores, rtol=1e-4, atol=1e-5)
    assert (items.cpu() == cpu_items).float().mean() > 0.99
    assert not np.asarray(
        data.train[np.repeat(np.arange(data.n_users), K), items.cpu().numpy().ravel()]
    ).any()
