"""Facts about a model directory that do not need the model loaded: its weights' revision and format."""

from __future__ import annotations

import hashlib
from pathlib import Path


def safetensors_files(model_dir: Path) -> list[Path]:
    """The checkpoint's weight files; refuses pickled weights, which can run code when loaded."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        pickled = sorted(p.name for p in model_dir.glob("*.bin")) + sorted(p.name for p in model_dir.glob("*.pt"))
        hint = f" (found {', '.join(pickled)}: convert them to safetensors)" if pickled else ""
        raise ValueError(f"{model_dir} holds no .safetensors weights{hint}; rewardline loads safetensors only")
    return files


def weights_revision(model_dir: Path, extra_files: tuple[Path, ...] = ()) -> str:
    """sha256 over the weight files' names and bytes (first 16 hex digits): equal weights, equal revision."""
    digest = hashlib.sha256()
    for path in [*safetensors_files(model_dir), *extra_files]:
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 23), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]
