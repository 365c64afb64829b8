"""Run tk-r-em networks on a folder of images: the benchmark's worker, executed *inside* the tk-r-em environment.

    benchmarks/peers/tkrem/.venv/bin/python benchmarks/tkrem_worker.py IN_DIR OUT_DIR sfr_lrsem [sfr_hrsem ...]

Never imported by refscope or by the benchmark itself: ``tk_r_em`` (Lobato et al., arXiv:2303.17025) is GPL-3 and
needs TensorFlow, so it lives only in ``benchmarks/peers/tkrem/.venv`` (made by
:func:`external_peers.ensure_env`) and this script is the only code that imports it, in its own process.

Contract of :func:`external_peers.run_batch`: every ``IN_DIR/<key>.npy`` (a 2-D float array, any intensity range)
gives one ``OUT_DIR/<key>__<model>.npy`` per model (float32, same shape), each written to a temporary name and
renamed, so a file that exists is complete. The networks normalise their input themselves (their first and last
layers), so no intensity scaling is applied here; ``Model.predict`` pads odd sizes by one row/column and crops back.
``REFSCOPE_PEER_THREADS`` (default 1) sets TensorFlow's intra- and inter-op threads.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def save_atomic(path: Path, array) -> None:
    import numpy as np

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    import numpy as np
    import tensorflow as tf

    threads = int(os.environ.get("REFSCOPE_PEER_THREADS", "1"))
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    import tk_r_em

    src, dst, models = Path(argv[0]), Path(argv[1]), argv[2:]
    inputs = sorted(src.glob("*.npy"))
    for model in models:
        net = tk_r_em.load_network(model)
        for path in inputs:
            image = np.load(path).astype(np.float32)
            out = np.asarray(net.predict(image, batch_size=1), dtype=np.float32).reshape(image.shape)
            save_atomic(dst / f"{path.stem}__{model}.npy", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
