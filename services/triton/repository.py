"""``rewardline triton build-repo``: a Triton model repository serving one model directory.

The repository holds ``NAME/config.pbtxt`` (rendered from deploy/triton/config.pbtxt.in) and
``NAME/1/model.py`` (a copy of deploy/triton/model.py, the one source of that file). The weights are
referenced by the model directory's absolute path, so a cluster mounts the model directory at the same path
in the Triton pod; ``copy_model`` puts a copy inside the repository instead (a self-contained repository to
ship to object storage, at the price of a second copy of the weights).

Everything the Python backend needs besides the weights is decided here, from the same files the service
reads: the pad id (the service pads with it, and Llama-style heads find the last real token by it), the
number of outputs, and the weights' revision, which the service compares with its own before it serves.
"""

from __future__ import annotations

import shutil
import string
import tempfile
from pathlib import Path

from rewardline.services.modeling import pad_id_for, weights_revision
from rewardline.services.triton.config import TritonRepoConfig

TEMPLATES = Path(__file__).resolve().parents[2] / "deploy" / "triton"
MODEL_PY = TEMPLATES / "model.py"
CONFIG_TEMPLATE = TEMPLATES / "config.pbtxt.in"
COPIED_MODEL_DIR = "hf-model"


def model_name(config: TritonRepoConfig) -> str:
    return config.name or Path(config.model).resolve().name


def model_facts(model_dir: Path) -> dict[str, str]:
    """The values config.pbtxt needs from the checkpoint, found exactly as the service finds them."""
    from transformers import AutoConfig, AutoTokenizer

    hf_config = AutoConfig.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return {
        "num_outputs": str(int(hf_config.num_labels)),
        "pad_token_id": str(pad_id_for(tokenizer, hf_config.pad_token_id)),
        "revision": weights_revision(model_dir),
    }


def render_config(config: TritonRepoConfig, facts: dict[str, str], model_dir_param: str) -> str:
    if config.preferred_batch_sizes:
        preferred = f"preferred_batch_size: [ {', '.join(str(n) for n in config.preferred_batch_sizes)} ]"
    else:  # Triton refuses an empty list; no line means "no preference"
        preferred = "# no preferred_batch_size: a batch goes when an instance is free and the queue delay is over"
    return string.Template(CONFIG_TEMPLATE.read_text()).substitute(
        source=str(Path(config.model).resolve()),
        name=model_name(config),
        max_batch_size=config.max_batch_size,
        num_outputs=facts["num_outputs"],
        preferred_batch_size=preferred,
        max_queue_delay_us=config.max_queue_delay_us,
        instances=config.instances,
        instance_kind=f"KIND_{config.instance_kind.upper()}",
        model_dir=model_dir_param.replace("\\", "\\\\").replace('"', '\\"'),  # a protobuf text string
        pad_token_id=facts["pad_token_id"],
        dtype=config.dtype,
        num_threads=config.num_threads,
        revision=facts["revision"],
    )


def build_repository(config: TritonRepoConfig) -> Path:
    """Writes ``out/NAME`` and returns it; refuses to replace an existing model unless ``force``."""
    model_dir = Path(config.model).resolve()
    too_large = [n for n in config.preferred_batch_sizes if n > config.max_batch_size or n <= 0]
    if too_large:
        raise ValueError(f"preferred batch sizes {too_large} must lie in [1, max_batch_size={config.max_batch_size}]")
    facts = model_facts(model_dir)  # also refuses a directory without safetensors weights
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / model_name(config)
    if target.exists() and not config.force:
        raise FileExistsError(f"{target} exists; pass --force to replace it")
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=out))
    try:
        version = staging / "1"
        version.mkdir()
        shutil.copyfile(MODEL_PY, version / "model.py")
        if config.copy_model:
            shutil.copytree(model_dir, version / COPIED_MODEL_DIR)
            model_dir_param = COPIED_MODEL_DIR
        else:
            model_dir_param = str(model_dir)
        (staging / "config.pbtxt").write_text(render_config(config, facts, model_dir_param))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
