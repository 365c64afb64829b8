"""The one import guard of ONNX Runtime for the whole package (models/ checks exports with it, the daemon serves
with it): either the ``onnxruntime`` or the ``onnxruntime-gpu`` build, with an install hint when neither works.
"""
from __future__ import annotations

from typing import Any

__all__ = ["ORT_MISSING_MESSAGE", "import_onnxruntime"]

ORT_MISSING_MESSAGE = (
    "ONNX Runtime is not installed: pip install 'refscope[cpu]' (or 'refscope[gpu]' for CUDA/TensorRT)"
)


def import_onnxruntime() -> Any:
    """Import and return the ``onnxruntime`` module (from either ``onnxruntime`` or ``onnxruntime-gpu``).

    Raises
    ------
    ImportError
        With an install hint when neither build is installed, or when the install is broken (installing
        both builds and then removing one leaves an empty ``onnxruntime`` package behind).
    """
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError(ORT_MISSING_MESSAGE) from exc
    if not hasattr(onnxruntime, "InferenceSession"):
        raise ImportError(
            f"ONNX Runtime at {getattr(onnxruntime, '__path__', '?')} is broken (no InferenceSession), usually after "
            "installing both onnxruntime and onnxruntime-gpu: pip uninstall -y onnxruntime onnxruntime-gpu, then "
            "pip install 'refscope[cpu]' (or 'refscope[gpu]')"
        )
    return onnxruntime
