"""Recommendations: the top-k unseen items per user, in Python (`top_k`) and as a task (`predict.py`).

`python predict.py ckpt_path=<run>/checkpoints/best.ckpt k=20` writes `top20.csv` into its own run folder
(`logs/predict/runs/<time>/`), one row per (user, rank) with columns `user`, `rank` (1-based), `item`,
`score`, sorted by user then rank, plus a `predictions` entry in `metadata.json`. Users are scored in blocks
of `batch_size` (a block is one `score` call, [batch_size, n_items] floats), never all at once.

A user's training items are never recommended, and neither is an item the model scores -inf. When fewer
than k items remain for a user, `top_k` pads the row with item -1 and score -inf, and the file has fewer than k
rows for that user (padding is never written).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pandas as pd
import torch
from hydra.utils import to_absolute_path
from lightning.pytorch import seed_everything
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor

from mgrec.data.interactions import DataError
from mgrec.eval import load_model, run_dir_of, saved_config
from mgrec.models.base import Recommender
from mgrec.train import CONFIG_DIR, build_data, output_dir
from mgrec.utils import apply_extras, component_names, task_wrapper, write_json_atomic
from mgrec.utils.distributed import distributed_job, is_rank_zero

log = logging.getLogger("mgrec")

FORMATS = ("csv", "parquet")
COLUMNS = ("user", "rank", "item", "score")
# the padding of `top_k` where a user has fewer than k recommendable items
PAD_ITEM = -1
DEFAULT_BATCH_SIZE = 1024


# --------------------------------------------------------------------------- ranking
@contextmanager
def ranking_mode(model: Recommender) -> Iterator[None]:
    """Eval mode and one evaluation cache for the duration (representations computed once from the current
    weights, shared by all blocks); the model's mode and cache are restored afterwards."""
    was_training = model.training
    previous_cache = model._cache
    if previous_cache is None:  # else inside an evaluation pass already: share its cache
        model._cache = {}
    model.eval()
    try:
        yield
    finally:
        model._cache = previous_cache
        model.train(was_training)


def _as_user_tensor(model: Recommender, users: Tensor | Sequence[int] | np.ndarray) -> Tensor:
    users = torch.as_tensor(np.asarray(users) if not isinstance(users, Tensor) else users)
    if users.dim() != 1:
        raise ValueError(f"users must be a 1-D sequence of user ids, got shape {tuple(users.shape)}")
    if users.is_floating_point() or users.dtype == torch.bool or users.is_complex():
        raise ValueError(f"users must be integer ids, got dtype {users.dtype}")
    users = users.to(torch.long)
    if len(users) and (int(users.min()) < 0 or int(users.max()) >= model.n_users):
        bad = users[(users < 0) | (users >= model.n_users)][:5].tolist()
        raise ValueError(f"user ids out of range [0, {model.n_users}): {bad}")
    return users


@torch.no_grad()
def _rank_block(model: Recommender, users: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k of one block of users on the model's device: item ids [B, k] and scores [B, k]."""
    device = model.device
    users = users.to(device)
    # a float32 copy: masking must never write into a tensor the model may hold (a cached table)
    scores = model.score(users).to(torch.float32, copy=True)
    if scores.shape != (len(users), model.n_items):
        raise RuntimeError(
            f"{type(model).__name__}.score returned shape {tuple(scores.shape)}, "
            f"expected ({len(users)}, {model.n_items})"
        )
    if bool(torch.isnan(scores).any()):
        raise RuntimeError(f"{type(model).__name__}.score returned NaN scores: the model is broken")
    seen = model.data.train[users.cpu().numpy()]
    rows = np.repeat(np.arange(len(users)), np.diff(seen.indptr))
    scores[torch.as_tensor(rows, device=device), torch.as_tensor(seen.indices, device=device)] = float("-inf")
    available = (scores > float("-inf")).sum(dim=1, keepdim=True)
    width = min(k, model.n_items)
    values, items = scores.topk(width, dim=1)
    padding = torch.arange(width, device=device) >= available
    items = items.masked_fill(padding, PAD_ITEM)
    values = values.masked_fill(padding, float("-inf"))
    if width < k:  # more ranks asked than there are items
        items = torch.cat([items, items.new_full((len(users), k - width), PAD_ITEM)], dim=1)
        values = torch.cat([values, values.new_full((len(users), k - width), float("-inf"))], dim=1)
    return items, values


def iter_top_k(
    model: Recommender,
    users: Tensor | Sequence[int] | np.ndarray,
    k: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """`top_k` block by block: yields (users [B], items [B, k], scores [B, k]) on the model's device, in the
    order of `users`, one `score` call of at most `batch_size` users per block."""
    if model.data is None:
        raise RuntimeError(
            "top-k needs the training data to exclude training items: load the model with data="
        )
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return _blocks(model, _as_user_tensor(model, users), int(k), int(batch_size))


def _blocks(model: Recommender, users: Tensor, k: int, batch_size: int) -> Iterator[tuple[Tensor, ...]]:
    with ranking_mode(model):
        for block in users.split(batch_size):
            items, scores = _rank_block(model, block, k)
            yield block.to(items.device), items, scores


def top_k(
    model: Recommender,
    users: Tensor | Sequence[int] | np.ndarray,
    k: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> tuple[Tensor, Tensor]:
    """The k best unseen items per user: item ids [len(users), k] (long) and their scores (float32), best
    first, row i for `users[i]`, on the model's device.

    Runs without gradients, in eval mode, with one evaluation cache for all blocks (mode and cache restored
    afterwards). The user's training items and items scored -inf are excluded; where fewer than k items remain
    the row ends with item -1 and score -inf. Ties are broken by `torch.topk`.
    """
    blocks = list(iter_top_k(model, users, k, batch_size))
    if not blocks:
        empty = torch.empty(0, int(k), device=model.device)
        return empty.long(), empty.float()
    return torch.cat([b[1] for b in blocks]), torch.cat([b[2] for b in blocks])


# --------------------------------------------------------------------------- users and files
_INTEGER = re.compile(r"[+-]?\d+")


def _users_from_file(path: Path) -> tuple[list[str], list[str]]:
    """The ids in a text file (whitespace- or comma-separated, `#` comments, an optional `user` header)
    and where each came from (`file:line`)."""
    if not path.is_file():
        raise DataError(f"{path}: users file not found")
    tokens: list[str] = []
    origins: list[str] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = [f for f in re.split(r"[\s,]+", line.split("#", 1)[0]) if f]
        if not tokens and fields[:1] == ["user"]:  # a header
            fields = fields[1:]
        tokens.extend(fields)
        origins.extend([f"{path}:{number}"] * len(fields))
    if not tokens:
        raise DataError(f"{path}: users file holds no user ids")
    return tokens, origins


def parse_users(spec: Any) -> tuple[np.ndarray, list[str]] | None:
    """The user ids of `spec` and where each came from, or None for all users. `spec`: None, a list of ids,
    one id, or the path of a text file of ids. Raises `DataError` for a missing file or a non-integer id."""
    if spec is None:
        return None
    if isinstance(spec, ListConfig):
        spec = OmegaConf.to_container(spec)
    if isinstance(spec, str):
        tokens, origins = _users_from_file(Path(to_absolute_path(spec)))
        not_integer = [i for i, t in enumerate(tokens) if not _INTEGER.fullmatch(t)]
        if not_integer:
            i = not_integer[0]
            raise DataError(
                f"{origins[i]}: user id {tokens[i]!r} is not an integer ({len(not_integer)} such entries)"
            )
        ids = np.array([int(t) for t in tokens], dtype=np.int64)
        where = origins
    else:
        values = list(spec) if isinstance(spec, list | tuple) else [spec]
        if not values:
            raise DataError("users: the list of user ids is empty")
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int | np.integer)]
        if bad:
            raise DataError(f"users: user ids must be integers, got {bad[:5]!r}")
        ids = np.array(values, dtype=np.int64)
        where = ["users"] * len(ids)
    return ids, where


def resolve_users(spec: Any, n_users: int) -> np.ndarray:
    """The sorted, distinct user ids to recommend for (see `parse_users` for `spec`). Raises `DataError`
    naming the problem (missing file, non-integer or out-of-range id)."""
    return check_users(parse_users(spec), n_users)


def check_users(parsed: tuple[np.ndarray, list[str]] | None, n_users: int) -> np.ndarray:
    """`parse_users`'s result, range-checked against `n_users`, sorted and without duplicates."""
    if parsed is None:
        return np.arange(n_users, dtype=np.int64)
    ids, where = parsed
    outside = np.flatnonzero((ids < 0) | (ids >= n_users))
    if len(outside):
        i = int(outside[0])
        raise DataError(
            f"{where[i]}: user id {int(ids[i])} is out of range [0, {n_users}) "
            f"({len(outside)} ids out of range: {ids[outside[:5]].tolist()})"
        )
    unique = np.unique(ids)
    if len(unique) < len(ids):
        log.info("users: %d duplicate ids dropped", len(ids) - len(unique))
    return unique


def _block_frame(users: Tensor, items: Tensor, scores: Tensor) -> pd.DataFrame:
    """Long format for one block, padding dropped: rows by user (as given) then rank."""
    users, items, scores = users.cpu().numpy(), items.cpu().numpy(), scores.cpu().numpy()
    n, k = items.shape
    keep = (items != PAD_ITEM).ravel()
    return pd.DataFrame(
        {
            "user": np.repeat(users.astype(np.int64), k)[keep],
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), n)[keep],
            "item": items.astype(np.int64).ravel()[keep],
            "score": scores.astype(np.float32).ravel()[keep],
        }
    )


def _require_pyarrow() -> None:
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError as error:
        raise DataError(
            "format=parquet needs pyarrow, which is not installed: `pip install pyarrow` "
            "(or `pip install -e '.[parquet]'`), or use format=csv"
        ) from error


def write_predictions(path: Path, frames: Iterator[pd.DataFrame], fmt: str) -> int:
    """Write the frames one after the other into `path` (CSV with a header, or Parquet) through a temporary
    file renamed at the end, so `path` is complete or absent. Returns the number of rows."""
    if fmt not in FORMATS:
        raise DataError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    # a fresh name beside the target (not mkstemp, whose files are private: the result keeps the umask's mode)
    temporary = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    rows = 0
    try:
        if fmt == "csv":
            with open(temporary, "x", newline="") as out:
                for i, frame in enumerate(frames):
                    frame.to_csv(out, header=i == 0, index=False)
                    rows += len(frame)
                if rows == 0:  # no frames: still a header
                    out.write(",".join(COLUMNS) + "\n")
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = pa.schema(
                [("user", pa.int64()), ("rank", pa.int32()), ("item", pa.int64()), ("score", pa.float32())]
            )
            with pq.ParquetWriter(temporary, schema) as writer:
                for frame in frames:
                    writer.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False))
                    rows += len(frame)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return rows


def _device(name: str) -> torch.device:
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(str(name))


# --------------------------------------------------------------------------- the task
@task_wrapper
def predict(cfg: DictConfig) -> dict[str, Any]:
    """Write the top-k unseen items of every requested user (`cfg.users`) for `cfg.ckpt_path` into the run
    folder, and a `predictions` entry into its metadata.json; return that entry."""
    apply_extras(cfg)
    seed_everything(cfg.seed, workers=True)
    k, batch_size, fmt = cfg.k, cfg.batch_size, str(cfg.format)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise DataError(f"k must be a positive integer, got {k!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
    if fmt not in FORMATS:
        raise DataError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "parquet":
        _require_pyarrow()
    try:
        checkpoint = Path(to_absolute_path(str(cfg.ckpt_path))).resolve()
        run_cfg = saved_config(run_dir_of(checkpoint))
    except FileNotFoundError as error:
        raise DataError(str(error)) from error
    parsed = parse_users(cfg.users)  # a missing file or a malformed id fails before the data are read

    overrides = {key: v for key, v in (cfg.get("data") or {}).items() if v is not None}
    data = build_data(OmegaConf.merge(run_cfg.data, overrides)).data
    users = check_users(parsed, data.n_users)
    model = load_model(checkpoint, run_cfg, data).to(_device(cfg.device))

    path = output_dir(cfg) / str(cfg.output)
    started = time.perf_counter()
    blocks = iter_top_k(model, users, k, batch_size)
    frames = (_block_frame(*block) for block in blocks)
    entry: dict[str, Any] = {
        "file": path.name,
        "format": fmt,
        "k": k,
        "n_users": len(users),
        "users": "all" if cfg.users is None else "given",
        "excluded": "train",
        "checkpoint": str(checkpoint),
        **component_names(run_cfg),
    }
    if is_rank_zero():
        entry["n_rows"] = write_predictions(path, frames, fmt)
        entry["seconds"] = round(time.perf_counter() - started, 3)
        metadata_path = output_dir(cfg) / "metadata.json"
        metadata = json.loads(metadata_path.read_text()) if metadata_path.is_file() else {}
        write_json_atomic(metadata_path, {**metadata, "predictions": entry})
        log.info(
            "top-%d items of %d users (%d rows) written to %s in %.1f s",
            k,
            len(users),
            entry["n_rows"],
            path,
            entry["seconds"],
        )
    return entry


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict.yaml")
def main(cfg: DictConfig) -> None:
    with distributed_job():
        predict(cfg)


if __name__ == "__main__":
    main()
