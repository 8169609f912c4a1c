"""CLIP adapter: a toy open_clip CLIP saved as a state-dict file and loaded back through load_clip."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch

from engine.models.clip import ClipModel, build_clip_model, find_cached_clip, load_clip
from spooky.errors import (
    CheckpointMismatchError,
    CorruptWeightsError,
    EmptyPromptError,
    InvalidSizeError,
    MissingWeightsError,
    PromptTooLongError,
)

TOY = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 1, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = build_clip_model(model_cfg=TOY).eval()
    path = tmp_path_factory.mktemp("clip") / "toy-clip.pt"
    # OpenAI-style extras and half precision, as in the published files.
    state = {k: v.half() for k, v in model.state_dict().items()}
    state["input_resolution"] = torch.tensor(32)
    torch.save(state, path)
    return model, path


@pytest.fixture(scope="module")
def clip(toy_file) -> ClipModel:
    return load_clip(toy_file[1], model_cfg=TOY)


def test_loaded_model_matches_the_saved_one(toy_file, clip: ClipModel) -> None:
    model, _ = toy_file
    reference = model.half().float()  # the file holds fp16 values
    assert (clip.image_size, clip.embed_dim, clip.context_length) == (32, 32, 77)
    assert not clip.model.training and not any(p.requires_grad for p in clip.model.parameters())
    assert all(p.dtype == torch.float32 for p in clip.model.parameters())
    x = clip.normalize(torch.rand(2, 3, 32, 32))
    with torch.no_grad():
        torch.testing.assert_close(clip.encode_image(x), reference.encode_image(x), rtol=0, atol=0)
        tokens = clip.tokenizer(["a pale vampire"])
        torch.testing.assert_close(
            clip.encode_text(["a pale vampire"]), reference.encode_text(tokens), rtol=0, atol=0
        )


def test_normalize_uses_openai_statistics(clip: ClipModel) -> None:
    assert clip.mean.shape == (1, 3, 1, 1)
    x = clip.mean.expand(1, 3, 4, 4)
    assert torch.equal(clip.normalize(x), torch.zeros(1, 3, 4, 4))
    torch.testing.assert_close(clip.std.flatten(), torch.tensor([0.26862954, 0.26130258, 0.27577711]))


def test_gradient_reaches_the_image(clip: ClipModel) -> None:
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    clip.encode_image(clip.normalize(x)).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(InvalidSizeError, match=r"\[N,3,32,32\]"):
        clip.encode_image(torch.zeros(1, 3, 64, 64))


def test_text_embeddings_are_cached_per_prompt(clip: ClipModel) -> None:
    hits = clip.text_cache_hits
    first = clip.encode_text(["a ghost", "a witch"])
    assert clip.text_cache_hits == hits
    again = clip.encode_text([" a witch ", "a ghost", "a bat"])
    assert clip.text_cache_hits == hits + 2
    assert torch.equal(again[0], first[1]) and torch.equal(again[1], first[0])
    assert not torch.equal(again[2], again[0])
    assert not again.requires_grad


def test_prompt_checks(clip: ClipModel) -> None:
    assert clip.check_prompt("  dracula pale fangs \n") == "dracula pale fangs"
    assert clip.count_tokens("dracula pale fangs") == 4  # "drac" "ula" "pale" "fangs"
    for empty in ("", "   \t\n"):
        with pytest.raises(EmptyPromptError):
            clip.check_prompt(empty)
    long = " ".join(["ghost"] * 80)
    with pytest.raises(PromptTooLongError, match="80 CLIP tokens long; the limit is 75"):
        clip.check_prompt(long)
    with pytest.raises(PromptTooLongError):
        clip.encode_text([long])  # never truncated silently
    assert clip.check_prompt(" ".join(["ghost"] * 75))


def test_missing_file_and_cache_lookup(tmp_path: Path, toy_file) -> None:
    with pytest.raises(MissingWeightsError, match="spooky weights fetch clip_vit_b_32"):
        load_clip(None, cache_dir=tmp_path, model_cfg=TOY)
    with pytest.raises(MissingWeightsError, match=r"nope\.pt"):
        load_clip(tmp_path / "nope.pt", model_cfg=TOY)
    # open_clip's own Hugging Face cache layout inside the cache dir is found too
    snap = tmp_path / "models--timm--vit_base_patch32_clip_224.openai" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "open_clip_pytorch_model.bin").write_bytes(toy_file[1].read_bytes())
    assert find_cached_clip(tmp_path) == snap / "open_clip_pytorch_model.bin"
    assert load_clip(None, cache_dir=tmp_path, model_cfg=TOY).embed_dim == 32
    # our registry file name wins
    ours = tmp_path / "clip-vit-b-32-openai.pt"
    ours.write_bytes(toy_file[1].read_bytes())
    assert find_cached_clip(tmp_path) == ours


def test_safetensors_file_loads(tmp_path: Path, toy_file) -> None:
    from safetensors.torch import save_file

    model, _ = toy_file
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = load_clip(path, model_cfg=TOY)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(x), model.float().encode_image(x))


def test_wrong_or_corrupt_files(tmp_path: Path, toy_file) -> None:
    other = dict(TOY, embed_dim=16)
    with pytest.raises(CheckpointMismatchError, match=r"text_projection is \(32, 32\) in the file"):
        load_clip(toy_file[1], model_cfg=other)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(toy_file[1].read_bytes()[:5000])
    with pytest.raises(CorruptWeightsError, match=r"truncated\.pt"):
        load_clip(truncated, model_cfg=TOY)
    script = tmp_path / "ViT-B-32.pt"
    with zipfile.ZipFile(script, "w") as zf:  # the shape of OpenAI's TorchScript archive
        zf.writestr("ViT-B-32/code/__torch__/model.py", "")
        zf.writestr("ViT-B-32/constants.pkl", b"")
    with pytest.raises(CorruptWeightsError, match="TorchScript"):
        load_clip(script, model_cfg=TOY)


@pytest.mark.real_weights
def test_published_clip_loads() -> None:
    from spooky.config import ModelsConfig

    cache = ModelsConfig().cache_dir
    if find_cached_clip(cache) is None:
        pytest.skip(f"CLIP weights not in {cache} (spooky weights fetch clip_vit_b_32)")
    model = load_clip(None, cache_dir=cache)
    assert (model.image_size, model.embed_dim, model.context_length) == (224, 512, 77)
    text = model.encode_text(["a photo of a cat", "a photo of a dog"])
    assert text.shape == (2, 512)
