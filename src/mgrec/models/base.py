"""`Recommender`: the LightningModule every model subclasses.

A subclass defines `loss(batch) -> Tensor` for a training batch `(users, pos_items, neg_items)` and
`score(users) -> Tensor[len(users), n_items]` (higher is better, training items not masked). It may
override `on_train_epoch_start` for per-epoch graph work (call `super()` first).

The base class owns the rest:
- manual optimisation, so `mgrec.optim.MirrorGradient` decides per batch whether to take a plain step or a
  mirror step; gradient clipping (`grad_clip_norm`) applies right before the final step;
- full-ranking evaluation: score a batch of users, mask their training items, top-K, update `TopKMetrics`;
- sparse graphs registered with `register_graph`, kept as plain attributes (not buffers: a sparse buffer
  breaks DDP start-up) and moved with the module by `.to()`;
- `cached(key, fn)`: representations computed once per evaluation pass from the current weights and
  recomputed fresh outside evaluation (never a stale copy from the last training forward).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule
from torch import Tensor
from typing_extensions import override

from mgrec.data.interactions import InteractionData, fingerprint
from mgrec.metrics import TopKMetrics, topk_hits
from mgrec.optim import MirrorGradient

EvalBatch = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


class Recommender(LightningModule):
    """Base class of all recommenders; see the module docstring for the contract."""

    monitor: str = "val/recall@20"
    # False for a model with nothing to learn (ItemKNNCBF): the training task then skips fitting
    requires_training: bool = True

    def __init__(
        self,
        data: InteractionData | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        grad_clip_norm: float | None = None,
        topk: Sequence[int] = (5, 10, 20, 50),
        metrics: Sequence[str] = ("recall", "ndcg", "precision", "map"),
        n_users: int | None = None,
        n_items: int | None = None,
    ) -> None:
        super().__init__()
        if data is None and (n_users is None or n_items is None):
            raise ValueError(f"{type(self).__name__} needs `data` (an InteractionData) to be built")
        self.automatic_optimization = False
        self.n_users = data.n_users if data is not None else int(n_users)
        self.n_items = data.n_items if data is not None else int(n_items)
        self.data = data
        self.save_hyperparameters(ignore=["data"], logger=False)
        self.hparams["n_users"], self.hparams["n_items"] = self.n_users, self.n_items
        self.val_metrics = TopKMetrics(topk, metrics, prefix="val/")
        self.test_metrics = TopKMetrics(topk, metrics, prefix="test/")
        self.best_monitor = float("-inf")
        self._graphs: list[str] = []
        self._cache: dict[str, Any] | None = None
        self._split_fingerprint = fingerprint(data, features=False) if data is not None else None

    # ----------------------------------------------------------------- the model contract
    def loss(self, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        raise NotImplementedError

    def score(self, users: Tensor) -> Tensor:
        raise NotImplementedError

    def recommend(
        self, users: Tensor | Sequence[int], k: int, return_scores: bool = False, batch_size: int = 1024
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Top-k item ids [len(users), k] per user, best first, on the model's device; training items (and
        items scored -inf) excluded; a row ends with item -1 (score -inf) where fewer than k items remain.
        `return_scores=True` gives (items, scores). See `mgrec.predict.top_k`."""
        from mgrec.predict import top_k  # a local import: mgrec.predict imports this module

        items, scores = top_k(self, users, k, batch_size=batch_size)
        return (items, scores) if return_scores else items

    # ----------------------------------------------------------------- graphs and caches
    def register_graph(self, name: str, graph: Tensor) -> None:
        """Keep a (sparse) tensor as a plain attribute that follows the module's device."""
        setattr(self, name, graph)
        if name not in self._graphs:
            self._graphs.append(name)

    @override
    def _apply(self, fn: Callable[[Tensor], Tensor], *args: Any, **kwargs: Any) -> Recommender:
        super()._apply(fn, *args, **kwargs)
        for name in self._graphs:
            setattr(self, name, fn(getattr(self, name)))
        return self

    def cached(self, key: str, compute: Callable[[], Any]) -> Any:
        """`compute()` once per evaluation pass; fresh on every call outside one."""
        if self._cache is None:
            return compute()
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    # ----------------------------------------------------------------- optimisation
    @override
    def configure_optimizers(self) -> Any:
        factory = self.hparams.get("optimizer") or torch.optim.Adam
        optimizer = factory(self.parameters())
        scheduler = self.hparams.get("scheduler")
        if scheduler is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler(optimizer), "interval": "epoch"},
        }

    @property
    def mirror(self) -> MirrorGradient | None:
        optimizer = self.optimizers(use_pl_optimizer=False)
        return optimizer if isinstance(optimizer, MirrorGradient) else None

    @override
    def on_train_epoch_start(self) -> None:
        if self.mirror is not None:
            self.mirror.reset_schedule()

    @override
    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        optimizer = self.optimizers()

        def closure() -> Tensor:
            optimizer.zero_grad()
            loss = self.loss(batch)
            self.manual_backward(loss)
            return loss

        if self.mirror is not None:
            is_mirror_step = self.mirror.is_mirror_step
            loss = optimizer.step(closure=closure, clip_fn=self._clip)
            if is_mirror_step:
                self.log(
                    "train/mirror_loss",
                    self.mirror.last_mirror_loss.detach(),
                    on_step=False,
                    on_epoch=True,
                    batch_size=len(batch[0]),
                    sync_dist=True,
                )
        else:

            def clipped_closure() -> Tensor:
                loss = closure()
                self._clip()
                return loss

            loss = optimizer.step(closure=clipped_closure)
        self.log(
            "train/loss",
            loss.detach(),
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(batch[0]),
            sync_dist=True,
        )
        return loss

    def _clip(self) -> None:
        if self.hparams.get("grad_clip_norm"):
            self.clip_gradients(
                self.optimizers(),
                gradient_clip_val=self.hparams.grad_clip_norm,
                gradient_clip_algorithm="norm",
            )

    @override
    def on_train_epoch_end(self) -> None:
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

    # ----------------------------------------------------------------- evaluation
    def _rank(self, batch: EvalBatch, metric: TopKMetrics) -> None:
        users, mask_rows, mask_items, truth_rows, truth_items = batch
        scores = self.score(users)
        scores[mask_rows, mask_items] = float("-inf")
        k = min(max(metric.ks), self.n_items)
        hits = topk_hits(scores.topk(k, dim=1).indices, truth_rows, truth_items, self.n_items)
        if k < max(metric.ks):  # fewer items than the largest K: the missing ranks are misses
            hits = torch.cat([hits, hits.new_zeros(len(users), max(metric.ks) - k)], dim=1)
        metric.update(hits, torch.bincount(truth_rows, minlength=len(users)))

    def _start_eval(self) -> None:
        self._cache = {}

    def _end_eval(self, metric: TopKMetrics) -> dict[str, Tensor]:
        """The pass's metrics, reduced over ranks by torchmetrics (the same values on every rank)."""
        self._cache = None
        values = metric.compute()
        metric.reset()
        return values

    @override
    def on_validation_epoch_start(self) -> None:
        self._start_eval()

    @override
    def validation_step(self, batch: EvalBatch, batch_idx: int) -> None:
        self._rank(batch, self.val_metrics)

    @override
    def on_validation_epoch_end(self) -> None:
        values = self._end_eval(self.val_metrics)
        # already reduced and equal on every rank: sync_dist averages equal values (exact), silencing
        # Lightning's advice to sync
        self.log_dict(values, prog_bar=False, sync_dist=True)
        if self.monitor in values and not self.trainer.sanity_checking:
            self.best_monitor = max(self.best_monitor, float(values[self.monitor]))
            self.log(f"{self.monitor}_best", self.best_monitor, prog_bar=True, sync_dist=True)

    @override
    def on_test_epoch_start(self) -> None:
        self._start_eval()

    @override
    def test_step(self, batch: EvalBatch, batch_idx: int) -> None:
        self._rank(batch, self.test_metrics)

    @override
    def on_test_epoch_end(self) -> None:
        self.log_dict(self._end_eval(self.test_metrics), sync_dist=True)

    # ----------------------------------------------------------------- checkpoints
    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["mgrec"] = {
            "best_monitor": self.best_monitor,
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(),
            "data_fingerprint": self._split_fingerprint,
        }

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("mgrec", {})
        self.best_monitor = state.get("best_monitor", self.best_monitor)
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])
            np.random.set_state(state["numpy_rng"])
        stored = state.get("data_fingerprint")
        if stored and self._split_fingerprint and stored != self._split_fingerprint:
            raise RuntimeError(
                f"the checkpoint was trained on interactions with fingerprint {stored}, but the data "
                f"given has {self._split_fingerprint}: pass the same data set"
            )
