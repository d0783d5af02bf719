"""Feature perturbations (mgrec.perturb), their use at evaluation (eval.py perturb=...) and training
(data.noise), and the robustness curve (mgrec.robustness)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import DictConfig, open_dict

import mgrec.eval
from mgrec.eval import evaluate, load_model, run_dir_of, saved_config
from mgrec.perturb import (
    Perturbation,
    apply_to_model,
    non_null,
    perturb_data,
    perturb_features,
)
from mgrec.robustness import main as robustness_main
from mgrec.train import build_data, train

from .conftest import tiny_multimodal

METRICS = [f"{split}/{m}@{k}" for split in ("val", "test") for m in ("recall", "ndcg") for k in (10, 20)]


def features(n: int = 500, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        # a large common offset: the SNR must be measured on the centred features
        "image": torch.randn(n, 48, generator=generator) * 2.0 + 5.0,
        "text": torch.randn(n, 16, generator=generator),
    }


def snapshot(modalities: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in modalities.items()}


# ----------------------------------------------------------------------------- the transforms


@pytest.mark.parametrize("snr", [30.0, 10.0, 0.0, -6.0])
def test_gaussian_achieves_the_requested_snr(snr: float) -> None:
    # 20,000 x 16 values: the measured noise power has a relative sd of sqrt(2 / 320,000), 0.011 dB
    clean = features(n=20_000)
    noisy = perturb_features(clean, "gaussian", snr, seed=3)
    for name in clean:
        noise = (noisy[name] - clean[name]).double()
        assert abs(float(noise.mean())) < 0.02 * math.sqrt(float(noise.square().mean()))
        centred = clean[name].double() - clean[name].double().mean(dim=0)
        achieved = 10 * math.log10(float(centred.square().mean()) / float(noise.square().mean()))
        assert achieved == pytest.approx(snr, abs=0.06)


def test_gaussian_infinite_snr_is_the_identity_and_low_snr_is_rejected_cleanly() -> None:
    clean = features()
    assert torch.equal(perturb_features(clean, "gaussian", math.inf, 0)["image"], clean["image"])
    with pytest.raises(ValueError, match="SNR"):
        perturb_features(clean, "gaussian", float("nan"), 0)


@pytest.mark.parametrize("share", [0.0, 0.002, 0.01, 0.37, 1.0])
def test_replace_gives_exactly_the_chosen_items_another_items_row(share: float) -> None:
    clean = features()
    n = len(clean["image"])
    out = perturb_features(clean, "replace", share, seed=1)
    changed = {name: (out[name] != clean[name]).any(dim=1) for name in clean}
    # the same items in every modality, exactly round(share x n) of them
    assert torch.equal(changed["image"], changed["text"])
    assert int(changed["image"].sum()) == round(share * n)
    rows = {name: clean[name] for name in clean}
    sources = []
    for item in torch.nonzero(changed["image"]).flatten().tolist():
        matches = torch.nonzero((rows["image"] == out["image"][item]).all(dim=1)).flatten().tolist()
        assert len(matches) == 1 and matches[0] != item
        assert torch.equal(out["text"][item], clean["text"][matches[0]])
        sources.append(matches[0])
    if round(share * n) >= 2:
        # a permutation among the chosen items: no row is duplicated, none lost
        assert sorted(sources) == sorted(torch.nonzero(changed["image"]).flatten().tolist())
    unchanged = ~changed["image"]
    assert torch.equal(out["image"][unchanged], clean["image"][unchanged])


def test_drop_zeroes_a_share_of_items_in_the_named_modality_only() -> None:
    clean = features()
    out = perturb_features(clean, "drop", 1.0, seed=0, modalities_to_perturb="image")
    assert not out["image"].any() and out["text"] is clean["text"]
    out = perturb_features(clean, "drop", 0.25, seed=0, modalities_to_perturb=["image", "text"])
    zeroed = {name: (out[name] == 0).all(dim=1) for name in clean}
    assert int(zeroed["image"].sum()) == round(0.25 * len(clean["image"]))
    assert torch.equal(zeroed["image"], zeroed["text"])
    assert torch.equal(out["image"][~zeroed["image"]], clean["image"][~zeroed["image"]])


@pytest.mark.parametrize(("kind", "strength"), [("gaussian", 5.0), ("replace", 0.3), ("drop", 0.5)])
def test_deterministic_per_seed_and_input_untouched(kind: str, strength: float) -> None:
    clean = features()
    before = snapshot(clean)
    first = perturb_features(clean, kind, strength, seed=7)
    again = perturb_features(clean, kind, strength, seed=7)
    other = perturb_features(clean, kind, strength, seed=8)
    for name in clean:
        assert torch.equal(clean[name], before[name])
        assert torch.equal(first[name], again[name])
        assert not torch.equal(first[name], other[name])
        assert not torch.equal(first[name], clean[name])
    # a modality's draw does not depend on which other modalities are perturbed
    alone = perturb_features(clean, kind, strength, seed=7, modalities_to_perturb=["text"])
    assert torch.equal(alone["text"], first["text"]) and alone["image"] is clean["image"]


def test_clear_errors() -> None:
    clean = features()
    with pytest.raises(ValueError, match="unknown perturbation kind 'blur'"):
        perturb_features(clean, "blur", 1.0, 0)
    with pytest.raises(ValueError, match="unknown modality 'audio'"):
        perturb_features(clean, "drop", 1.0, 0, modalities_to_perturb=["audio"])
    for kind in ("replace", "drop"):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            perturb_features(clean, kind, 1.5, 0)
    with pytest.raises(ValueError, match="seed"):
        perturb_features(clean, "gaussian", 1.0, -1)
    with pytest.raises(ValueError, match="unknown perturbation key"):
        Perturbation.from_config({"kind": "drop", "modality": "image"})
    assert perturb_features(clean, "none", 123.0, 0)["image"] is clean["image"]


def test_spec_from_config_and_non_null() -> None:
    spec = Perturbation.from_config({"kind": "drop", "strength": 1, "seed": None, "modalities": "image"})
    assert spec == Perturbation("drop", 1.0, 0, ("image",))
    assert spec.record() == {
        "perturb/kind": "drop",
        "perturb/strength": 1.0,
        "perturb/seed": 0,
        "perturb/modalities": "image",
    }
    assert non_null({"path": None, "noise": {"kind": "none", "strength": None}}) == {
        "noise": {"kind": "none"}
    }
    data = tiny_multimodal(2)
    assert perturb_data(data, None) is data
    noisy = perturb_data(data, {"kind": "gaussian", "strength": 0.0})
    assert noisy.fingerprint != data.fingerprint and noisy.train is data.train


def test_apply_to_model_perturbs_trainable_tables_only() -> None:
    from mgrec.models.multimodal import ModalityFeatures

    clean = features()
    model = torch.nn.Module()
    model.trained = ModalityFeatures(clean, trainable=True)
    model.fixed = ModalityFeatures(clean, trainable=False)
    spec = {"kind": "replace", "strength": 0.5, "seed": 2, "modalities": ["image", "audio"]}
    assert apply_to_model(model, {"kind": "none"}) == []
    assert apply_to_model(model, spec) == ["trained.image"]
    expected = perturb_features(clean, "replace", 0.5, 2, ["image"])
    assert torch.equal(model.trained["image"], expected["image"])
    assert isinstance(model.trained.image, torch.nn.Parameter)
    for name in clean:
        assert torch.equal(model.fixed[name], clean[name])
    assert torch.equal(model.trained["text"], clean["text"])


# ----------------------------------------------------------------------------- evaluation and training


def train_run(make_cfg: Callable[..., DictConfig], folder: Path, *overrides: str) -> Path:
    cfg = make_cfg("trainer.max_epochs=2", *overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(folder)
    train(cfg)
    return folder / "checkpoints" / "best.ckpt"


def eval_cfg(
    make_cfg: Callable[..., DictConfig], checkpoint: Path, folder: Path, *overrides: str
) -> DictConfig:
    cfg = make_cfg(f"ckpt_path={checkpoint}", "trainer=cpu", *overrides, config_name="eval.yaml")
    with open_dict(cfg):
        cfg.paths.output_dir = str(folder)
        cfg.trainer.enable_progress_bar = False
    return cfg


def test_eval_perturbation_rebuilds_graphs_and_perturbs_trainable_tables(
    make_cfg: Callable[..., DictConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = train_run(make_cfg, tmp_path / "freedom", "model=freedom")
    run_cfg = saved_config(run_dir_of(checkpoint))
    # the graph cache is on: a perturbed graph must not be served from the clean graph's entry
    assert run_cfg.model.graph_cache_dir and any(Path(run_cfg.model.graph_cache_dir).rglob("*.npz"))
    clean_model = load_model(checkpoint, run_cfg, build_data(run_cfg.data).data)
    assert clean_model.features.trainable

    loaded = []
    monkeypatch.setattr(
        mgrec.eval, "load_model", lambda *a, **k: loaded.append(load_model(*a, **k)) or loaded[-1]
    )
    clean = evaluate(eval_cfg(make_cfg, checkpoint, tmp_path / "clean"))
    noisy = evaluate(
        eval_cfg(
            make_cfg,
            checkpoint,
            tmp_path / "noisy",
            "perturb=gaussian",
            "perturb.strength=-5",
            "perturb.seed=3",
        )
    )
    model = loaded[-1]
    # the kNN item graph is rebuilt from the perturbed features
    assert not torch.equal(model.item_graph.to_dense(), clean_model.item_graph.to_dense())
    # the trainable tables restored from the checkpoint got the same perturbation
    expected = Perturbation("gaussian", -5.0, 3).apply(dict(clean_model.features.items()))
    for name in clean_model.features.names:
        assert not torch.equal(model.features[name], clean_model.features[name])
        assert torch.equal(model.features[name], expected[name])
    assert {k: noisy[k] for k in METRICS} != pytest.approx({k: clean[k] for k in METRICS})
    saved = json.loads((tmp_path / "noisy" / "metrics.json").read_text())
    assert (saved["perturb/kind"], saved["perturb/strength"], saved["perturb/seed"]) == ("gaussian", -5.0, 3)
    assert saved["data/noise/kind"] == "none"

    # at 200 dB the noise is below float32 precision: the clean metrics come back
    quiet = evaluate(
        eval_cfg(make_cfg, checkpoint, tmp_path / "quiet", "perturb=gaussian", "perturb.strength=200")
    )
    assert {k: quiet[k] for k in METRICS} == pytest.approx({k: clean[k] for k in METRICS})

    # replacing every item's features also changes what the model sees
    replaced = evaluate(
        eval_cfg(make_cfg, checkpoint, tmp_path / "replace", "perturb=replace", "perturb.strength=1")
    )
    assert {k: replaced[k] for k in METRICS} != pytest.approx({k: clean[k] for k in METRICS})


def test_training_time_noise_trains_on_perturbed_features_and_eval_can_clean_them(
    make_cfg: Callable[..., DictConfig], tmp_path: Path
) -> None:
    noise = ("data.noise.kind=gaussian", "data.noise.strength=-5", "data.noise.seed=1")
    cfg = make_cfg("model=vbpr", *noise)
    clean_data = build_data(make_cfg("model=vbpr").data).data
    noisy_data = build_data(cfg.data).data
    expected = Perturbation("gaussian", -5.0, 1).apply(clean_data.modalities)
    for name in clean_data.modalities:
        assert torch.equal(noisy_data.modalities[name], expected[name])
        assert not torch.equal(noisy_data.modalities[name], clean_data.modalities[name])

    checkpoint = train_run(make_cfg, tmp_path / "noisy", "model=vbpr", *noise)
    trained = json.loads((tmp_path / "noisy" / "metrics.json").read_text())
    # the trained model's fixed feature tables are the noisy ones
    run_cfg = saved_config(run_dir_of(checkpoint))
    model = load_model(checkpoint, run_cfg, build_data(run_cfg.data).data)
    assert torch.equal(model.features["image"], expected["image"])
    # eval uses the run's noisy data by default (training metrics back) and clean data on request
    default = evaluate(eval_cfg(make_cfg, checkpoint, tmp_path / "default"))
    assert {k: default[k] for k in METRICS} == pytest.approx({k: trained[k] for k in METRICS})
    assert default["data/noise/kind"] == "gaussian"
    clean = evaluate(eval_cfg(make_cfg, checkpoint, tmp_path / "clean", "data.noise.kind=none"))
    assert clean["data/noise/kind"] == "none"
    assert {k: clean[k] for k in METRICS} != pytest.approx({k: trained[k] for k in METRICS})


@pytest.mark.slow
def test_robustness_script_writes_table_and_plot(make_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    runs = {
        (optimizer, seed): train_run(
            make_cfg, tmp_path / f"{optimizer}{seed}", "model=vbpr", f"optimizer={optimizer}", f"seed={seed}"
        ).parent.parent
        for optimizer in ("adam", "mg")
        for seed in (0, 1)
    }
    out = tmp_path / "robustness"
    robustness_main(
        [
            "--baseline", str(runs["adam", 0]), str(runs["adam", 1]),
            "--mg", str(runs["mg", 0]), str(runs["mg", 1 ]),
            "--kind", "gaussian", "--strengths", "20", "0", "-10",
            "--accelerator", "cpu", "--out", str(out),
        ]
    )  # fmt: skip
    summary = pd.read_csv(out / "robustness.csv")
    assert set(summary["group"]) == {"baseline", "mg"}
    assert sorted(set(summary["strength"])) == [-10.0, 0.0, 20.0]
    assert set(summary["runs"]) == {2} and summary["p"].notna().all()
    per_run = pd.read_csv(out / "robustness_runs.csv")
    assert len(per_run) == 4 * 4  # four runs, clean + three strengths
    # the clean rows reproduce each run's own training metrics
    for (optimizer, seed), run in runs.items():
        trained = json.loads((run / "metrics.json").read_text())["test/recall@20"]
        row = per_run[per_run["clean"] & per_run["checkpoint"].str.startswith(str(run.resolve()))]
        assert row["test/recall@20"].item() == pytest.approx(trained), (optimizer, seed)
    # heavier noise costs accuracy
    recall = summary[summary["metric"] == "test/recall@20"].groupby("strength")["mean"].mean()
    assert recall[-10.0] < recall[20.0]
    table = (out / "robustness.md").read_text()
    assert "| clean |" in table and "p (retained)" in table
    png = (out / "robustness.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
