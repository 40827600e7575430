"""The contracts generated stubs (``python proto/generate.py``), imported as ``rewardline.v1``."""
