"""`DictionaryConfig`: everything needed to build (and rebuild from disk) a sparse dictionary
(flat family settings and derived defaults in docs/internals.md)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from sparsecircuits.config import dtype_name, torch_dtype, unknown_keys_error
from sparsecircuits.dictionaries.activations import ACTIVATIONS, Activation, ActivationParams
from sparsecircuits.errors import SparseCircuitsError

KINDS = ("sae", "transcoder", "skip_transcoder", "clt")
# Keys a saved config may hold that set nothing on a dictionary (the TopK kernel choice is
# `kernels.set_topk_selection`; dead latents are counted by `TrainConfig.dead_tokens`): ignored.
IGNORED_KEYS = ("sparse_kernels", "dead_tokens_threshold")


def activation_family(architecture: str) -> type[Activation]:
    """The `Activation` class registered as `architecture`; raises `SparseCircuitsError` if none."""
    if architecture not in ACTIVATIONS:
        raise SparseCircuitsError(
            f"unknown dictionary architecture {architecture!r}; use one of {', '.join(sorted(ACTIVATIONS))}"
        )
    return ACTIVATIONS[architecture]


def setting_names(family: type[Activation]) -> list[str]:
    """The names of `family`'s own settings (fields of its `Params`)."""
    return [f.name for f in dataclasses.fields(family.Params)]


def family_params(family: type[Activation], values: Mapping[str, Any]) -> ActivationParams:
    """`family.Params` from the keys of `values` that are its settings (the others ignored),
    unresolved."""
    own = setting_names(family)
    return family.Params(**{key: value for key, value in values.items() if key in own})


@dataclass(init=False)
class DictionaryConfig:
    """Architecture, kind, shapes, hooks and shared training knobs of one sparse dictionary,
    plus its family's settings in `params` (docs/internals.md).

    Zero / empty values mean "derive it"; `None` is accepted for them too, so YAML `null` works.
    """

    architecture: str = "topk"  # a name in `activations.ACTIVATIONS`
    kind: str = "sae"  # sae | transcoder | skip_transcoder | clt (cross-layer transcoder)
    d_in: int = 0
    d_sae: int = 0
    d_out: int = 0  # 0: d_in
    hook_in: str = ""
    hook_out: str = ""  # "": hook_in
    # cross-layer transcoder: number of layers; hook_in/hook_out hold "{layer}" templates
    n_layers: int = 1
    model_name: str = ""
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0
    decoder_norm: str = ""  # "unit" | "free"; "": the family's default
    decoder_init_norm: float = 0.0  # 0: 1.0 under "unit", 0.1 under "free"
    recon_loss: str = ""  # "fvu" | "mse"; "": the family's default
    aux_k_coefficient: float = 1.0 / 32.0  # weight of the family's auxiliary loss (TopK: AuxK)
    params: ActivationParams = field(default_factory=ActivationParams)
    training: dict[str, Any] = field(default_factory=dict)

    def __init__(self, params: ActivationParams | None = None, **values: Any) -> None:
        """Shared fields from `values`, the family's settings from the rest of `values` over
        `params` (a family's settings, as `dataclasses.replace` passes them)."""
        self.check_keys(values, where="DictionaryConfig")
        for name, f in _SHARED.items():
            setattr(self, name, values[name] if name in values else _default(f))
        family = activation_family(self.architecture)
        given = dataclasses.asdict(params) if params is not None else {}
        self.params = family_params(family, {**given, **values})
        self._resolve(family)

    @classmethod
    def known_keys(cls, architecture: str) -> tuple[list[str], set[str]]:
        """`(valid, accepted)` keys of a config of `architecture`: the shared fields and the
        family's settings; those plus every other family's settings and `IGNORED_KEYS`."""
        valid = [*_SHARED, *setting_names(activation_family(architecture))]
        accepted = set(valid) | set(IGNORED_KEYS)
        accepted.update(name for other in ACTIVATIONS.values() for name in setting_names(other))
        return valid, accepted

    @classmethod
    def check_keys(cls, mapping: Mapping[str, Any], where: str) -> None:
        """Raise `SparseCircuitsError` for an unknown architecture or key in `mapping` (read from
        `where`), naming the valid keys."""
        valid, accepted = cls.known_keys(mapping.get("architecture", cls.architecture))
        unknown = set(mapping) - accepted
        if unknown:
            raise unknown_keys_error(unknown, valid, where)

    def _resolve(self, family: type[Activation]) -> None:
        """Check the values and fill the derived ones (docs/internals.md)."""
        if self.kind not in KINDS:
            raise SparseCircuitsError(
                f"unknown dictionary kind {self.kind!r}; use one of {', '.join(KINDS)}"
            )
        if self.d_in <= 0 or self.d_sae <= 0:
            raise SparseCircuitsError(
                f"d_in and d_sae must be positive (got d_in={self.d_in}, d_sae={self.d_sae})"
            )
        if self.kind == "sae":
            if self.d_out not in (None, 0, self.d_in):
                raise SparseCircuitsError(
                    f"an SAE reconstructs its input: d_out must equal d_in={self.d_in}"
                )
            if self.hook_out not in (None, "", self.hook_in):
                raise SparseCircuitsError(
                    "an SAE reads and writes one hook: leave hook_out unset or equal to hook_in"
                )
        if family.sae_only and self.kind != "sae":
            raise SparseCircuitsError(
                f"architecture {self.architecture!r} is for SAEs only (kind='sae')"
            )
        if self.kind == "clt" and self.n_layers < 1:
            raise SparseCircuitsError(f"n_layers must be >= 1 (got {self.n_layers})")
        self.d_out = self.d_out or self.d_in
        self.hook_out = self.hook_out or self.hook_in
        if self.d_out <= 0:
            raise SparseCircuitsError(f"d_out must be positive (got {self.d_out})")
        self.params.resolve(self)
        self.decoder_norm = self.decoder_norm or family.default_decoder_norm
        if self.decoder_norm not in ("unit", "free"):
            raise SparseCircuitsError(
                f"decoder_norm must be 'unit' or 'free' (got {self.decoder_norm!r})"
            )
        self.recon_loss = self.recon_loss or family.default_recon_loss
        if self.recon_loss not in ("fvu", "mse"):
            raise SparseCircuitsError(
                f"recon_loss must be 'fvu' or 'mse' (got {self.recon_loss!r})"
            )
        if not self.decoder_init_norm:
            self.decoder_init_norm = 1.0 if self.decoder_norm == "unit" else 0.1
        self.dtype = dtype_name(self.dtype)  # cfg.json keeps the canonical name SAELens reads
        if self.aux_k_coefficient < 0:
            raise SparseCircuitsError("aux_k_coefficient must be >= 0")
        if not isinstance(self.training, dict):
            raise SparseCircuitsError(
                "training must be a mapping (the training config saved with the dictionary)"
            )

    def __getattr__(self, name: str) -> Any:
        """A family setting read flat: `cfg.k` is `cfg.params.k`."""
        params = self.__dict__.get("params")
        if params is not None and name in params.__dataclass_fields__:
            return getattr(params, name)
        raise AttributeError(
            f"DictionaryConfig of architecture {self.__dict__.get('architecture')!r} has no "
            f"field or setting {name!r}"
        )

    def __setattr__(self, name: str, value: Any) -> None:
        """A family setting written flat: `cfg.k = 8` sets `cfg.params.k`."""
        params = self.__dict__.get("params")
        if params is None or name in _SHARED or name == "params":
            object.__setattr__(self, name, value)
        elif name in params.__dataclass_fields__:
            setattr(params, name, value)
        else:
            raise AttributeError(
                f"{name!r} is no field of DictionaryConfig and no setting of architecture "
                f"{self.architecture!r}"
            )

    def as_dict(self) -> dict[str, Any]:
        """The config as flat JSON-ready keys, as YAML writes it: the shared fields and the
        family's settings (what `DictionaryConfig(**...)` rebuilds)."""
        out = {name: getattr(self, name) for name in _SHARED if name != "training"}
        out.update(dataclasses.asdict(self.params))
        out["training"] = copy.deepcopy(self.training)
        return out

    @property
    def torch_dtype(self) -> torch.dtype:
        """The `torch.dtype` named by `dtype`."""
        return torch_dtype(self.dtype)

    def layer_hooks(self) -> tuple[list[str], list[str]]:
        """Input and output hook names per layer of a cross-layer transcoder (templates filled with
        `{layer}`; a hook without the placeholder is used for every layer)."""
        layers = range(self.n_layers)
        return [self.hook_in.format(layer=i) for i in layers], [
            self.hook_out.format(layer=i) for i in layers
        ]


# the fields every config has, by name (all but `params`)
_SHARED = {f.name: f for f in dataclasses.fields(DictionaryConfig) if f.name != "params"}


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def hook_layer(hook: str) -> int | None:
    """The layer L of a hook named `blocks.L.…`, else None."""
    parts = hook.split(".")
    if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit():
        return int(parts[1])
    return None


def spans_layers(kind: str) -> bool:
    """Whether a dictionary of `kind` spans several layers (a cross-layer transcoder, whose hooks
    are `{layer}` templates)."""
    return kind == "clt"
