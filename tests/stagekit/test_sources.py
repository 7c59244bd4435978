"""Model sources: a catalog id resolves to a checked folder (diffusers layout or Hugging Face cache), and every
missing or broken part is named with its path; random weights only when asked for."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from planner.catalog import known_model
from stagekit.sources import ENV_VAR, ModelSourceError, ModelSources, check_folder, parse_model_dirs
from tests.models.tiny_folders import TinyFolders, copy_folder

pytest.importorskip("torch")


def test_flags_override_the_environment_variable(tmp_path: Path) -> None:
    env = {ENV_VAR: f"sdxl={tmp_path / 'env-sdxl'}, sd15={tmp_path / 'env-sd15'}"}
    sources = ModelSources.from_options([f"sdxl={tmp_path / 'flag-sdxl'}"], env=env)
    assert sources.dirs == {"sdxl": tmp_path / "flag-sdxl", "sd15": tmp_path / "env-sd15"}


@pytest.mark.parametrize("entry", ["sdxl", "=/models/x", "sdxl=", "sdxl /models"])
def test_a_malformed_entry_is_refused_with_the_form_to_use(entry: str) -> None:
    with pytest.raises(ModelSourceError, match="is not MODEL=DIR"):
        parse_model_dirs([entry])


def test_no_folder_means_no_weights_unless_synthetic_is_asked_for() -> None:
    with pytest.raises(ModelSourceError, match=r"no weights for model 'sdxl'.*--model-dir sdxl=DIR.*--synthetic"):
        ModelSources({}).source("sdxl")
    source = ModelSources({}, synthetic=True).source("sdxl")
    assert (source.folder, source.weights) == (None, "synthetic")


def test_a_folder_and_a_hugging_face_cache_resolve_to_the_same_snapshot(
    tiny_model_dirs: TinyFolders, tmp_path: Path
) -> None:
    folder = tiny_model_dirs["sd15"]
    assert ModelSources({"sd15": folder}).source("sd15").folder == folder
    # ~/.cache/huggingface/hub/models--org--name/{refs/main, snapshots/<rev>/...}: the entry, its snapshot, the root
    repo = known_model("sd15").weights_repo
    entry = tmp_path / "hub" / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, entry / "snapshots" / "abc123")
    shutil.copytree(folder, entry / "snapshots" / "old456")
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text("abc123\n")
    want = entry / "snapshots" / "abc123"
    for given in (entry, want, tmp_path / "hub"):
        source = ModelSources({"sd15": given}).source("sd15")
        assert (source.folder, source.weights) == (want, "real")
    (entry / "refs" / "main").unlink()
    with pytest.raises(ModelSourceError, match="2 snapshots"):
        ModelSources({"sd15": entry}).source("sd15")


def test_a_missing_folder_or_index_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match=re.escape(f"folder {tmp_path / 'nope'} does not exist")):
        ModelSources({"sdxl": tmp_path / "nope"}).source("sdxl")
    with pytest.raises(ModelSourceError, match=r"model_index\.json is missing"):
        ModelSources({"sdxl": tmp_path}).source("sdxl")


def test_a_missing_tokenizer_names_its_path_and_part(tiny_model_dirs: TinyFolders, tmp_path: Path) -> None:
    folder = copy_folder(tiny_model_dirs["flux-dev"], tmp_path / "flux")
    shutil.rmtree(folder / "tokenizer_2")
    with pytest.raises(ModelSourceError) as err:
        check_folder(known_model("flux-dev"), folder)
    assert f"part 'tokenizer_2' is missing: no folder {folder / 'tokenizer_2'}" in str(err.value)


def test_a_folder_of_another_architecture_is_refused(tiny_model_dirs: TinyFolders, tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError) as err:
        check_folder(known_model("sdxl"), tiny_model_dirs["sd15"])
    text = str(err.value)
    assert "declares 'StableDiffusionPipeline'" in text
    assert "needs a StableDiffusionXLPipeline folder: wrong architecture" in text
    assert "part 'text_encoder_2' is missing" in text
    # a component of another class under the right name (a Flux VAE swapped for a transformer, say)
    folder = copy_folder(tiny_model_dirs["sd15"], tmp_path / "sd15")
    index = json.loads((folder / "model_index.json").read_text())
    index["unet"] = ["diffusers", "FluxTransformer2DModel"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(
        ModelSourceError, match=r"part 'unet' is a FluxTransformer2DModel .* expects UNet2DConditionModel"
    ):
        check_folder(known_model("sd15"), folder)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_corrupt_safetensors_file_names_its_path(tiny_model_dirs: TinyFolders, tmp_path: Path, damage: str) -> None:
    folder = copy_folder(tiny_model_dirs["sd15"], tmp_path / "sd15")
    weights = next((folder / "vae").glob("*.safetensors"))
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\xff" * 64, "empty": b""}[damage])
    with pytest.raises(ModelSourceError) as err:
        ModelSources({"sd15": folder}).source("sd15")
    assert f"part 'vae': corrupt safetensors file {weights}" in str(err.value)


def test_no_weights_file_is_named(tiny_model_dirs: TinyFolders, tmp_path: Path) -> None:
    folder = copy_folder(tiny_model_dirs["sd15"], tmp_path / "sd15")
    for f in (folder / "text_encoder").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ModelSourceError, match=r"part 'text_encoder': .* has no weights \(\*.safetensors or \*.bin\)"):
        check_folder(known_model("sd15"), folder)
