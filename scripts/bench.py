"""Speed and memory benchmarks on the real data sets; writes tables into docs/benchmarks.md.

    .venv/bin/python scripts/bench.py [--suite core|models|knn|usergraph|scaling|all] [--data baby|tiktok|all]
                                      [--repeats N] [--warmup N] [--models a,b] [--device cpu|cuda]
                                      [--fractions 0.125,0.25,0.5,1] [--scaling-models a,b] [--point-timeout S]
                                      [--out docs/benchmarks.md] [--plot docs/img/scaling.png] [--json FILE]
                                      [--threads N] [--data-dir ../shared/data]

Suites (`all`: every one but `scaling`): `core` (sampling, LightGCN and BPR on baby_interactions and tiktok),
`models` (every model on tiktok and baby_interactions, multimodal ones on tiktok only: training epoch with Adam
and with MG, validation pass with its scoring throughput against a bare `torch.mm`, peak memory), `knn` (the
item-item kNN graph at Elec's shape, synthetic), `usergraph` (DualGNN's / DRAGON's user co-occurrence graph at
Elec's user, item and interaction counts, synthetic), `scaling` (LightGCN, BM3, FREEDOM on `make_synthetic` at
fractions of Elec's size: epoch, validation and memory against size, fitted growth exponents, a log-log plot).

Every measurement runs in a fresh Python process (this script with ``--child``), so its peak RSS is its own.
Only the text between the two ``bench`` markers of the output file is replaced; notes around it are kept.
`--device cuda` puts the model and the data on the GPU (negatives drawn there) and adds the peak GPU memory
(`torch.cuda.max_memory_allocated`); its blocks are `<suite>-cuda`, so CPU figures are kept. Without CUDA it
says so and exits 0.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch import Callback, Trainer, seed_everything
from omegaconf import OmegaConf
from torch import Tensor
from torch.overrides import TorchFunctionMode

from mgrec.data import InteractionData, make_synthetic, read_mmrec
from mgrec.data.datamodule import RecDataModule, eval_batches
from mgrec.data.sampling import EpochBatchSampler
from mgrec.graphs import knn_graph, user_cooccurrence_graph
from mgrec.models import Recommender
from mgrec.optim import MirrorGradient

ROOT = Path(__file__).resolve().parents[1]
DATASETS = {
    "baby": ("amazon-baby-interactions", {}),
    "tiktok": ("tiktok", {"image": "image_feat.npy", "audio": "audio_feat.npy"}),
}
BATCH, EVAL_BATCH, SEED = 2048, 4096, 0


# the optimizers exactly as train.py builds them (configs/optimizer/*.yaml: Adam lr 1e-3, fused; MG alpha1 1,
# alpha2 0.2, beta 3 around it)
OPTIMIZERS = {
    name: instantiate(OmegaConf.load(ROOT / "configs" / "optimizer" / f"{name}.yaml"))
    for name in ("adam", "mg")
}
MEASUREMENTS = {  # key (model-optimizer-runner): what is timed
    "sampling": "negative sampling, one epoch",
    "lightgcn-adam-loop": "LightGCN epoch, Adam, bare loop",
    "lightgcn-mg-loop": "LightGCN epoch, MG, bare loop",
    "lightgcn-adam-lightning": "LightGCN epoch, Adam, Lightning",
    "lightgcn-mg-lightning": "LightGCN epoch, MG, Lightning",
    "lightgcn-adam-valid": "LightGCN validation pass",
    "bpr-adam-loop": "BPR epoch, Adam, bare loop",
    "bpr-adam-valid": "BPR validation pass",
}
MULTIMODAL = [
    *("vbpr", "bm3", "freedom", "lattice", "mgcn", "slmrec"),
    *("mmgcn", "grcn", "dualgnn", "dragon", "mvgae", "itemknncbf"),
]
GENERAL = ["lightgcn", "bpr", "layergcn", "selfcfed_lgn"]  # no features: they also run on baby_interactions
UNTRAINED = {"itemknncbf"}  # nothing to train: only the validation pass is measured
MODEL_TARGETS = {  # model: MMRec's seconds per training epoch on tiktok, this 2-core CPU (issue 3)
    "vbpr": 0.63,
    "bm3": 1.87,
    "freedom": 1.60,
}
MMREC_TIKTOK_VALID = 0.43
KNN_SHAPE = {"items": 63_001, "dims": (4096, 384), "k": 10}  # Elec's item count and feature widths
ELEC_SHAPE = {"n_users": 192_403, "n_items": 63_001, "n_interactions": 1_689_188}
USER_GRAPH_K = 40  # MMRec's DualGNN / DRAGON k
TARGETS = {  # key: (MMRec on this 2-core CPU, target), for baby
    "sampling": ("", "< 0.1 s"),
    "lightgcn-adam-loop": ("2.4 s", "< 1.2 s"),
    "lightgcn-adam-lightning": ("2.4 s", "< 1.2 s"),
    "lightgcn-adam-valid": ("2.9 s", "< 0.6 s"),
}
BEGIN, END = "<!-- bench:begin (written by scripts/bench.py) -->", "<!-- bench:end -->"  # the core suite
HOW = """**How measured.** Each row is a fresh child process of `scripts/bench.py`: it reads the data set, runs
one warm-up repetition, then the timed ones, and reports its own peak resident memory (`ru_maxrss`, which
includes Python, torch and the data). Negative sampling: `EpochBatchSampler(train, 2048, 0)
.epoch_interactions()` for a new epoch. Training epoch (batch 2048; LightGCN 64-d, 3 layers, Adam lr 1e-3;
MG alpha1 1, alpha2 0.2, beta 3): the bare loop iterates the sampler (sampling included) and calls the
optimizer's `step(closure)` on the model's `loss`; the Lightning rows run `Trainer.fit` on a `RecDataModule`
holding the data, without validation, timed from `on_train_epoch_start` to `on_train_epoch_end`. Validation
pass: every validation user of `eval_batches(data, "valid", 4096)` scored, training items masked, top-50,
`TopKMetrics` update and compute, as `Recommender._rank` does, under `inference_mode`. The machine is shared:
the load average is the 1-minute one before and after the run; compare medians."""


ELEC_MODALITIES = {"image": 4096, "text": 384}  # Elec's feature widths (configs/data/synthetic_elec.yaml)
SCALING_MODELS = ("lightgcn", "bm3", "freedom")
FRACTIONS = (0.125, 0.25, 0.5, 1.0)
POINT_TIMEOUT = 3600.0  # seconds per child process (one model on one data set, or one scaling point)
REFERENCE_BATCHES, REFERENCE_PASSES = 4, 3  # the bare torch.mm reference: batches timed per pass, passes
PRODUCTS = {"mm", "matmul", "__matmul__", "addmm"}  # dense products whose [users, items] output is a score


# ------------------------------------------------------------------------------------------ child side
def clock(device: torch.device) -> float:
    """`perf_counter` after the device's queued work is done (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def peak_memory(device: torch.device) -> dict[str, float]:
    """This process's peak RSS (Linux reports KiB) and, on CUDA, the peak memory torch allocated there."""
    peak = {"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        peak["gpu_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak


def loop_epochs(model: Recommender, data: InteractionData, epochs: int, device: str = "cpu") -> list[float]:
    """The bare training loop: sampling (on `device`), the model's loss, the optimizer's step(closure)."""
    device = torch.device(device)
    model.to(device)
    optimizer = model.configure_optimizers()
    sampler, times = EpochBatchSampler(data.train, BATCH, SEED, device=device), []
    for epoch in range(epochs):
        start = clock(device)
        sampler.set_epoch(epoch)
        if isinstance(optimizer, MirrorGradient):
            optimizer.reset_schedule()
        for batch in sampler:

            def closure(batch: tuple[torch.Tensor, ...] = batch) -> torch.Tensor:
                optimizer.zero_grad()
                loss = model.loss(batch)
                loss.backward()
                return loss

            optimizer.step(closure)
        times.append(clock(device) - start)
    return times


class EpochTimer(Callback):
    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device or torch.device("cpu")
        self.start, self.times = 0.0, []

    def on_train_epoch_start(self, trainer: Trainer, module: Any) -> None:
        self.start = clock(self.device)

    def on_train_epoch_end(self, trainer: Trainer, module: Any) -> None:
        self.times.append(clock(self.device) - self.start)


def lightning_epochs(
    model: Recommender, data: InteractionData, epochs: int, device: str = "cpu"
) -> list[float]:
    """`Trainer.fit` on the real `RecDataModule` path, each epoch timed by a callback (no validation)."""
    logging.getLogger("lightning").setLevel(logging.ERROR)
    device = torch.device(device)
    # RecDataModule draws the batches (shuffle and negatives) on the trainer's device
    datamodule = RecDataModule(name=data.name, batch_size=BATCH, sampling_seed=SEED)
    datamodule.data = data  # in memory: setup() keeps it
    timer = EpochTimer(device)
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    devices = [device.index] if device.index is not None else 1
    flags = ("logger", "enable_checkpointing", "enable_progress_bar", "enable_model_summary")
    trainer = Trainer(max_epochs=epochs, accelerator=accelerator, devices=devices, limit_val_batches=0, num_sanity_val_steps=0,
                      use_distributed_sampler=False, callbacks=[timer], **dict.fromkeys(flags, False))  # fmt: skip
    trainer.fit(model, datamodule=datamodule)
    return timer.times


def validation_passes(
    model: Recommender, data: InteractionData, passes: int, device: str = "cpu"
) -> list[float]:
    """One validation epoch of `Recommender`: score, mask training items, top-50, metric update and compute,
    the propagation computed once per pass (the model's evaluation cache). The batches are moved to `device`
    before the clock starts."""
    device = torch.device(device)
    model.to(device)
    batches = [tuple(t.to(device) for t in batch) for batch in eval_batches(data, "valid", EVAL_BATCH)]
    times = []
    model.eval()
    with torch.inference_mode():
        for _ in range(passes):
            start = clock(device)
            model._start_eval()
            for batch in batches:
                model._rank(batch, model.val_metrics)
            model._end_eval(model.val_metrics)
            times.append(clock(device) - start)
    return times


class ScoreProducts(TorchFunctionMode):
    """Records the inner dimension of every dense product whose output has the shape of a score batch
    [rows, cols] (a product `a @ b` with a [rows, d], b [d, cols] adds d)."""

    def __init__(self, rows: int, cols: int) -> None:
        super().__init__()
        self.shape, self.inner = (rows, cols), []

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if name in PRODUCTS and isinstance(out, Tensor) and tuple(out.shape) == self.shape and len(args) >= 2:
            left, right = args[-2], args[-1]  # addmm(input, mat1, mat2): the last two
            if all(isinstance(x, Tensor) and x.layout == torch.strided for x in (left, right)):
                self.inner.append(int(left.shape[-1]))
        return out


def score_product(model: Recommender, data: InteractionData, device: torch.device) -> tuple[int | None, Any]:
    """The width d of the dense [users, d] x [d, items] product(s) behind `model.score` (summed when the
    scores are a sum of products; None when they come from no dense product) and the scores' dtype."""
    users = torch.as_tensor(data.eval_users("valid")[:EVAL_BATCH], device=device)
    probe = ScoreProducts(len(users), data.n_items)
    model.to(device).eval()
    with torch.inference_mode(), probe:
        scores = model.score(users)
    return (sum(probe.inner) or None), scores.dtype


def bare_mm_rate(
    n_users: int, n_items: int, dim: int, device: torch.device, dtype: Any = torch.float32
) -> float:
    """Scores per second of a bare `torch.mm` over the validation pass's shapes: batches of EVAL_BATCH
    users, [batch, dim] x [dim, n_items] into a preallocated output; the best of REFERENCE_PASSES passes over
    the first REFERENCE_BATCHES batches (a rate, so a prefix of the batches measures it)."""
    sizes = [min(EVAL_BATCH, n_users - start) for start in range(0, n_users, EVAL_BATCH)][:REFERENCE_BATCHES]
    items = torch.randn(dim, n_items, device=device).to(dtype)
    users = torch.randn(sizes[0], dim, device=device).to(dtype)
    out = torch.empty(sizes[0], n_items, device=device, dtype=dtype)
    torch.mm(users, items, out=out)  # warm-up
    best = math.inf
    for _ in range(REFERENCE_PASSES):
        start = clock(device)
        for size in sizes:
            torch.mm(users[:size], items, out=out[:size])
        best = min(best, clock(device) - start)
    return sum(sizes) * n_items / best


def validation_stats(
    model: Recommender, data: InteractionData, warmup: int, repeats: int, device: torch.device
) -> dict[str, Any]:
    """Timed validation passes, the achieved scoring throughput and the bare `torch.mm` one; the peak
    memory is read before the reference product allocates its own operands."""
    times = validation_passes(model, data, warmup + repeats, device)[warmup:]
    peak = peak_memory(device)
    dim, dtype = score_product(model, data, device)
    n_eval_users = len(data.eval_users("valid"))
    return {
        "times": times,
        **peak,
        "n_eval_users": n_eval_users,
        "n_items": data.n_items,
        "score_dim": dim,
        "scores_per_s": n_eval_users * data.n_items / statistics.median(times),
        "mm_scores_per_s": bare_mm_rate(n_eval_users, data.n_items, dim, device, dtype) if dim else None,
    }


def build_model(name: str, data: InteractionData, optimizer: str) -> Recommender:
    """The model with its defaults from configs/model/<name>.yaml (no graph cache: builds are timed too)."""
    config = OmegaConf.load(ROOT / "configs" / "model" / f"{name}.yaml")
    if "graph_cache_dir" in config:
        config.graph_cache_dir = None
    return instantiate(config, _partial_=True)(data=data, optimizer=OPTIMIZERS[optimizer])


def scaled_shape(fraction: float) -> dict[str, int]:
    """Elec's users, items and interactions times `fraction` (so interactions per user stay Elec's)."""
    return {key: max(1, round(value * fraction)) for key, value in ELEC_SHAPE.items()}


def scaling_point(
    model_name: str, fraction: float, warmup: int, repeats: int, device: torch.device
) -> dict[str, Any]:
    """One point of the scaling suite: generate the data, build the model (Adam), train epochs through
    Lightning, validation passes with their throughput; the peak memory after the data is `data_mb`."""
    shape = scaled_shape(fraction)
    start = time.perf_counter()
    data = make_synthetic(**shape, modalities=ELEC_MODALITIES, seed=SEED, name="synthetic_elec")
    generate_s, data_mb = time.perf_counter() - start, peak_memory(device)["maxrss_mb"]
    seed_everything(SEED, verbose=False)
    start = time.perf_counter()
    model = build_model(model_name, data, "adam")
    build_s = time.perf_counter() - start
    epochs = lightning_epochs(model, data, warmup + repeats, device)[warmup:]
    valid = validation_stats(model, data, warmup, repeats, device)
    return {
        **shape,
        "fraction": fraction,
        "n_train": int(data.train.nnz),
        "generate_s": generate_s,
        "build_s": build_s,
        "data_mb": data_mb,
        "epoch_times": epochs,
        "valid_times": valid.pop("times"),
        **valid,
    }


def knn_build(dim: int) -> list[float]:
    """One kNN graph build over random features of Elec's item count (float32, as the reader gives)."""
    features = torch.randn(KNN_SHAPE["items"], dim, generator=torch.Generator().manual_seed(SEED))
    start = time.perf_counter()
    knn_graph(features, KNN_SHAPE["k"])
    return [time.perf_counter() - start]


def user_graph_build() -> dict[str, Any]:
    """One user co-occurrence graph build over synthetic interactions of Elec's size."""
    train = make_synthetic(**ELEC_SHAPE, modalities={}, seed=SEED).train
    item_degree = train.sum(axis=0).A1
    before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    graph = user_cooccurrence_graph(train, USER_GRAPH_K)
    return {
        "times": [time.perf_counter() - start],
        "data_mb": before_mb,
        "pairs": float((item_degree.astype(float) ** 2).sum()),
        "max_item_degree": int(item_degree.max()),
        "nnz": int(graph.nnz),
    }


def child(
    kind: str,
    name: str,
    folder: Path,
    repeats: int,
    threads: int,
    device: str = "cpu",
    warmup: int = 1,
    fraction: float | None = None,
) -> dict[str, Any]:
    warnings.filterwarnings("ignore")
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if kind == "usergraph":
        row = user_graph_build()
        row["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {**row, "threads": torch.get_num_threads()}
    if kind.startswith("knn-"):
        times = knn_build(int(kind.split("-")[1]))
        maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {"times": times, "maxrss_mb": maxrss_mb, "threads": torch.get_num_threads()}
    if kind.startswith("scale-"):
        if fraction is None:
            raise ValueError("a scaling point needs --fraction")
        row = scaling_point(kind.removeprefix("scale-"), fraction, warmup, repeats, device)
        return {**row, "threads": torch.get_num_threads()}
    data = read_mmrec(folder, name, DATASETS[name][1])
    seed_everything(SEED, verbose=False)
    n = warmup + repeats
    if kind == "sampling":
        sampler, times = EpochBatchSampler(data.train, BATCH, SEED, device=device), []
        for epoch in range(n):
            sampler.set_epoch(epoch)
            start = clock(device)
            sampler.epoch_interactions()
            times.append(clock(device) - start)
    else:
        model_name, optimizer, runner = kind.split("-")
        model = build_model(model_name, data, optimizer)
        if runner == "valid":
            return {
                **validation_stats(model, data, warmup, repeats, device),
                "threads": torch.get_num_threads(),
            }
        run = {"loop": loop_epochs, "lightning": lightning_epochs}[runner]
        times = run(model, data, n, device)
    return {"times": times[warmup:], **peak_memory(device), "threads": torch.get_num_threads()}


# ------------------------------------------------------------------------------------------ parent side
def run_child(
    kind: str,
    name: str,
    folder: Path,
    args: argparse.Namespace,
    fraction: float | None = None,
    timeout: float | None = None,
    tolerant: bool = False,
) -> dict[str, Any]:
    """Run one measurement in a fresh process. With `tolerant`, a failure or a process still running after
    `timeout` seconds (killed then) comes back as a row with `status` 'failed' or 'timeout'."""
    command = [sys.executable, __file__, "--child", kind, "--data", name, "--repeats", str(args.repeats)]
    command += ["--data-dir", str(folder.parent), "--threads", str(args.threads), "--device", args.device]
    command += ["--warmup", str(args.warmup)]
    if fraction is not None:
        command += ["--fraction", repr(fraction)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        if not tolerant:
            raise
        return {"status": "timeout", "limit_s": timeout}
    if done.returncode != 0:
        message = f"{kind} on {name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
        if not tolerant:
            raise RuntimeError(message)
        print(message, file=sys.stderr, flush=True)
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        return {"status": "failed", "error": lines[-1][:200]}
    return {"status": "ok", **json.loads(done.stdout.strip().splitlines()[-1])}


def fmt(seconds: list[float]) -> str:
    return f"{statistics.median(seconds):.3f} ({min(seconds):.3f}-{max(seconds):.3f})"


def not_measured(row: dict[str, Any] | None) -> str | None:
    """Why a row has no figures ('timeout (> N s)', 'failed', 'not run'), or None when it has them."""
    if row is None:
        return "not run"
    status = row.get("status", "ok")
    if status == "timeout":
        return f"timeout (> {row['limit_s']:.0f} s)"
    if status == "ok":
        return None
    return status


def millions(rate: float | None) -> str:
    return f"{rate / 1e6:,.1f}" if rate else "n/a"


def throughput_cells(valid: dict[str, Any]) -> list[str]:
    """Achieved scores/s, the bare torch.mm's (with the product's width) and their ratio, in millions."""
    mm = valid.get("mm_scores_per_s")
    if not mm:
        return [millions(valid["scores_per_s"]), "n/a (no dense product)", ""]
    return [
        millions(valid["scores_per_s"]),
        f"{millions(mm)} (d={valid['score_dim']})",
        f"{valid['scores_per_s'] / mm:.2f}",
    ]


def table(results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    lines = ["| data | measurement | seconds, median (min-max) | peak RSS MB | MMRec, 2-core CPU | target |"]
    lines.append("|---|---|---|---|---|---|")
    for name, rows in results.items():
        for key, label in MEASUREMENTS.items():
            mmrec, target = TARGETS.get(key, ("", "")) if name == "baby" else ("", "")
            row = rows[key]
            lines.append(
                f"| {name} | {label} | {fmt(row['times'])} | {row['maxrss_mb']:.0f} | {mmrec} | {target} |"
            )
        for runner in ("loop", "lightning"):
            mg, adam = (statistics.median(rows[f"lightgcn-{o}-{runner}"]["times"]) for o in ("mg", "adam"))
            lines.append(
                f"| {name} | LightGCN epoch MG / Adam, {runner} | ratio {mg / adam:.2f} | | | ~ 1.33 |"
            )
    peak = max(row["maxrss_mb"] for rows in results.values() for row in rows.values())
    lines.append(f"| all | peak memory, largest of the rows | | {peak:.0f} | | < 2048 |")
    return lines


def report(results: dict[str, dict[str, dict[str, Any]]], threads: int, load: tuple[float, float]) -> str:
    return "\n".join([machine_line(threads, load), "", *table(results), "", HOW])


MODEL_DATA_ORDER = ("tiktok", "baby")  # the models table's order (baby_interactions has no features)


def model_kinds(model: str) -> tuple[str, ...]:
    return ("adam-valid",) if model in UNTRAINED else ("adam-lightning", "mg-lightning", "adam-valid")


def model_table(rows: dict[str, dict[str, Any]], cuda: bool = False) -> list[str]:
    """One row per (data set, model) measured; rows are keyed '<data>:<model>-<optimizer>-<runner>'."""
    gpu = " peak GPU MB |" if cuda else ""
    lines = [
        "| data | model | epoch, Adam (s) | epoch, MG (s) | MG / Adam | validation pass (s) | scores/s (M) "
        f"| bare torch.mm scores/s (M) | achieved / bare | peak RSS MB |{gpu} MMRec epoch | target epoch |",
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if cuda else "") + "---|---|",
    ]
    names = [name for name in MODEL_DATA_ORDER if any(key.startswith(f"{name}:") for key in rows)]
    for name in names:
        for model in [*MULTIMODAL, *GENERAL]:
            cells = {kind: rows.get(f"{name}:{model}-{kind}") for kind in model_kinds(model)}
            if all(row is None for row in cells.values()):
                continue
            if any(row is not None and row.get("status") == "n/a" for row in cells.values()):
                blank = " |" * (9 + cuda)
                lines.append(f"| {name} | {model} | n/a (no item features) |{blank}")
                continue
            missing = {kind: not_measured(row) for kind, row in cells.items()}
            measured = [row for kind, row in cells.items() if missing[kind] is None]
            peak = f"{max(row['maxrss_mb'] for row in measured):.0f}" if measured else ""
            gpu_peak = (
                [f"{max(row['gpu_peak_mb'] for row in measured):.0f}" if measured else ""] if cuda else []
            )
            valid = cells["adam-valid"]
            valid_cells = (
                [fmt(valid["times"]), *throughput_cells(valid)]
                if missing["adam-valid"] is None
                else [missing["adam-valid"], "", "", ""]
            )
            if model in UNTRAINED:
                train_cells = ["no training", "no training", ""]
            else:
                adam, mg = cells["adam-lightning"], cells["mg-lightning"]
                ratio = (
                    f"{statistics.median(mg['times']) / statistics.median(adam['times']):.2f}"
                    if missing["adam-lightning"] is None and missing["mg-lightning"] is None
                    else ""
                )
                train_cells = [
                    missing["adam-lightning"] or fmt(adam["times"]),
                    missing["mg-lightning"] or fmt(mg["times"]),
                    ratio,
                ]
            mmrec = MODEL_TARGETS.get(model) if name == "tiktok" and not cuda else None
            reference = [f"{mmrec:.2f} s", f"<= {mmrec / 2:.2f} s"] if mmrec else ["", ""]
            cells_out = [name, model, *train_cells, *valid_cells, peak, *gpu_peak, *reference]
            lines.append("| " + " | ".join(cells_out) + " |")
    if not cuda:
        lines.append(
            f"\nValidation pass target on tiktok: <= {MMREC_TIKTOK_VALID / 2:.2f} s (MMRec about "
            f"{MMREC_TIKTOK_VALID} s); MG / Adam target: close to 1 + 1/beta = 1.33 (MMRec's MG release: "
            "1.24-1.46)."
        )
    return lines


def growth_exponent(sizes: Sequence[float], seconds: Sequence[float]) -> float | None:
    """The least-squares slope a of log(seconds) = a log(size) + c; None without two distinct sizes."""
    pairs = [(math.log(x), math.log(y)) for x, y in zip(sizes, seconds, strict=True) if x > 0 and y > 0]
    if len({x for x, _ in pairs}) < 2:
        return None
    xs, ys = np.array(pairs).T
    return float(np.polyfit(xs, ys, 1)[0])


def scaling_series(rows: list[dict[str, Any]], model: str) -> dict[str, list[float]]:
    """The measured points of `model`, by size: interactions, epoch, users x items, validation, memory."""
    points = sorted(
        (row for row in rows if row["model"] == model and row["status"] == "ok"), key=lambda r: r["n_train"]
    )
    return {
        "n_train": [row["n_train"] for row in points],
        "epoch": [statistics.median(row["epoch_times"]) for row in points],
        "scores": [row["n_eval_users"] * row["n_items"] for row in points],
        "valid": [statistics.median(row["valid_times"]) for row in points],
        "maxrss_mb": [row["maxrss_mb"] for row in points],
        "gpu_peak_mb": [row.get("gpu_peak_mb", 0.0) for row in points],
    }


def fraction_label(fraction: float) -> str:
    return (
        "1x"
        if fraction == 1
        else (f"1/{round(1 / fraction)}" if (1 / fraction).is_integer() else f"{fraction:g}")
    )


def scaling_table(rows: list[dict[str, Any]], cuda: bool = False) -> list[str]:
    gpu = " peak GPU MB |" if cuda else ""
    lines = [
        "| model | size of Elec | users | items | train interactions | build (s) | epoch, Adam (s) "
        "| validation pass (s) | scores/s (M) | bare torch.mm scores/s (M) | achieved / bare "
        f"| data alone MB | peak RSS MB |{gpu}",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if cuda else ""),
    ]
    for row in rows:
        shape = scaled_shape(row["fraction"])
        head = f"| {row['model']} | {fraction_label(row['fraction'])} | {shape['n_users']:,} | {shape['n_items']:,} "
        why = not_measured(row)
        if why is not None:
            detail = f": {row['error']}" if row.get("error") else ""
            lines.append(head + f"| | | {why}{detail} |" + " |" * (6 + cuda))
            continue
        cells = [
            f"{row['n_train']:,}",
            f"{row['build_s']:.1f}",
            fmt(row["epoch_times"]),
            fmt(row["valid_times"]),
            *throughput_cells(row),
            f"{row['data_mb']:.0f}",
            f"{row['maxrss_mb']:.0f}",
            *([f"{row['gpu_peak_mb']:.0f}"] if cuda else []),
        ]
        lines.append(head + "| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| model | epoch time ~ (train interactions)^a | validation time ~ (validation users x items)^b "
        "| points |",
        "|---|---|---|---|",
    ]
    for model in dict.fromkeys(row["model"] for row in rows):
        series = scaling_series(rows, model)
        a = growth_exponent(series["n_train"], series["epoch"])
        b = growth_exponent(series["scores"], series["valid"])
        lines.append(
            f"| {model} | {'n/a' if a is None else f'a = {a:.2f}'} | {'n/a' if b is None else f'b = {b:.2f}'} "
            f"| {len(series['n_train'])} |"
        )
    return lines


def scaling_plot(rows: list[dict[str, Any]], path: Path, title: str) -> bool:
    """Log-log panels of epoch time, validation time and peak memory against size, with reference slopes
    through each panel's smallest measured point; False (nothing written) when no point was measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in dict.fromkeys(row["model"] for row in rows) if scaling_series(rows, m)["n_train"]]
    if not models:
        return False
    panels = [
        ("n_train", "epoch", "training epoch, Adam (s)", "train interactions", (1, 2)),
        ("scores", "valid", "validation pass (s)", "validation users x items", (1,)),
        ("n_train", "maxrss_mb", "peak RSS (MB)", "train interactions", (1,)),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2))
    for axis, (x_key, y_key, ylabel, xlabel, slopes) in zip(axes, panels, strict=True):
        anchor = None
        for model in models:
            series = scaling_series(rows, model)
            axis.loglog(series[x_key], series[y_key], "o-", label=model)
            first = (series[x_key][0], series[y_key][0])
            anchor = first if anchor is None or first[0] < anchor[0] else anchor
        span = np.array(
            [
                min(scaling_series(rows, m)[x_key][0] for m in models),
                max(scaling_series(rows, m)[x_key][-1] for m in models),
            ],
            dtype=float,
        )
        for slope in slopes:
            axis.loglog(span, anchor[1] * (span / anchor[0]) ** slope, ":", color="grey", linewidth=1)
            axis.annotate(
                f"slope {slope}",
                (span[-1], anchor[1] * (span[-1] / anchor[0]) ** slope),
                fontsize=8,
                color="grey",
            )
        axis.set_xlabel(xlabel)
        axis.set_ylabel(ylabel)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def machine_line(threads: int, load: tuple[float, float], device: str = "cpu") -> str:
    models = [
        line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")
    ]
    cpu = models[0].split(":", 1)[1].strip() if models else platform.processor()
    command = " ".join([".venv/bin/python scripts/bench.py", *sys.argv[1:]])
    gpu = f", GPU {torch.cuda.get_device_name(torch.device(device))}" if device.startswith("cuda") else ""
    return (
        f"{datetime.date.today().isoformat()}, `{command}`: {cpu}, nproc {os.cpu_count()}{gpu}, torch "
        f"{torch.__version__} ({threads} threads), lightning {lightning.__version__}, Python "
        f"{platform.python_version()}; load average {load[0]:.1f} before, {load[1]:.1f} after."
    )


MODELS_HOW = """Each model is built from its `configs/model/<name>.yaml` defaults (MMRec's) and trained through
`Trainer.fit` as in the core table (batch 2048, Adam lr 1e-3; MG alpha1 1, alpha2 0.2, beta 3), each cell a
fresh process; per-epoch graph work (FREEDOM's pruning, LATTICE's graph rebuild) is inside the epoch. The
multimodal models need item features, which baby_interactions lacks (n/a there). The validation pass is as in
the core table; its throughput is validation users x items / seconds, against a bare `torch.mm` of the score
product's shapes (batches of 4,096 users x d by d x items into a preallocated output, same dtype and threads,
same process, best of 3 passes over the first 4 batches; d is the width of the model's dense score product(s),
found by tracing one `score` call), so the ratio is the share of a bare matrix product's speed that the whole
pass (propagation, masking, top-50, metrics) achieves. The peak is the largest of the model's three processes."""
SCALING_HOW = """`make_synthetic` at a fraction of Amazon Elec's size (192,403 users, 63,001 items, 1,689,188
interactions at 1x; image 4,096-d and text 384-d features at every size), each point one fresh process that
generates the data, builds the model (Adam; FREEDOM's kNN item graph included in the build, no graph cache),
trains epochs through `Trainer.fit` as in the models table and runs validation passes with the same
throughput reference; "data alone" is its peak RSS after generating the data. A point that runs past the
per-point limit is killed and reported as a timeout (larger points of that model are then skipped). The
exponents are least-squares slopes on the log-log points: about 2 for training means the per-batch cost grows
with the graph (each batch propagates over every edge), about 1 for validation means a constant scoring rate.
Plot: `{plot}`."""


def write_json(path: Path, suite: str, payload: Any) -> None:
    """Merge `payload` under `suite` into the JSON file at `path` (other suites' entries are kept)."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[suite] = payload
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    print(f"wrote {path} ({suite})")


def knn_table(rows: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| features | items | k | build (s) | peak RSS MB | limit |", "|---|---|---|---|---|---|"]
    for dim in KNN_SHAPE["dims"]:
        row = rows[f"knn-{dim}"]
        lines.append(
            f"| {dim}-d | {KNN_SHAPE['items']:,} | {KNN_SHAPE['k']} | {row['times'][0]:.1f} "
            f"| {row['maxrss_mb']:.0f} | < 4096 |"
        )
    return lines


def user_graph_table(row: dict[str, Any]) -> list[str]:
    return [
        "| users | items | interactions | k | co-interaction pairs | build (s) | data alone MB | peak RSS MB "
        "| limit |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {ELEC_SHAPE['n_users']:,} | {ELEC_SHAPE['n_items']:,} | {ELEC_SHAPE['n_interactions']:,} "
        f"| {USER_GRAPH_K} | {row['pairs'] / 1e9:.2f} billion | {row['times'][0]:.1f} | {row['data_mb']:.0f} "
        f"| {row['maxrss_mb']:.0f} | a few GB |",
    ]


USER_GRAPH_HOW = """`mgrec.graphs.user_cooccurrence_graph(train, k=40)` over `make_synthetic` interactions of Elec's size
(Zipf popularity, exponent 0.8), one build in a fresh process. Co-interaction pairs = sum over items of
degree^2, the work of R R^T; "data alone" is the peak before the build (Python, torch, the generator)."""
KNN_HOW = """`mgrec.graphs.knn_graph(features, k=10)` (cosine, block-wise, 1,024 rows per block) over random float32
features, one build per fresh process; the peak includes the 63,001 x dim features themselves."""


def write_block(out: Path, suite: str, body: str) -> None:
    """Replace the text between the suite's markers in `out` (appending the markers when missing)."""
    begin, end = (
        (BEGIN, END) if suite == "core" else (f"<!-- bench-{suite}:begin -->", f"<!-- bench-{suite}:end -->")
    )
    text = out.read_text() if out.is_file() else "# Benchmarks\n"
    if begin not in text or end not in text:
        text = text.rstrip("\n") + f"\n\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(head + begin + "\n" + body + "\n" + end + rest.split(end, 1)[1])
    print(f"wrote {out} ({suite})")


def block_name(suite: str, device: str) -> str:
    return suite if device == "cpu" else f"{suite}-cuda"


PARTIAL = "**Partial**: written while the run was still going (it stopped or was stopped before the end)."


def publish_models(
    args: argparse.Namespace, rows: dict[str, Any], threads: int, load: float, final: bool
) -> None:
    line = machine_line(threads, (load, os.getloadavg()[0]), args.device)
    body = [
        line,
        "",
        *([] if final else [PARTIAL, ""]),
        *model_table(rows, args.device != "cpu"),
        "",
        MODELS_HOW,
    ]
    write_block(args.out, block_name("models", args.device), "\n".join(body))
    if args.json:
        write_json(
            args.json, block_name("models", args.device), {"machine": line, "final": final, "rows": rows}
        )


def run_models(args: argparse.Namespace, load: float) -> None:
    """Each model's processes on each data set; the tables are rewritten after every model, so a run that is
    stopped early leaves what it measured."""
    rows: dict[str, dict[str, Any]] = {}
    threads = 0
    for name in [n for n in MODEL_DATA_ORDER if args.data in ("all", n)]:
        folder = args.data_dir / DATASETS[name][0]
        if not (folder / f"{name}.inter").is_file():
            print(f"models: {folder / f'{name}.inter'} not found, skipping {name}")
            continue
        for model in args.models.split(","):
            if model in MULTIMODAL and not DATASETS[name][1]:
                rows[f"{name}:{model}-adam-valid"] = {"status": "n/a"}
                continue
            for kind in model_kinds(model):
                row = run_child(
                    f"{model}-{kind}", name, folder, args, timeout=args.point_timeout, tolerant=True
                )
                rows[f"{name}:{model}-{kind}"] = row
                threads = row.get("threads", threads)
                why = not_measured(row)
                figures = why or f"{fmt(row['times'])} s, peak {row['maxrss_mb']:.0f} MB"
                print(f"{name:7s} {model:12s} {kind:15s} {figures}", flush=True)
            publish_models(args, rows, threads, load, final=False)
    if not rows:
        print("models: no data set found, nothing measured")
        return
    publish_models(args, rows, threads, load, final=True)


def publish_scaling(
    args: argparse.Namespace, rows: list[dict[str, Any]], threads: int, load: float, final: bool
) -> None:
    plot = args.plot or ROOT / "docs" / "img" / (
        "scaling.png" if args.device == "cpu" else "scaling_cuda.png"
    )
    line = machine_line(threads, (load, os.getloadavg()[0]), args.device)
    if scaling_plot(rows, plot, f"mgrec scaling, synthetic Elec-shaped data, {args.device}") and final:
        print(f"wrote {plot}")
    try:
        shown = plot.resolve().relative_to(args.out.resolve().parent).as_posix()
    except ValueError:
        shown = str(plot)
    body = [line, "", *([] if final else [PARTIAL, ""]), *scaling_table(rows, args.device != "cpu")]
    write_block(
        args.out, block_name("scaling", args.device), "\n".join([*body, "", SCALING_HOW.format(plot=shown)])
    )
    if args.json:
        write_json(
            args.json, block_name("scaling", args.device), {"machine": line, "final": final, "rows": rows}
        )


def run_scaling(args: argparse.Namespace, load: float) -> None:
    """Every (model, fraction) point in its own process, smallest first; after a timeout or a failure the
    model's larger points are skipped. Table, plot and JSON are rewritten after every point."""
    fractions = sorted(float(f) for f in args.fractions.split(","))
    rows: list[dict[str, Any]] = []
    threads = 0
    for model in args.scaling_models.split(","):
        stopped = None
        for fraction in fractions:
            if stopped:
                row = {"status": f"skipped ({stopped} at a smaller size)"}
            else:
                row = run_child(
                    f"scale-{model}", "tiktok", args.data_dir / "tiktok", args, fraction=fraction,
                    timeout=args.point_timeout, tolerant=True,
                )  # fmt: skip
                threads = row.get("threads", threads)
            row.update(model=model, fraction=fraction)
            rows.append(row)
            why = not_measured(row)
            if why is not None and not stopped:
                stopped = "timeout" if row["status"] == "timeout" else "failure"
            figures = why or (
                f"build {row['build_s']:.1f} s, epoch {fmt(row['epoch_times'])} s, validation "
                f"{fmt(row['valid_times'])} s, peak {row['maxrss_mb']:.0f} MB"
            )
            print(f"scaling {model:9s} {fraction_label(fraction):6s} {figures}", flush=True)
            publish_scaling(args, rows, threads, load, final=False)
    publish_scaling(args, rows, threads, load, final=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    suites = ["core", "models", "knn", "usergraph", "scaling"]
    parser.add_argument(
        "--suite", choices=[*suites, "all"], default="all", help="all: every suite but scaling (hours at 1x)"
    )
    parser.add_argument(
        "--data", choices=[*DATASETS, "all"], default="all", help="data sets of core / models"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions after the warm-up")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repetitions first (default 1)")
    parser.add_argument(
        "--models", default=",".join([*MULTIMODAL, *GENERAL]), help="models of the `models` suite"
    )
    parser.add_argument("--scaling-models", default=",".join(SCALING_MODELS), help="models of `scaling`")
    parser.add_argument(
        "--fractions", default=",".join(map(str, FRACTIONS)), help="sizes of `scaling`, fractions of Elec's"
    )
    parser.add_argument(
        "--point-timeout", type=float, default=POINT_TIMEOUT,
        help=f"seconds before a `models` or `scaling` process is killed and reported (default {POINT_TIMEOUT:.0f})",
    )  # fmt: skip
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda[:N]): model and batches there")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--plot", type=Path, help="scaling plot (default docs/img/scaling[_cuda].png)")
    parser.add_argument("--json", type=Path, help="also write the raw figures here (merged per suite)")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--fraction", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device != "cpu" and not args.device.startswith("cuda"):
        parser.error(f"--device must be cpu or cuda[:N], got {args.device!r}")
    if args.device != "cpu" and not torch.cuda.is_available():
        print(
            f"--device {args.device}: CUDA is not available here (torch {torch.__version__}): nothing measured"
        )
        return
    if args.child:
        name = args.data if args.data != "all" else "tiktok"
        row = child(
            args.child, name, args.data_dir / DATASETS[name][0], args.repeats, args.threads,
            device=args.device, warmup=args.warmup, fraction=args.fraction,
        )  # fmt: skip
        print(json.dumps(row))
        return
    threads, load = 0, os.getloadavg()[0]
    if args.device == "cpu" and load > 0.5 * (os.cpu_count() or 1):
        print(f"warning: load average {load:.1f}; beside other processes, multi-threaded timings can be")
        print("many times slower (OpenMP threads wait for each other): rerun when idle, or use --threads 1")
    chosen = suites[:-1] if args.suite == "all" else [args.suite]  # scaling only when asked for
    if args.device != "cpu" and {"knn", "usergraph"} & set(chosen):
        print("knn and usergraph build graphs on the CPU: skipped with --device cuda")
        chosen = [s for s in chosen if s not in ("knn", "usergraph")]
    if "core" in chosen:
        results: dict[str, dict[str, dict[str, Any]]] = {}
        for name in DATASETS if args.data == "all" else [args.data]:
            inter = args.data_dir / DATASETS[name][0] / f"{name}.inter"
            if not inter.is_file():
                print(f"skipping {name}: {inter} not found")
                continue
            results[name] = {}
            for key, label in MEASUREMENTS.items():
                row = results[name][key] = run_child(key, name, inter.parent, args)
                threads = row["threads"]
                print(
                    f"{name:7s} {label:34s} {fmt(row['times'])} s, peak {row['maxrss_mb']:.0f} MB", flush=True
                )
        if results:
            body = report(results, threads, (load, os.getloadavg()[0]))
            write_block(args.out, block_name("core", args.device), body)
            if args.json:
                write_json(args.json, block_name("core", args.device), results)
        else:
            print("core: no data set found, nothing measured")
    if "models" in chosen:
        run_models(args, load)
    if "knn" in chosen:
        rows = {}
        for dim in KNN_SHAPE["dims"]:
            row = rows[f"knn-{dim}"] = run_child(f"knn-{dim}", "tiktok", args.data_dir / "tiktok", args)
            threads = row["threads"]
            print(f"knn {dim}-d: {row['times'][0]:.1f} s, peak {row['maxrss_mb']:.0f} MB", flush=True)
        body = [machine_line(threads, (load, os.getloadavg()[0])), "", *knn_table(rows), "", KNN_HOW]
        write_block(args.out, "knn", "\n".join(body))
    if "usergraph" in chosen:
        row = run_child("usergraph", "tiktok", args.data_dir / "tiktok", args)
        print(f"user graph: {row['times'][0]:.1f} s, peak {row['maxrss_mb']:.0f} MB", flush=True)
        body = [machine_line(row["threads"], (load, os.getloadavg()[0])), "", *user_graph_table(row), ""]
        write_block(args.out, "usergraph", "\n".join([*body, USER_GRAPH_HOW]))
    if "scaling" in chosen:
        run_scaling(args, load)


if __name__ == "__main__":
    main()
