"""``rewardline triton build-repo`` output, and how ``rewardline triton start`` assembles Triton's environment
(no server is started here; tests/test_triton_backend.py runs one)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from rewardline.services.cli import main
from rewardline.services.modeling import weights_revision
from rewardline.services.triton.config import TritonRepoConfig, TritonStartConfig
from rewardline.services.triton.launcher import (
    STUB,
    assemble_backend_dir,
    find_install,
    inspect_python_env,
    server_command,
    server_environment,
)
from rewardline.services.triton.repository import MODEL_PY, build_repository

REPO = Path(__file__).resolve().parents[1]


def parse(config_path: Path) -> model_config_pb2.ModelConfig:
    """config.pbtxt read by Triton's own schema: a misspelt field or a bad value fails here."""
    return text_format.Parse(config_path.read_text(), model_config_pb2.ModelConfig())


def params(config: model_config_pb2.ModelConfig) -> dict[str, str]:
    return {k: v.string_value for k, v in config.parameters.items()}


def test_build_repo_command_writes_a_repository_triton_can_read(local_models, tmp_path, capsys):
    reward = local_models / "reward"
    out = tmp_path / "repo"
    code = main(
        [
            "triton",
            "build-repo",
            "--model",
            str(reward),
            "--out",
            str(out),
            "--name",
            "rm",
            "--max-batch-size",
            "32",
            "--preferred-batch-sizes",
            "8,16",
            "--max-queue-delay-us",
            "250",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip() == str(out / "rm")
    config = parse(out / "rm" / "config.pbtxt")
    assert config.name == "rm" and config.backend == "python" and config.max_batch_size == 32
    inputs = {i.name: i for i in config.input}
    assert sorted(inputs) == ["attention_mask", "input_ids"]
    for tensor in inputs.values():
        assert (
            tensor.data_type == model_config_pb2.TYPE_INT64 and list(tensor.dims) == [-1] and tensor.allow_ragged_batch
        )
    (logits,) = config.output
    assert logits.name == "logits" and logits.data_type == model_config_pb2.TYPE_FP32 and list(logits.dims) == [1]
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16]
    assert config.dynamic_batching.max_queue_delay_microseconds == 250
    (group,) = config.instance_group
    assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU and group.count == 1
    p = params(config)
    assert p["model_dir"] == str(reward.resolve())
    assert p["rewardline_revision"] == weights_revision(reward)
    assert p["pad_token_id"].isdigit() and p["dtype"] == "float32"
    assert (
        (out / "rm" / "1" / "model.py").read_bytes()
        == MODEL_PY.read_bytes()
        == (REPO / "deploy" / "triton" / "model.py").read_bytes()
    )


def test_gpu_variant_and_copied_weights(local_models, tmp_path):
    reward = local_models / "reward"
    target = build_repository(
        TritonRepoConfig(
            model=reward, out=tmp_path, instance_kind="gpu", instances=2, dtype="bfloat16", copy_model=True
        )
    )
    assert target.name == "reward"
    config = parse(target / "config.pbtxt")
    (group,) = config.instance_group
    assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU and group.count == 2
    assert not config.dynamic_batching.preferred_batch_size
    p = params(config)
    assert p["dtype"] == "bfloat16" and not Path(p["model_dir"]).is_absolute()
    copied = target / "1" / p["model_dir"]
    assert weights_revision(copied) == weights_revision(reward) == p["rewardline_revision"]


def test_build_repo_refusals(local_models, tmp_path):
    reward = local_models / "reward"
    build_repository(TritonRepoConfig(model=reward, out=tmp_path))
    with pytest.raises(FileExistsError, match="--force"):
        build_repository(TritonRepoConfig(model=reward, out=tmp_path))
    assert build_repository(TritonRepoConfig(model=reward, out=tmp_path, force=True, max_batch_size=4)).is_dir()
    assert parse(tmp_path / "reward" / "config.pbtxt").max_batch_size == 4
    with pytest.raises(ValueError, match="preferred batch sizes"):
        build_repository(
            TritonRepoConfig(model=reward, out=tmp_path, name="x", max_batch_size=8, preferred_batch_sizes=[16])
        )
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises((OSError, ValueError)):
        build_repository(TritonRepoConfig(model=tmp_path / "pickled", out=tmp_path, name="pickled"))
    assert not (tmp_path / "x").exists() and not (tmp_path / "pickled" / "1").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left behind


def test_build_repo_command_rejects_a_bad_name_and_a_missing_model(local_models, tmp_path, capsys):
    assert (
        main(
            [
                "triton",
                "build-repo",
                "--model",
                str(local_models / "reward"),
                "--out",
                str(tmp_path),
                "--name",
                "has space",
            ]
        )
        == 2
    )
    assert "name" in capsys.readouterr().err
    assert main(["triton", "build-repo", "--model", str(tmp_path / "none"), "--out", str(tmp_path)]) == 1
    assert "rewardline triton build-repo:" in capsys.readouterr().err


def test_start_assembles_the_backend_directory_and_environment(tmp_path):
    install = find_install()
    stub_python = inspect_python_env(REPO / ".venv-triton")
    assert stub_python.version == f"{sys.version_info[0]}.{sys.version_info[1]}"
    backends = assemble_backend_dir(install, stub_python.version, tmp_path)
    assert sorted(p.name for p in (backends / "python").iterdir()) == sorted(
        ["libtriton_python.so", "triton_python_backend_utils.py", STUB]
    )
    assert assemble_backend_dir(install, stub_python.version, tmp_path) == backends  # reused, not rebuilt
    env = server_environment(install, stub_python, base={"PATH": "/usr/bin", "PYTHONPATH": "/elsewhere"})
    assert env["LD_LIBRARY_PATH"].split(":")[:2] == [str(stub_python.libdir), str(install.libs)]
    assert env["PATH"].split(":")[0] == str(REPO / ".venv-triton" / "bin") and "PYTHONPATH" not in env
    cmd = server_command(TritonStartConfig(repo=tmp_path, grpc_port=9001, metrics_port=9002), install, backends)
    assert cmd[0] == str(install.binary)
    assert "--grpc-port=9001" in cmd and "--allow-http=false" in cmd and "--metrics-port=9002" in cmd
    assert not any(c.startswith("--model-control-mode") for c in cmd)
    explicit = server_command(
        TritonStartConfig(repo=tmp_path, model_control_mode="explicit", load_models=["a", "b"]), install, backends
    )
    assert "--model-control-mode=explicit" in explicit and "--load-model=a" in explicit and "--load-model=b" in explicit
    everything = server_command(TritonStartConfig(repo=tmp_path, model_control_mode="explicit"), install, backends)
    assert "--load-model=*" in everything
    with pytest.raises(ValueError, match="explicit"):
        TritonStartConfig(repo=tmp_path, load_models=["a"])


def test_start_refuses_an_environment_with_numpy_2():
    """The project's .venv has numpy 2, with which this Triton's Python backend returns empty tensors."""
    with pytest.raises(RuntimeError, match="numpy<2"):
        inspect_python_env(REPO / ".venv")


def test_start_command_reports_a_missing_stub_environment(tmp_path, capsys):
    assert (
        main(
            ["triton", "start", "--repo", str(tmp_path), "--grpc-port", "1", "--python-env", str(tmp_path / "nothing")]
        )
        == 1
    )
    assert "install.sh --test" in capsys.readouterr().err
