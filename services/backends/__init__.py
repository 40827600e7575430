"""Where the forward pass runs: in-process transformers (``hf``), a vLLM engine (``vllm``) or an NVIDIA
Triton Inference Server (``triton``). Each backend is one module behind one small interface (``base``)."""
