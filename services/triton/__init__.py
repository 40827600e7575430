"""NVIDIA Triton Inference Server as the place a reward model's forward pass runs.

- ``protocol``: the tensors rewardline and a Triton-hosted model exchange, and Triton's errors as gRPC statuses
  (shared by the service's ``triton`` backend, the trainer's Triton reward source and the benchmark);
- ``repository``: ``rewardline triton build-repo``, a Python-backend model repository for a model directory;
- ``launcher``: ``rewardline triton start``, the tritonserver bundled with nvidia-pytriton with the environment
  it needs (local runs and tests; a cluster runs NVIDIA's Triton image on the same repository);
- ``config``: the typed configurations of those two programs.
"""
