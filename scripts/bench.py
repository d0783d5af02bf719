"""Speed and memory benchmarks on the real data sets; writes tables into docs/benchmarks.md.

    .venv/bin/python scripts/bench.py [--suite core|models|knn|usergraph|all] [--data baby|tiktok|all]
                                      [--repeats N] [--models a,b]
                                      [--out docs/benchmarks.md] [--threads N] [--data-dir ../shared/data]

Suites: `core` (sampling, LightGCN and BPR on baby_interactions and tiktok), `models` (every multimodal model
and the general ones on tiktok: training epoch with Adam and with MG, validation pass, peak memory), `knn`
(the item-item kNN graph at Elec's shape, synthetic), `usergraph` (DualGNN's / DRAGON's user co-occurrence
graph at Elec's user, item and interaction counts, synthetic).

Every measurement runs in a fresh Python process (this script with ``--child``), so its peak RSS is its own.
Only the text between the two ``bench`` markers of the output file is replaced; notes around it are kept.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning
import torch
from hydra.utils import instantiate
from lightning.pytorch import Callback, Trainer, seed_everything
from omegaconf import OmegaConf

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
OPTIMIZERS = {
    "adam": functools.partial(torch.optim.Adam, lr=1e-3),
    "mg": functools.partial(
        MirrorGradient, optimizer=torch.optim.Adam, lr=1e-3, alpha1=1.0, alpha2=0.2, beta=3
    ),
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
GENERAL = ["layergcn", "selfcfed_lgn"]  # collaborative models of the MG code release, no features
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


# ------------------------------------------------------------------------------------------ child side
def loop_epochs(model: Recommender, data: InteractionData, epochs: int) -> list[float]:
    """The bare training loop: sampling, the model's loss, the optimizer's step(closure)."""
    optimizer = model.configure_optimizers()
    sampler, times = EpochBatchSampler(data.train, BATCH, SEED), []
    for epoch in range(epochs):
        start = time.perf_counter()
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
        times.append(time.perf_counter() - start)
    return times


class EpochTimer(Callback):
    def __init__(self) -> None:
        self.start, self.times = 0.0, []

    def on_train_epoch_start(self, trainer: Trainer, module: Any) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, module: Any) -> None:
        self.times.append(time.perf_counter() - self.start)


def lightning_epochs(model: Recommender, data: InteractionData, epochs: int) -> list[float]:
    """`Trainer.fit` on the real `RecDataModule` path, each epoch timed by a callback (no validation)."""
    logging.getLogger("lightning").setLevel(logging.ERROR)
    datamodule = RecDataModule(name=data.name, batch_size=BATCH, sampling_seed=SEED)
    datamodule.data = data  # in memory: setup() keeps it
    timer = EpochTimer()
    flags = ("logger", "enable_checkpointing", "enable_progress_bar", "enable_model_summary")
    trainer = Trainer(max_epochs=epochs, accelerator="cpu", devices=1, limit_val_batches=0, num_sanity_val_steps=0,
                      use_distributed_sampler=False, callbacks=[timer], **dict.fromkeys(flags, False))  # fmt: skip
    trainer.fit(model, datamodule=datamodule)
    return timer.times


def validation_passes(model: Recommender, data: InteractionData, passes: int) -> list[float]:
    """One validation epoch of `Recommender`: score, mask training items, top-50, metric update and compute,
    the propagation computed once per pass (the model's evaluation cache)."""
    batches, times = eval_batches(data, "valid", EVAL_BATCH), []
    model.eval()
    with torch.inference_mode():
        for _ in range(passes):
            start = time.perf_counter()
            model._start_eval()
            for batch in batches:
                model._rank(batch, model.val_metrics)
            model._end_eval(model.val_metrics)
            times.append(time.perf_counter() - start)
    return times


def build_model(name: str, data: InteractionData, optimizer: str) -> Recommender:
    """The model with its defaults from configs/model/<name>.yaml (no graph cache: builds are timed too)."""
    config = OmegaConf.load(ROOT / "configs" / "model" / f"{name}.yaml")
    if "graph_cache_dir" in config:
        config.graph_cache_dir = None
    return instantiate(config, _partial_=True)(data=data, optimizer=OPTIMIZERS[optimizer])


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


def child(kind: str, name: str, folder: Path, repeats: int, threads: int) -> dict[str, Any]:
    warnings.filterwarnings("ignore")
    if threads:
        torch.set_num_threads(threads)
    if kind == "usergraph":
        row = user_graph_build()
        row["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {**row, "threads": torch.get_num_threads()}
    if kind.startswith("knn-"):
        times = knn_build(int(kind.split("-")[1]))
        maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {"times": times, "maxrss_mb": maxrss_mb, "threads": torch.get_num_threads()}
    data = read_mmrec(folder, name, DATASETS[name][1])
    seed_everything(SEED, verbose=False)
    n = repeats + 1  # the first repetition is a warm-up
    if kind == "sampling":
        sampler, times = EpochBatchSampler(data.train, BATCH, SEED), []
        for epoch in range(n):
            sampler.set_epoch(epoch)
            start = time.perf_counter()
            sampler.epoch_interactions()
            times.append(time.perf_counter() - start)
    else:
        model_name, optimizer, runner = kind.split("-")
        model = build_model(model_name, data, optimizer)
        run = {"loop": loop_epochs, "lightning": lightning_epochs, "valid": validation_passes}[runner]
        times = run(model, data, n)
    maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    return {"times": times[1:], "maxrss_mb": maxrss_mb, "threads": torch.get_num_threads()}


# ------------------------------------------------------------------------------------------ parent side
def run_child(kind: str, name: str, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", kind, "--data", name, "--repeats", str(args.repeats)]
    command += ["--data-dir", str(folder.parent), "--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} on {name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def fmt(seconds: list[float]) -> str:
    return f"{statistics.median(seconds):.3f} ({min(seconds):.3f}-{max(seconds):.3f})"


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


def model_table(rows: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "| model | epoch, Adam (s) | epoch, MG (s) | MG / Adam | validation pass (s) | peak RSS MB "
        "| MMRec epoch | target epoch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model in [*MULTIMODAL, *GENERAL]:
        adam, mg, valid = (
            rows.get(f"{model}-{kind}") for kind in ("adam-lightning", "mg-lightning", "adam-valid")
        )
        if valid and model in UNTRAINED:
            lines.append(
                f"| {model} | no training | no training | | {fmt(valid['times'])} | {valid['maxrss_mb']:.0f} | | |"
            )
            continue
        if not (adam and mg and valid):
            continue
        ratio = statistics.median(mg["times"]) / statistics.median(adam["times"])
        peak = max(row["maxrss_mb"] for row in (adam, mg, valid))
        mmrec = MODEL_TARGETS.get(model)
        reference = (f"{mmrec:.2f} s", f"<= {mmrec / 2:.2f} s") if mmrec else ("", "")
        lines.append(
            f"| {model} | {fmt(adam['times'])} | {fmt(mg['times'])} | {ratio:.2f} | {fmt(valid['times'])} "
            f"| {peak:.0f} | {reference[0]} | {reference[1]} |"
        )
    lines.append(
        f"\nValidation pass target: <= {MMREC_TIKTOK_VALID / 2:.2f} s (MMRec about {MMREC_TIKTOK_VALID} s); "
        "MG / Adam target: close to 1 + 1/beta = 1.33 (MMRec's MG release: 1.24-1.46)."
    )
    return lines


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


def machine_line(threads: int, load: tuple[float, float]) -> str:
    models = [
        line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")
    ]
    cpu = models[0].split(":", 1)[1].strip() if models else platform.processor()
    command = " ".join([".venv/bin/python scripts/bench.py", *sys.argv[1:]])
    return (
        f"{datetime.date.today().isoformat()}, `{command}`: {cpu}, nproc {os.cpu_count()}, torch "
        f"{torch.__version__} ({threads} threads), lightning {lightning.__version__}, Python "
        f"{platform.python_version()}; load average {load[0]:.1f} before, {load[1]:.1f} after."
    )


MODELS_HOW = """Each model is built from its `configs/model/<name>.yaml` defaults (MMRec's), trained on tiktok through
`Trainer.fit` as in the core table (batch 2048, Adam lr 1e-3; MG alpha1 1, alpha2 0.2, beta 3), each cell a
fresh process; per-epoch graph work (FREEDOM's pruning, LATTICE's graph rebuild) is inside the epoch. The
validation pass is as in the core table; the peak is the largest of the model's three processes."""
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--suite", choices=["core", "models", "knn", "usergraph", "all"], default="all")
    parser.add_argument("--data", choices=[*DATASETS, "all"], default="all")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions after one warm-up")
    parser.add_argument(
        "--models", default=",".join([*MULTIMODAL, *GENERAL]), help="models of the `models` suite"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name = args.data
        print(
            json.dumps(child(args.child, name, args.data_dir / DATASETS[name][0], args.repeats, args.threads))
        )
        return
    threads, load = 0, os.getloadavg()[0]
    if load > 0.5 * (os.cpu_count() or 1):
        print(f"warning: load average {load:.1f}; beside other processes, multi-threaded timings can be")
        print("many times slower (OpenMP threads wait for each other): rerun when idle, or use --threads 1")
    suites = ["core", "models", "knn", "usergraph"] if args.suite == "all" else [args.suite]
    if "core" in suites:
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
            write_block(args.out, "core", report(results, threads, (load, os.getloadavg()[0])))
        else:
            print("core: no data set found, nothing measured")
    if "models" in suites:
        folder = args.data_dir / DATASETS["tiktok"][0]
        if (folder / "tiktok.inter").is_file():
            rows: dict[str, dict[str, Any]] = {}
            for model in args.models.split(","):
                kinds = (
                    ("adam-valid",)
                    if model in UNTRAINED
                    else ("adam-lightning", "mg-lightning", "adam-valid")
                )
                for kind in kinds:
                    row = rows[f"{model}-{kind}"] = run_child(f"{model}-{kind}", "tiktok", folder, args)
                    threads = row["threads"]
                    print(
                        f"tiktok  {model:8s} {kind:15s} {fmt(row['times'])} s, peak {row['maxrss_mb']:.0f} MB",
                        flush=True,
                    )
            body = [machine_line(threads, (load, os.getloadavg()[0])), "", *model_table(rows), "", MODELS_HOW]
            write_block(args.out, "models", "\n".join(body))
        else:
            print(f"models: {folder} not found, nothing measured")
    if "knn" in suites:
        rows = {}
        for dim in KNN_SHAPE["dims"]:
            row = rows[f"knn-{dim}"] = run_child(f"knn-{dim}", "tiktok", args.data_dir / "tiktok", args)
            threads = row["threads"]
            print(f"knn {dim}-d: {row['times'][0]:.1f} s, peak {row['maxrss_mb']:.0f} MB", flush=True)
        body = [machine_line(threads, (load, os.getloadavg()[0])), "", *knn_table(rows), "", KNN_HOW]
        write_block(args.out, "knn", "\n".join(body))
    if "usergraph" in suites:
        row = run_child("usergraph", "tiktok", args.data_dir / "tiktok", args)
        print(f"user graph: {row['times'][0]:.1f} s, peak {row['maxrss_mb']:.0f} MB", flush=True)
        body = [machine_line(row["threads"], (load, os.getloadavg()[0])), "", *user_graph_table(row), ""]
        write_block(args.out, "usergraph", "\n".join([*body, USER_GRAPH_HOW]))


if __name__ == "__main__":
    main()
