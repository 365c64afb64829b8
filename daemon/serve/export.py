"""Export a promoted paired model to ONNX in a short-lived helper process, so the daemon never loads PyTorch.

PyTorch adds about 180 MB to a process's resident size for good, and the daemon needs it only to trace the paired
model (:func:`refscope.models.paired_net.export_paired_model`) for a second after each promotion. Exporting in a
spawned child keeps that memory out of the long-running daemon (``serve.max_memory_mb``); the child's cost -- its
interpreter, PyTorch and the model, about 350 MB -- exists only for the 2-3 s of the export, after the learner has
freed what it used to learn the reference. The child dies with the daemon (:func:`.child.die_with_parent`).
"""
from __future__ import annotations

import multiprocessing
from typing import Any

from refscope.models.manifest import ModelManifest

from .child import die_with_parent

__all__ = ["ExportError", "export_paired_in_child"]

DEFAULT_TIMEOUT_S = 120.0
"""Longest an export may take before the child is killed, seconds."""


class ExportError(RuntimeError):
    """The helper process could not export the model (it failed, died or timed out); the message says which."""


def _child_main(fitted: Any, version: str, conn: Any) -> None:
    die_with_parent()
    try:
        import torch

        torch.set_num_threads(1)
        from refscope.models.paired_net import export_paired_model

        data, manifest = export_paired_model(fitted, version=version)
        conn.send(("ok", (data, manifest.to_dict())))
    except Exception as exc:  # noqa: BLE001 - reported to the daemon, which keeps its model
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def export_paired_in_child(fitted: Any, *, version: str, timeout_s: float = DEFAULT_TIMEOUT_S
                           ) -> tuple[bytes, ModelManifest]:
    """:func:`~refscope.models.paired_net.export_paired_model` of ``fitted`` (a FittedModel, its regressors
    already fitted so the child does not refit them) in a spawned process; returns (ONNX bytes, manifest).

    Raises :class:`ExportError` when the child reports a failure, dies or exceeds ``timeout_s`` (then killed).
    """
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe(duplex=False)
    process = context.Process(target=_child_main, args=(fitted, str(version), child_end), daemon=True,
                              name="refscope-export")
    process.start()
    child_end.close()
    try:
        if not parent_end.poll(timeout_s):
            raise ExportError(f"the ONNX export of model v{version} took more than {timeout_s:g} s; killed")
        status, payload = parent_end.recv()
    except EOFError:
        process.join(5)
        raise ExportError(f"the ONNX export process of model v{version} died (exit code {process.exitcode})") from None
    finally:
        parent_end.close()
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join(5)
    if status != "ok":
        raise ExportError(f"the ONNX export of model v{version} failed: {payload}")
    data, manifest = payload
    return data, ModelManifest.from_dict(manifest)
