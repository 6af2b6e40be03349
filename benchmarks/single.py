"""The single-node rows: disco_jax's best single-device program and the engines users would pick.

Run by :mod:`benchmarks.network` on node 0's core, after the nodes' runs
(``taskset``), and on its own:

    taskset -c 0 python -m benchmarks.single --model resnet50 --batches 1,8 --out single.json

One process times, on whatever cores it is given (the benchmark gives it one),
the same network at the same input size, random weights:

- **disco_jax**: the network built with ``nodes=1`` (the same model
  definition the nodes run), its products in ``--compute-dtype`` (float32, or
  bfloat16: :func:`disco_jax.set_compute_dtype`), in its two single-device
  programs under
  ``jax.jit``: the inference form (:func:`disco_jax.to_inference`: BatchNorm
  folded into a per-channel scale and shift, packed kernels; called directly,
  no ``shard_map``) and the training form in eval mode. The faster is the
  "single node" row; both are in the report.
- **ONNX Runtime** (``pip install -e ".[bench]"``): that inference form, in
  float32, exported with jax2onnx, run by ONNX Runtime's CPU provider on one
  intra-op thread. Its output is compared with disco_jax's on the same input
  (``max_abs_diff`` in the report): the same function, another engine.
- **TensorFlow** (``[bench]``): the standard Keras application of the same
  architecture where Keras has one (ResNet-50: ``keras.applications.ResNet50``,
  ResNet v1 with conv biases, the stride in the first 1x1 conv of a
  downsampling block: 0.3% more parameters and fewer FLOPs than disco_jax's
  v1.5; both counts are in the report), through ``tf.function`` on one
  intra-op and one inter-op thread.

An engine that is not installed, or has no such network, gets a row that says
so instead of a time. Each time is the median of ``--repeats`` runs after one
warm-up run, wall clock from the call to the output being ready.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

from benchmarks import add_xla_defaults_option, apply_xla_flags
from benchmarks.latency import timed
from disco_jax.layers import COMPUTE_DTYPES

#: Keras applications of the same architecture, by disco_jax network name.
KERAS_APPLICATIONS = {"resnet50": "ResNet50", "resnet101": "ResNet101"}
BENCH_EXTRA = 'not installed (pip install -e ".[bench]")'


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.single",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compute-dtype", choices=COMPUTE_DTYPES, default="float32",
                        help="what disco_jax's products compute in (the reference engines "
                             "run float32)")
    parser.add_argument("--engines", default="disco_jax,onnxruntime,tensorflow",
                        help="comma-separated, from disco_jax, onnxruntime, tensorflow")
    parser.add_argument("--out", type=Path, required=True)
    add_xla_defaults_option(parser)
    args = parser.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    args.engines = args.engines.split(",")
    unknown = set(args.engines) - set(ENGINES)
    if unknown:
        parser.error(f"unknown engines {sorted(unknown)}; choose from {sorted(ENGINES)}")
    return args


def _missing(*modules: str) -> str | None:
    """None if every module imports, else the row's "not installed" note."""
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    return f"{', '.join(absent)} {BENCH_EXTRA}" if absent else None


def single_device_forms(args, compute_dtype=None):
    """The network with ``nodes=1``, random weights, eval mode, computing in
    ``compute_dtype``: (training form, inference form)."""
    from flax import nnx

    from disco_jax import set_compute_dtype, sparsify, to_inference
    from disco_jax.models import NETWORKS

    model = NETWORKS[args.model](classes=args.classes, nodes=1, in_channels=3,
                                 stem="imagenet", rngs=nnx.Rngs(0))
    sparsify.FixedMask("dense_split").update(model, 0)
    model.eval()
    set_compute_dtype(model, compute_dtype)
    return model, to_inference(model)


def _input(args, batch: int):
    import numpy as np

    rng = np.random.default_rng(batch)
    return rng.standard_normal((batch, args.image_size, args.image_size, 3), np.float32)


def _pure(module):
    """``module``'s call as a function of the input alone (weights as constants)."""
    from flax import nnx

    graphdef, state = nnx.split(module)
    return lambda x: nnx.merge(graphdef, state)(x)


def time_disco_jax(args, forms) -> dict:
    import jax
    from flax import nnx

    training, inference = (forms if args.compute_dtype == "float32"
                           else single_device_forms(args, args.compute_dtype))
    # the weights are arguments, as on the nodes (not constants XLA could fold)
    graphdef, state = nnx.split(inference)
    inference_form = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    training_form = nnx.jit(lambda model, x: model(x))
    programs = {"inference_form": lambda x: inference_form(state, x),
                "training_form": lambda x: training_form(training, x)}
    inputs = {b: jax.device_put(_input(args, b)) for b in args.batches}
    rows = {}
    for name, program in programs.items():
        rows[name] = {str(b): timed(lambda p=program, x=inputs[b]: jax.block_until_ready(p(x)),
                                    args.repeats)
                      for b in args.batches}
    best = {}
    for batch in map(str, args.batches):
        name = min(rows, key=lambda n, b=batch: rows[n][b]["median_ms"])
        best[batch] = rows[name][batch] | {"program": name}
    parameters = sum(x.size for x in jax.tree.leaves(nnx.state(training, nnx.Param)))
    return {"timings": best, "programs": rows, "parameters": int(parameters),
            "compute_dtype": args.compute_dtype,
            "engine": f"jax {jax.__version__} (XLA:{jax.devices()[0].platform}), "
                      f"{args.compute_dtype} products"}


def time_onnxruntime(args, forms) -> dict:
    missing = _missing("onnxruntime", "onnx", "jax2onnx")
    if missing:
        return {"status": missing}
    import jax
    import numpy as np
    import onnxruntime
    from jax2onnx import to_onnx

    _, inference = forms
    function = _pure(inference)
    rows, diffs = {}, {}
    for batch in args.batches:
        x = _input(args, batch)
        proto = to_onnx(function, [x.shape], model_name=args.model)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(proto.SerializeToString(), options,
                                               providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x}
        out = session.run(None, feed)[0]
        reference = np.asarray(jax.jit(function)(x))
        diffs[str(batch)] = {"max_abs_diff": float(np.abs(out - reference).max()),
                             "max_abs_output": float(np.abs(reference).max())}
        rows[str(batch)] = timed(lambda s=session, f=feed: s.run(None, f), args.repeats)
    return {"timings": rows, "versus_disco_jax": diffs,
            "engine": f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider, "
                      "1 thread; exported with jax2onnx)"}


def time_tensorflow(args, forms) -> dict:
    application = KERAS_APPLICATIONS.get(args.model)
    if application is None:
        return {"status": f"Keras has no standard {args.model}"}
    missing = _missing("tensorflow", "keras")
    if missing:
        return {"status": missing}
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    model = getattr(keras.applications, application)(
        weights=None, input_shape=(args.image_size, args.image_size, 3), classes=args.classes)
    forward = tf.function(lambda x: model(x, training=False))
    rows = {}
    for batch in args.batches:
        x = tf.constant(_input(args, batch))
        rows[str(batch)] = timed(lambda x=x: forward(x).numpy(), args.repeats)
    return {"timings": rows, "parameters": int(model.count_params()),
            "engine": f"tensorflow {tf.__version__}, keras.applications.{application} "
                      "(tf.function, 1 intra-op + 1 inter-op thread)"}


ENGINES = {"disco_jax": time_disco_jax, "onnxruntime": time_onnxruntime,
           "tensorflow": time_tensorflow}


def run(args) -> dict:
    forms = single_device_forms(args)  # float32: what the ONNX export starts from
    return {"model": args.model, "input_shape": [args.image_size, args.image_size, 3],
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "classes": args.classes, "batches": args.batches, "repeats": args.repeats,
            "engines": {name: ENGINES[name](args, forms) for name in args.engines}}


def main(argv=None) -> int:
    args = parse_args(argv)
    apply_xla_flags(args)
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    for name, row in report["engines"].items():
        times = row.get("timings")
        print(f"{name:12} " + (", ".join(f"batch {b}: {t['median_ms']:.1f} ms"
                                          for b, t in times.items())
                               if times else row["status"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
