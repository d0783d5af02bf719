"""Shared fixtures: tiny synthetic data sets and Hydra configs composed for fast runs in a temp folder."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from mgrec.data import InteractionData, make_synthetic
from mgrec.train import CONFIG_DIR

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MGREC_SHARED_DATA", ROOT.parent / "shared" / "data"))

# small enough for seconds per run, large enough that a model beats a random ranking clearly
TINY = {"n_users": 200, "n_items": 120, "n_interactions": 4000}
FAST = [
    "data=synthetic",
    f"data.n_users={TINY['n_users']}",
    f"data.n_items={TINY['n_items']}",
    f"data.n_interactions={TINY['n_interactions']}",
    "data.batch_size=512",
    "trainer=cpu",
    "trainer.max_epochs=3",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "~callbacks.rich_progress_bar",
    "extras.print_config=false",
    "logger=csv",
]


# one, two and three named modalities: every multimodal model must take any non-empty set
MODALITY_SETS = {1: {"text": 8}, 2: {"image": 16, "text": 8}, 3: {"image": 16, "text": 8, "audio": 12}}


@functools.cache
def tiny_multimodal(n_modalities: int) -> InteractionData:
    """TINY synthetic data with 1, 2 or 3 modalities (cached: treat as read-only)."""
    return make_synthetic(**TINY, modalities=MODALITY_SETS[n_modalities], seed=0)


@pytest.fixture(scope="session")
def tiny_data() -> InteractionData:
    return tiny_multimodal(2)


@pytest.fixture
def make_cfg(tmp_path: Path) -> Iterator[Callable[..., DictConfig]]:
    """`make_cfg(*overrides, config_name="train.yaml")`: a composed config writing into tmp_path."""

    def compose_cfg(*overrides: str, config_name: str = "train.yaml", fast: bool = True) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            extra = FAST if fast and config_name == "train.yaml" else []
            cfg = compose(config_name, overrides=[*extra, *overrides], return_hydra_config=True)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "run")
            cfg.paths.log_dir = str(tmp_path / "logs")
            cfg.paths.cache_dir = str(tmp_path / "cache")
            cfg.hydra.runtime.output_dir = str(tmp_path / "run")
            cfg.hydra.job.num = 0
        HydraConfig().set_config(cfg)
        return cfg

    yield compose_cfg
    GlobalHydra.instance().clear()


def shared_dataset(name: str) -> Path:
    folder = SHARED_DATA / name
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent (real data sets live in ../shared/data)")
    return folder
