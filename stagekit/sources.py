"""Model sources: where a catalog model's real weights are on this host, and whether that folder is whole.

A host names its models with `--model-dir MODEL=DIR` (repeatable; `scheduler worker`, `scheduler generate`,
`agent probe`) or the environment variable `GFP_MODEL_DIRS` (`sdxl=/models/sdxl,flux-dev=/models/flux`; a flag
wins over the variable for the same model). DIR is one of:
- a diffusers folder, as `DiffusionPipeline.save_pretrained` writes it (`model_index.json`, `tokenizer*/`,
  `text_encoder*/`, `unet/` or `transformer/`, `vae/`, `scheduler/`);
- a Hugging Face cache entry `models--org--name` (its `refs/main` snapshot, or its only one) or a snapshot
  folder `models--org--name/snapshots/<rev>`;
- a Hugging Face cache root (`~/.cache/huggingface/hub`): the entry of the catalog's `weights_repo`.
Each distilled variant (sdxl-lightning, flux-schnell, qwen-image-lightning) is its own model id with its own
folder: its weights differ from its base model's.

`check_folder` reads only file headers (no torch): the pipeline class and every component the catalog expects
for the architecture, each tokenizer, the scheduler config, and each safetensors file's header against its size.
A model with no folder runs on random weights only where that was asked for (`--synthetic`); everything
downstream records `weights=real|synthetic`.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from planner.catalog import ModelSpec, known_model
from stagekit.errors import UnsupportedModelError

ENV_VAR = "GFP_MODEL_DIRS"
"""`MODEL=DIR[,MODEL=DIR...]`: the host's model folders, read by the workers, `scheduler generate` and the agent."""

PIPELINES: dict[str, str] = {
    "sd": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "flux": "FluxPipeline",
    "qwen-image": "QwenImagePipeline",
    "z-image": "ZImagePipeline",
}
"""The diffusers pipeline class a folder of each architecture must declare (model_index.json `_class_name`)."""

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer_config.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin")
MAX_HEADER = 100 * 2**20

Weights = Literal["real", "synthetic"]


class ModelSourceError(UnsupportedModelError):
    """A model's weights are missing or a part of its folder is absent, of another architecture, or corrupt."""


@dataclass(frozen=True)
class ModelSource:
    """One model's weights on this host: a checked folder (real) or none (synthetic, asked for)."""

    model: str
    folder: Path | None

    @property
    def weights(self) -> Weights:
        return "real" if self.folder is not None else "synthetic"


def parse_model_dirs(entries: Iterable[str]) -> dict[str, Path]:
    """`MODEL=DIR` entries (flags, or the comma-separated variable) as a mapping; refuses malformed ones."""
    out: dict[str, Path] = {}
    for raw in entries:
        for entry in (e.strip() for e in raw.split(",")):
            if not entry:
                continue
            model, sep, folder = entry.partition("=")
            if not sep or not model.strip() or not folder.strip():
                raise ModelSourceError(
                    f"model folder {entry!r} is not MODEL=DIR: write it as sdxl=/models/sdxl (--model-dir or {ENV_VAR})"
                )
            out[model.strip()] = Path(folder.strip()).expanduser()
    return out


@dataclass(frozen=True)
class ModelSources:
    """The host's model folders (`--model-dir` over `GFP_MODEL_DIRS`) and whether random weights were asked for."""

    dirs: Mapping[str, Path] = field(default_factory=dict)
    synthetic: bool = False

    @classmethod
    def from_options(
        cls, model_dirs: Sequence[str] = (), *, synthetic: bool = False, env: Mapping[str, str] | None = None
    ) -> ModelSources:
        environ = os.environ if env is None else env
        dirs = parse_model_dirs([environ.get(ENV_VAR, "")])
        dirs.update(parse_model_dirs(model_dirs))
        return cls(dirs, synthetic)

    def source(self, model_id: str) -> ModelSource:
        """The model's checked folder; synthetic only when asked for and no folder is named."""
        spec = known_model(model_id)
        folder = self.dirs.get(model_id)
        if folder is None:
            if self.synthetic:
                return ModelSource(model_id, None)
            named = ", ".join(sorted(self.dirs)) or "none"
            raise ModelSourceError(
                f"no weights for model {model_id!r} on this host (folders named for: {named}): pass "
                f"--model-dir {model_id}=DIR or set {ENV_VAR}={model_id}=DIR (a diffusers folder or a Hugging Face "
                "cache snapshot, see docs/models.md), or --synthetic for random weights (timing only)"
            )
        return ModelSource(model_id, check_folder(spec, folder))


# -- resolving a folder -------------------------------------------------------------------------------------


def resolve_folder(spec: ModelSpec, path: Path) -> Path:
    """The diffusers folder a configured path stands for (itself, a cache entry's snapshot, a cache root's entry)."""
    if not path.exists():
        raise ModelSourceError(f"model {spec.id!r}: folder {path} does not exist (fix --model-dir or {ENV_VAR})")
    if (path / "model_index.json").is_file():
        return path
    repo = (spec.weights_repo or "").split(" ")[0]
    if repo.count("/") == 1 and (path / f"models--{repo.replace('/', '--')}").is_dir():
        path = path / f"models--{repo.replace('/', '--')}"
    snapshots = path / "snapshots"
    if snapshots.is_dir():
        ref = path / "refs" / "main"
        if ref.is_file() and (snapshots / ref.read_text().strip()).is_dir():
            return snapshots / ref.read_text().strip()
        revs = sorted(p for p in snapshots.iterdir() if (p / "model_index.json").is_file())
        if len(revs) == 1:
            return revs[0]
        raise ModelSourceError(
            f"model {spec.id!r}: {snapshots} holds {len(revs)} snapshots with a model_index.json and no refs/main: "
            "name one snapshot folder with --model-dir"
        )
    raise ModelSourceError(
        f"model {spec.id!r}: {path / 'model_index.json'} is missing: {path} is not a diffusers folder "
        "(DiffusionPipeline.save_pretrained writes one) nor a Hugging Face cache entry"
    )


# -- checking its layout ------------------------------------------------------------------------------------


def expected_parts(spec: ModelSpec) -> dict[str, str]:
    """Subfolder -> the class model_index.json must name for it: the catalog's components and their tokenizers."""
    parts: dict[str, str] = {}
    for stage in spec.stages:
        for comp in stage.components:
            parts[comp.name] = comp.class_name
            if comp.name.startswith("text_encoder"):
                parts[comp.name.replace("text_encoder", "tokenizer")] = ""
    parts["scheduler"] = ""
    return parts


def check_folder(spec: ModelSpec, path: Path) -> Path:
    """The resolved folder if every part the catalog expects is there and readable; else ModelSourceError naming
    each missing or broken part and its path."""
    folder = resolve_folder(spec, path)
    index_path = folder / "model_index.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelSourceError(f"model {spec.id!r}: cannot read {index_path}: {exc}") from exc
    want = PIPELINES.get(spec.architecture)
    have = index.get("_class_name")
    problems: list[str] = []
    if want is not None and have != want:
        problems.append(
            f"{index_path} declares {have!r}, but model {spec.id!r} (architecture {spec.architecture}) needs a "
            f"{want} folder: wrong architecture for this model id"
        )
    for part, cls in expected_parts(spec).items():
        problems += _check_part(folder, part, cls, index.get(part))
    if problems:
        raise ModelSourceError(f"model {spec.id!r} folder {folder}: " + "; ".join(problems))
    return folder


def _check_part(folder: Path, part: str, cls: str, declared: object) -> list[str]:
    sub = folder / part
    if not sub.is_dir():
        return [f"part {part!r} is missing: no folder {sub}"]
    if cls and isinstance(declared, list) and len(declared) == 2 and declared[1] != cls:
        return [f"part {part!r} is a {declared[1]} in model_index.json, the catalog expects {cls}: wrong architecture"]
    if part.startswith("tokenizer"):
        if not any((sub / f).is_file() for f in TOKENIZER_FILES):
            return [f"part {part!r} ({sub}) has no tokenizer files ({', '.join(TOKENIZER_FILES)})"]
        return []
    if part == "scheduler":
        return (
            []
            if (sub / "scheduler_config.json").is_file()
            else [f"part 'scheduler': {sub} has no scheduler_config.json"]
        )
    if not (sub / "config.json").is_file():
        return [f"part {part!r}: {sub / 'config.json'} is missing"]
    weights = sorted(p for p in sub.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if not weights:
        return [f"part {part!r}: {sub} has no weights (*.safetensors or *.bin)"]
    return [f"part {part!r}: {why}" for p in weights if p.suffix == ".safetensors" and (why := safetensors_problem(p))]


def safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file cannot be whole (header unreadable, or tensors past its end); None if it can."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"corrupt safetensors file {path}: {size} bytes, shorter than its header length"
            (n,) = struct.unpack("<Q", head)
            if n > min(MAX_HEADER, size - 8):
                return f"corrupt safetensors file {path}: header length {n} does not fit its {size} bytes"
            header = json.loads(fh.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return f"corrupt safetensors file {path}: unreadable header ({exc})"
    if not isinstance(header, dict):
        return f"corrupt safetensors file {path}: its header is not a table of tensors"
    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    if 8 + n + max(ends, default=0) > size:
        return f"corrupt safetensors file {path}: truncated ({size} bytes, its tensors need {8 + n + max(ends)})"
    return None
