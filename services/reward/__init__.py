"""Scalar and multi-attribute reward models: Hugging Face sequence-classification checkpoints."""
