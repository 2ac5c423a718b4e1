"""The registry of model types, and :func:`load`, which detects a checkpoint folder's type.

Adding a model means adding one :class:`ModelEntry` to :data:`REGISTRY`; ``omicskern.load``,
``from_hf``, the CLI and the pipelines all go through it. Each model class decides from the folder's
``config.json`` (``model_type`` / ``architectures`` / ``auto_map``, HyenaDNA's ``layer._name_``)
and files whether the folder is its own (:meth:`~omicskern.models.base.OmicsModel.matches`).

Example:
    >>> import omicskern
    >>> model = omicskern.load("DNABERT-2-117M/")            # doctest: +SKIP
    >>> tok = model.get_tokenizer()                           # doctest: +SKIP
    >>> out = model.embed(tok.encode_batch(["ACGTAGCATCG"], padding=False))   # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from omicskern.errors import CheckpointError


@dataclass(frozen=True)
class ModelEntry:
    """One model type: its registry name, the class (imported on first use) and what it is."""

    name: str
    module: str
    class_name: str
    description: str

    @property
    def cls(self):
        return getattr(importlib.import_module(self.module), self.class_name)


REGISTRY: dict[str, ModelEntry] = {e.name: e for e in (
    ModelEntry("dnabert2", "omicskern.models.dnabert2", "DNABERT2",
               "DNABERT-2 (zhihan1996/DNABERT-2-117M): BERT + ALiBi, BPE tokenizer.json"),
    ModelEntry("nucleotide_transformer", "omicskern.models.nucleotide_transformer", "NucleotideTransformer",
               "Nucleotide Transformer v1 / v2 (InstaDeepAI): ESM encoder, 6-mer tokenizer"),
    ModelEntry("hyenadna", "omicskern.models.hyenadna", "HyenaDNA",
               "HyenaDNA (LongSafari/hyenadna-*): causal Hyena long convolutions, char tokenizer"),
    ModelEntry("geneformer", "omicskern.models.geneformer", "Geneformer",
               "Geneformer V1 / V2 (ctheodoris/Geneformer): BERT on rank-value cell tokens"),
    ModelEntry("scgpt", "omicskern.models.scgpt", "ScGPT",
               "scGPT (bowang-lab/scGPT): args.json + vocab.json + best_model.pt, binned-value cell tokens"),
    ModelEntry("caduceus", "omicskern.models.caduceus", "Caduceus",
               "Caduceus-Ph / -PS (kuleshov-group/caduceus-*): BiMamba, RC-equivariant (PS), char tokenizer"),
)}


def model_types() -> list[str]:
    return list(REGISTRY)


def _supported() -> str:
    return "; ".join(f"{e.name}: {e.description}" for e in REGISTRY.values())


def detect(path: str | Path) -> ModelEntry:
    """The registry entry of the checkpoint folder ``path`` (or ``"builtin[:NAME]"``); a clear
    error when none fits."""
    folder = _check_folder(_builtin_or(path))
    cfg_file = folder / "config.json"
    files = sorted(p.name for p in folder.iterdir())
    shown = ", ".join(files[:20]) + (f", ... ({len(files) - 20} more)" if len(files) > 20 else "")
    if not cfg_file.is_file() and (folder / "args.json").is_file():
        cfg_file = folder / "args.json"  # scGPT's released folders: args.json + vocab.json + best_model.pt
    if not cfg_file.is_file():
        raise CheckpointError(f"{folder}: no config.json (nor scGPT's args.json), so the model type is unknown (found: {shown or 'nothing'}). "
                              f"Supported: {_supported()}")
    try:
        config = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_file}: not valid JSON ({e})") from None
    hits = [e for e in REGISTRY.values() if e.cls.matches(config, folder)]
    if len(hits) == 1:
        return hits[0]
    seen = {k: config.get(k) for k in ("model_type", "architectures", "auto_map") if config.get(k)}
    if isinstance(config.get("layer"), dict):
        seen["layer._name_"] = config["layer"].get("_name_")
    if len(hits) > 1:
        raise CheckpointError(f"{folder}: config.json fits several model types ({', '.join(e.name for e in hits)}); "
                              f"load it with the class you mean, e.g. {hits[0].class_name}.from_pretrained(...)")
    hint = ""
    if config.get("model_type") == "bert":
        hint = (" A plain BERT config is Geneformer's only next to its dictionaries: put token_dictionary*.pkl "
                "(and gene_median_dictionary*.pkl) in the folder, or load it with Geneformer.from_pretrained(...).")
    raise CheckpointError(f"{folder}: not a model type omicskern knows (config.json has {seen or 'no model_type'}; "
                          f"files: {shown}).{hint} Supported: {_supported()}")


def _check_folder(path) -> Path:
    folder = Path(path).expanduser()
    if folder.is_dir():
        return folder
    if folder.exists():
        raise CheckpointError(f"{folder} is a file; omicskern.load takes a checkpoint folder (config.json + weights)")
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", str(path)):
        local = str(path).split("/")[-1]
        raise CheckpointError(
            f"{path!r} is not a local folder. omicskern loads local checkpoint folders and never downloads; "
            f"if this is a Hugging Face hub id, download it first, e.g. "
            f"`huggingface-cli download {path} --local-dir {local}` (or huggingface_hub.snapshot_download), "
            f"then omicskern.load({local!r})")
    raise CheckpointError(f"checkpoint folder not found: {folder}")


def load(path: str | Path, *, device=None, dtype=None):
    """Load a local checkpoint folder as the omicskern model of its type.

    The type comes from the folder (:func:`detect`); the returned model's ``get_tokenizer()``
    completes the pair. Loading is strict (see ``from_pretrained``).

    Args:
        path: a checkpoint folder (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``),
            or ``"builtin"`` / ``"builtin:NAME"`` for a model shipped in the package
            (:mod:`omicskern.models.builtin`).
        device: e.g. ``"cuda"``; ``None`` keeps the CPU.
        dtype: ``torch.float32``/``"bf16"``/...; ``None`` keeps the checkpoint's.

    Example:
        >>> model = omicskern.load("nucleotide-transformer-v2-50m-multi-species/")   # doctest: +SKIP
        >>> model.embed(model.get_tokenizer().encode_batch(["ACGTAC" * 20], padding=False)).pooled.shape
    """
    path = _builtin_or(path)
    entry = detect(path)
    return entry.cls.from_pretrained(path, device=device, dtype=dtype)


def _builtin_or(path):
    from omicskern.models.builtin import resolve

    return resolve(path) or path


def entry_of(model) -> ModelEntry:
    """The registry entry of a model instance or class."""
    cls = model if isinstance(model, type) else type(model)
    for e in REGISTRY.values():
        if e.class_name == cls.__name__ and e.module == cls.__module__:
            return e
    raise KeyError(f"{cls.__name__} is not in the model registry")


__all__ = ["REGISTRY", "ModelEntry", "load", "detect", "model_types", "entry_of"]
