"""Perturbed item features: the Mirror Gradient paper's two robustness risks, as reproducible transforms.

`perturb_features(modalities, kind, strength, seed, modalities_to_perturb=None)` returns new feature tables
(the input is never modified); every draw is a function of `seed` alone, so a perturbation is the same on
every machine, rank and call. The kinds:

- ``none``: the features unchanged (`strength` is ignored).
- ``gaussian``: additive zero-mean Gaussian noise at a signal-to-noise ratio of `strength` dB (lower is
  noisier; 0 dB = noise as strong as the signal; ``inf`` = no noise). Per modality, the signal power is
  the mean over items and dimensions of the squared *centred* features (each dimension's mean over items
  subtracted: a constant offset shared by all items tells no item apart), the noise is i.i.d. N(0, s^2)
  with s^2 = signal power / 10^(strength / 10). The noise of a modality depends on the seed and the
  modality's name only.
- ``replace``: a share `strength` in [0, 1] of the items (round(strength x n_items), Python's `round`),
  chosen at random, get another item's features: the chosen items, in random order, pass their rows
  along one cycle, so every chosen item gets a row of a different item and no chosen item's row is lost
  (one chosen item gets a random other item's row). The same items and sources in every modality.
- ``drop``: the feature rows of a share `strength` in [0, 1] of the items (chosen at random, the same in
  every modality) are zeroed; 1.0 zeroes the whole modality. Name the modality to drop with
  `modalities_to_perturb` (default: every modality).

`modalities_to_perturb` (a name or a list; default every modality) limits any kind to those modalities.

Integration: `perturb_data(data, spec)` (a new `InteractionData`; used by `RecDataModule(noise=...)` for
training-time noise and by eval.py before the model is built, so graphs derived from the features are
rebuilt from the perturbed ones) and `apply_to_model(model, spec)` (trainable feature tables restored from a
checkpoint get the same perturbation). A spec is a `Perturbation` or a mapping with keys `kind`, `strength`,
`seed`, `modalities` (configs/perturb/*.yaml, `data.noise`).
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from mgrec.data.interactions import InteractionData

KINDS = ("none", "gaussian", "replace", "drop")


def _generator(seed: int, *tags: str) -> torch.Generator:
    """A CPU generator seeded from `seed` and `tags` (stable across processes: no Python `hash`)."""
    state = np.random.SeedSequence([int(seed), *(zlib.crc32(tag.encode()) for tag in tags)])
    return torch.Generator().manual_seed(int(state.generate_state(1, dtype=np.uint64)[0] >> 1))


def _check(kind: str, strength: float, seed: int) -> float:
    if kind not in KINDS:
        raise ValueError(f"unknown perturbation kind {kind!r}; choose one of {', '.join(KINDS)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"perturbation seed must be a non-negative integer, got {seed!r}")
    try:
        strength = float(strength)
    except (TypeError, ValueError):
        raise ValueError(f"perturbation strength must be a number, got {strength!r}") from None
    if kind == "gaussian" and (math.isnan(strength) or strength == -math.inf):
        raise ValueError(f"gaussian strength is an SNR in dB: a number or inf, got {strength}")
    if kind in ("replace", "drop") and not 0.0 <= strength <= 1.0:
        raise ValueError(f"{kind} strength is a share of the items and must lie in [0, 1], got {strength}")
    return strength


def _selected(modalities: Mapping[str, Tensor], chosen: str | Iterable[str] | None) -> list[str]:
    if chosen is None:
        return list(modalities)
    names = [chosen] if isinstance(chosen, str) else list(chosen)
    unknown = [name for name in names if name not in modalities]
    if unknown:
        raise ValueError(
            f"unknown modalit{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))} to perturb; "
            f"the features have {', '.join(map(repr, modalities)) or 'none'}"
        )
    if not names:
        raise ValueError("modalities_to_perturb is empty: name at least one modality, or null for all")
    return names


def _n_items(modalities: Mapping[str, Tensor], names: Sequence[str]) -> int:
    rows = {name: int(modalities[name].shape[0]) for name in names}
    if len(set(rows.values())) > 1:
        raise ValueError(f"feature tables must have one row per item; their row counts differ: {rows}")
    return next(iter(rows.values()))


def item_choice(n_items: int, share: float, seed: int, kind: str) -> Tensor:
    """The items `kind` perturbs: round(share x n_items) distinct ids in random order (seeded)."""
    count = round(share * n_items)
    return torch.randperm(n_items, generator=_generator(seed, kind, "items"))[:count]


def replacement_sources(chosen: Tensor, n_items: int, seed: int) -> Tensor:
    """For each chosen item, the item whose features it gets: the next one along a cycle through the
    chosen items (never itself); a single chosen item gets a random other item."""
    if len(chosen) >= 2:
        return chosen.roll(1)
    if len(chosen) == 1 and n_items >= 2:
        offset = torch.randint(1, n_items, (1,), generator=_generator(seed, "replace", "source"))
        return (chosen + offset) % n_items
    return chosen.clone()


def _amplitude_ratio(snr_db: float) -> float:
    """Noise standard deviation over the signal's RMS for an SNR in dB: 10^(-snr / 20)."""
    try:
        return 10.0 ** (-snr_db / 20.0)
    except OverflowError:
        raise ValueError(f"gaussian SNR {snr_db} dB is too low to represent") from None


def signal_power(features: Tensor) -> float:
    """Mean over items and dimensions of the squared centred features (float64)."""
    if features.numel() == 0:
        return 0.0
    total = 0.0
    for block in features.detach().split(256, dim=1):  # float64 a few columns at a time: O(n x 256) memory
        values = block.double()
        total += float((values - values.mean(dim=0, keepdim=True)).square().sum())
    return total / features.numel()


def perturb_features(
    modalities: Mapping[str, Tensor],
    kind: str,
    strength: float,
    seed: int,
    modalities_to_perturb: str | Iterable[str] | None = None,
) -> dict[str, Tensor]:
    """New feature tables `{name: [n_items, dim]}` with the perturbation `kind` at `strength` (see the
    module docstring); modalities not perturbed are passed through as the same tensor objects."""
    strength = _check(kind, strength, seed)
    names = _selected(modalities, modalities_to_perturb)
    out = dict(modalities)
    if kind == "none" or not names:
        return out
    n_items = _n_items(modalities, names)
    if kind == "gaussian":
        for name in names:
            features = modalities[name]
            scale = math.sqrt(signal_power(features)) * _amplitude_ratio(strength)
            noise = torch.randn(features.shape, generator=_generator(seed, "gaussian", name))
            out[name] = features + noise.mul_(scale).to(features.device, features.dtype)
        return out
    chosen = item_choice(n_items, strength, seed, kind)
    if kind == "replace":
        sources = replacement_sources(chosen, n_items, seed)
        for name in names:
            features = modalities[name].clone()
            device_chosen = chosen.to(features.device)
            features[device_chosen] = modalities[name][sources.to(features.device)]
            out[name] = features
    else:  # drop
        for name in names:
            features = modalities[name].clone()
            features[chosen.to(features.device)] = 0
            out[name] = features
    return out


@dataclasses.dataclass(frozen=True)
class Perturbation:
    """A perturbation spec: `kind`, `strength`, `seed` and the `modalities` it touches (None: all)."""

    kind: str = "none"
    strength: float = 0.0
    seed: int = 0
    modalities: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "strength", _check(self.kind, self.strength, self.seed))
        object.__setattr__(self, "seed", int(self.seed))
        if self.modalities is not None:
            names = (self.modalities,) if isinstance(self.modalities, str) else tuple(self.modalities)
            object.__setattr__(self, "modalities", tuple(str(name) for name in names))

    @classmethod
    def from_config(cls, spec: Perturbation | Mapping[str, Any] | None) -> Perturbation:
        """From a mapping (`perturb` or `data.noise` config; missing keys take the defaults) or None."""
        if spec is None:
            return cls()
        if isinstance(spec, Perturbation):
            return spec
        unknown = set(spec) - {field.name for field in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(
                f"unknown perturbation key(s) {sorted(unknown)}; expected kind, strength, seed, modalities"
            )
        values = {key: value for key, value in spec.items() if value is not None}
        if values.get("modalities") is not None and not isinstance(values["modalities"], str):
            values["modalities"] = tuple(values["modalities"])
        return cls(**values)

    @property
    def active(self) -> bool:
        return self.kind != "none"

    def apply(self, modalities: Mapping[str, Tensor], lenient: bool = False) -> dict[str, Tensor]:
        """`perturb_features` with this spec; `lenient` skips named modalities the tables lack."""
        names = self.modalities
        if lenient and names is not None:
            names = tuple(name for name in names if name in modalities)
            if not names:
                return dict(modalities)
        return perturb_features(modalities, self.kind, self.strength, self.seed, names)

    def record(self, prefix: str = "perturb/") -> dict[str, Any]:
        """Flat entries for metrics.json, e.g. `perturb/kind`, `perturb/strength`, `perturb/seed`."""
        return {
            f"{prefix}kind": self.kind,
            f"{prefix}strength": self.strength,
            f"{prefix}seed": self.seed,
            f"{prefix}modalities": "all" if self.modalities is None else ",".join(self.modalities),
        }


def non_null(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """`mapping` without its None values, recursively (eval.py's `data.*` overrides: null = the run's own,
    so `data.noise.kind=none` overrides one key of the run's `data.noise` and leaves the rest)."""
    return {
        key: non_null(value) if isinstance(value, Mapping) else value
        for key, value in mapping.items()
        if value is not None
    }


def perturb_data(data: InteractionData, spec: Perturbation | Mapping[str, Any] | None) -> InteractionData:
    """`data` with perturbed modalities: a new `InteractionData` (fingerprint recomputed), or `data` itself
    for kind none. The interactions are shared, not copied."""
    perturbation = Perturbation.from_config(spec)
    if not perturbation.active:
        return data
    modalities = perturbation.apply(data.modalities)
    return dataclasses.replace(data, modalities=modalities, fingerprint="")


@torch.no_grad()
def apply_to_model(model: torch.nn.Module, spec: Perturbation | Mapping[str, Any] | None) -> list[str]:
    """Perturb, in place, the trainable feature tables (`ModalityFeatures(trainable=True)`, restored from a
    checkpoint) of `model` with the same perturbation as the data; returns the names perturbed as
    `<module path>.<modality>`. Fixed feature tables are rebuilt from the (perturbed) data and left alone."""
    from mgrec.models.multimodal import ModalityFeatures

    perturbation = Perturbation.from_config(spec)
    done: list[str] = []
    if not perturbation.active:
        return done
    for path, module in model.named_modules():
        if not isinstance(module, ModalityFeatures) or not module.trainable:
            continue
        tables = dict(module.items())
        for name, value in perturbation.apply(tables, lenient=True).items():
            if value is not tables[name]:
                tables[name].copy_(value)
                done.append(f"{path}.{name}" if path else name)
    return done
