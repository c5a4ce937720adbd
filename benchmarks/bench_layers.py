"""Benchmark of tfhalo's layers and of the deep-halo CNN.

Prints, from one run:

* forward + backward time per batch of ``MultipoleConv3D`` (l = 0, and
  l <= 1) against ``keras.layers.Conv3D`` with the same input and output
  shapes, as ratios (target: at most 1.10);
* training throughput (samples/s) of ``halo_cnn()`` at 75^3 and of a small
  variant, and the multipole (l = 0) variant against the plain one.

Each timing is one compiled ``train_on_batch`` step (forward, backward and an
SGD update), median over ``--reps`` after warm-up; the compared models' steps
are interleaved so that load from other processes hits them alike. The default run takes about
2-3 minutes on 2 CPU cores; ``--size``, ``--batch``, ``--reps`` and
``--paper-steps`` scale it up (e.g. on a GPU).

Usage::

    python benchmarks/bench_layers.py [--size 24] [--channels 16] [--filters 32]
        [--batch 4] [--reps 15] [--paper-batch 4] [--paper-steps 3] [--skip-paper]
        [--json results.json]
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tfhalo.atomic import write_json_atomic  # noqa: E402
from tfhalo.layers import MultipoleConv3D  # noqa: E402
from tfhalo.models import halo_cnn  # noqa: E402


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer. Received: {text}")
    return value


def _step(model, x, y):
    start = time.perf_counter()
    loss = model.train_on_batch(x, y)
    # Force the result: JAX dispatches asynchronously.
    float(np.asarray(loss if np.ndim(loss) == 0 else loss[0]))
    return time.perf_counter() - start


def time_train_steps(models, x, ys, reps, warmup=2):
    """Median seconds of one ``train_on_batch`` step of each model.

    The models' steps are interleaved so that load from other processes on a
    shared machine hits them alike.
    """
    for _ in range(warmup):
        for model, y in zip(models, ys):
            model.train_on_batch(x, y)
    times = [[] for _ in models]
    for _ in range(reps):
        for model, y, t in zip(models, ys, times):
            t.append(_step(model, x, y))
    return [statistics.median(t) for t in times]


def one_layer_model(layer, x):
    """One-layer model with an MSE loss, compiled; returns (model, zero target)."""
    inputs = keras.Input(x.shape[1:])
    model = keras.Model(inputs, layer(inputs))
    model.compile(optimizer=keras.optimizers.SGD(1e-6), loss="mse")
    return model, np.zeros((x.shape[0], *model.output.shape[1:]), "float32")


def bench_convolutions(args, rng):
    x = rng.standard_normal((args.batch, args.size, args.size, args.size, args.channels)).astype("float32")
    rows = []
    for ells, label in (((0,), "l=0"), ((0, 1), "l<=1")):
        n_m = sum(2 * l + 1 for l in ells)
        per_l = max(1, args.filters // n_m)
        multipole, y_multi = one_layer_model(MultipoleConv3D(per_l, ells=ells, kernel_size=3, padding="same"), x)
        channels = multipole.output.shape[-1]
        conv, y_conv = one_layer_model(keras.layers.Conv3D(channels, 3, padding="same"), x)
        assert tuple(conv.output.shape) == tuple(multipole.output.shape)
        t_multi, t_conv = time_train_steps([multipole, conv], x, [y_multi, y_conv], args.reps)
        rows.append(
            {
                "layer": f"MultipoleConv3D {label}",
                "input": list(x.shape),
                "output_channels": int(channels),
                "multipole_ms": 1e3 * t_multi,
                "conv3d_ms": 1e3 * t_conv,
                "ratio": t_multi / t_conv,
            }
        )
    return rows


def model_throughputs(models, batch, steps, rng):
    """Training samples/s of each model (same input shape), steps interleaved."""
    shape = models[0].input.shape[1:]
    x = rng.standard_normal((batch, *shape)).astype("float32")
    y = rng.uniform(-1, 1, (batch, 1)).astype("float32")
    return [batch / t for t in time_train_steps(models, x, [y] * len(models), steps, warmup=1)]


def bench_models(args, rng):
    small = dict(input_shape=(17, 17, 17, 1), conv_filters=(4, 8, 8), pool_after=(False, True, True), dense_units=(16,))
    results = {}
    results["small_conv"], results["small_multipole_l0"] = model_throughputs(
        [halo_cnn(**small), halo_cnn(**small, conv_type="multipole", ells=(0,))], args.small_batch, args.reps, rng
    )
    if not args.skip_paper:
        (results["paper_75"],) = model_throughputs([halo_cnn()], args.paper_batch, args.paper_steps, rng)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=_positive_int, default=24, help="grid side of the layer benchmark")
    parser.add_argument("--channels", type=_positive_int, default=16, help="input channels of the layer benchmark")
    parser.add_argument("--filters", type=_positive_int, default=32, help="output channels of the layer benchmark")
    parser.add_argument("--batch", type=_positive_int, default=4)
    parser.add_argument("--reps", type=_positive_int, default=15)
    parser.add_argument("--small-batch", type=_positive_int, default=32)
    parser.add_argument("--paper-batch", type=_positive_int, default=4)
    parser.add_argument("--paper-steps", type=_positive_int, default=3)
    parser.add_argument("--skip-paper", action="store_true", help="skip the 75^3 paper model")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)

    print(f"backend: {keras.backend.backend()}")
    print("\nforward+backward per batch (one train step), same input/output shapes:")
    layer_rows = bench_convolutions(args, rng)
    for row in layer_rows:
        print(
            f"  {row['layer']:<22} in {tuple(row['input'])} -> {row['output_channels']} ch: "
            f"{row['multipole_ms']:8.1f} ms vs Conv3D {row['conv3d_ms']:8.1f} ms  "
            f"ratio {row['ratio']:.3f} (target <= 1.10)"
        )
    print("\ntraining throughput:")
    model_rows = bench_models(args, rng)
    print(f"  small halo_cnn 17^3 conv (4, 8, 8):   {model_rows['small_conv']:9.1f} samples/s")
    print(
        f"  small halo_cnn 17^3 multipole l=0:    {model_rows['small_multipole_l0']:9.1f} samples/s "
        f"(time ratio to conv {model_rows['small_conv'] / model_rows['small_multipole_l0']:.3f})"
    )
    if "paper_75" in model_rows:
        print(f"  halo_cnn() 75^3 (paper), batch {args.paper_batch}: {model_rows['paper_75']:9.2f} samples/s")

    if args.json:
        write_json_atomic(args.json, {"backend": keras.backend.backend(), "layers": layer_rows, "models": model_rows})


if __name__ == "__main__":
    main()
