"""Input pipeline vs training throughput of the deep-halo CNN, same run.

The pipeline must not be the bottleneck: it should deliver at least 5x as
many standardised 75^3 boxes per second (from a 256^3 lattice, like the
paper's simulations) as the published network consumes in training.

Measured here:
    pipeline  ``HaloDataset.__getitem__`` (sub-box extraction from the padded
              lattice, standardisation, label scaling) in one thread, for the
              raw and the shell-averaged inputs;
    device    ``DeviceSubboxes`` (the standardised lattice resident on the
              default Keras device, boxes gathered and shell-averaged there),
              raw and averaged, as ratios to the NumPy pipeline of the same run;
    training  ``halo_cnn()`` (2,108,258 parameters) ``train_on_batch`` samples/s.

Example:
    python benchmarks/bench_data.py                 # 256^3 lattice, 75^3 boxes
    python benchmarks/bench_data.py --n-side 128 --train-steps 2 --json out.json
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


class LatticeOnly:
    """The part of a Simulation the lattice inputs read (no particles needed)."""

    def __init__(self, n_side, box_size, seed):
        self.n_side, self.box_size, self.name = n_side, box_size, "bench"
        rng = np.random.default_rng(seed)
        self.initial_density = rng.standard_normal((n_side,) * 3, dtype=np.float32)

    @property
    def lattice_spacing(self):
        return self.box_size / self.n_side

    def lattice_sites(self, ids):
        return np.stack(np.unravel_index(np.asarray(ids), (self.n_side,) * 3), axis=-1)


def pipeline_rate(kind, sim, size, batch_size, n_batches, seed):
    from tfhalo.data import BoxInputs, HaloDataset, InputStandardizer, LabelScaler, ParticleSet

    rng = np.random.default_rng(seed)
    n = batch_size * n_batches
    particles = ParticleSet(np.zeros(n, dtype=np.int64), rng.integers(0, sim.n_side**3, n),
                            rng.uniform(11, 13.4, n), np.full(n, 0.5))
    inputs = BoxInputs([sim], kind=kind, size=size, standardizer=InputStandardizer(0.0, 1.0))
    ds = HaloDataset(inputs, particles, LabelScaler(11, 13.4), batch_size=batch_size, shuffle=True, seed=seed)
    ds[0]  # padding of the lattice happens once, outside the timing
    t0 = time.perf_counter()
    for i in range(len(ds)):
        x, _ = ds[i]
    return n / (time.perf_counter() - t0), x.shape


def device_rate(average, sim, size, batch_size, n_batches, seed):
    """Boxes/s of the device-side path; the clock stops once the last batch exists on the device."""
    import keras

    from tfhalo.data import DeviceSubboxes, InputStandardizer

    rng = np.random.default_rng(seed)
    sites = sim.lattice_sites(rng.integers(0, sim.n_side**3, batch_size * n_batches))
    dev = DeviceSubboxes(sim.initial_density, size, standardizer=InputStandardizer(0.0, 1.0))
    x = dev(sites[:batch_size], average=average)  # first dispatch (tracing, allocation) outside the timing
    keras.ops.convert_to_numpy(x[0, 0, 0, 0])
    t0 = time.perf_counter()
    for i in range(n_batches):
        x = dev(sites[i * batch_size:(i + 1) * batch_size], average=average)
    # Device work is queued asynchronously and in order: reading one voxel of
    # the last batch waits for all of it without copying the batch back.
    keras.ops.convert_to_numpy(x[-1, 0, 0, 0])
    return batch_size * n_batches / (time.perf_counter() - t0), tuple(x.shape)


def default_device():
    """The device Keras computes on, in words (``"gpu"`` or ``"cpu"``)."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return jax.devices()[0].platform
    import tensorflow as tf

    return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"


def training_rate(size, batch_size, steps):
    from tfhalo.models import halo_cnn

    model = halo_cnn(input_shape=(size, size, size, 1))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch_size, size, size, size, 1), dtype=np.float32)
    y = rng.uniform(-1, 1, (batch_size, 1)).astype(np.float32)
    model.train_on_batch(x, y)  # compile the step outside the timing
    t0 = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return steps * batch_size / (time.perf_counter() - t0), model.count_params()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-side", type=int, default=256)
    p.add_argument("--box-size", type=float, default=50.0)
    p.add_argument("--size", type=int, default=75)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--pipeline-batches", type=int, default=6)
    p.add_argument("--train-batch-size", type=int, default=8)
    p.add_argument("--train-steps", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)

    sim = LatticeOnly(args.n_side, args.box_size, seed=0)
    raw, shape = pipeline_rate("raw", sim, args.size, args.batch_size, args.pipeline_batches, 1)
    avg, _ = pipeline_rate("averaged", sim, args.size, args.batch_size, max(2, args.pipeline_batches // 3), 2)
    dev_raw, _ = device_rate(False, sim, args.size, args.batch_size, args.pipeline_batches, 1)
    dev_avg, _ = device_rate(True, sim, args.size, args.batch_size, args.pipeline_batches, 2)
    train, n_params = training_rate(args.size, args.train_batch_size, args.train_steps)
    import keras

    figures = {
        "lattice": f"{args.n_side}^3", "box": f"{args.size}^3", "backend": keras.backend.backend(),
        "pipeline_raw_boxes_per_s": raw, "pipeline_averaged_boxes_per_s": avg,
        "training_samples_per_s": train, "model_parameters": n_params,
        "ratio_raw_vs_training": raw / train, "ratio_averaged_vs_training": avg / train, "target_ratio": 5.0,
        "device": default_device(), "device_raw_boxes_per_s": dev_raw, "device_averaged_boxes_per_s": dev_avg,
        "ratio_device_raw_vs_numpy": dev_raw / raw, "ratio_device_averaged_vs_numpy": dev_avg / avg,
        "ratio_device_raw_vs_training": dev_raw / train, "ratio_device_averaged_vs_training": dev_avg / train,
    }
    print(f"lattice {args.n_side}^3, boxes {args.size}^3, batch shape {shape}, one pipeline thread")
    print(f"  pipeline raw       {raw:10.1f} boxes/s   = {raw / train:8.1f} x training")
    print(f"  pipeline averaged  {avg:10.1f} boxes/s   = {avg / train:8.1f} x training")
    print(f"  training halo_cnn  {train:10.2f} samples/s (baseline, {n_params:,} parameters, "
          f"batch {args.train_batch_size})")
    verdict = "OK" if min(raw, avg) / train >= 5 else "BELOW TARGET"
    print(f"  target: pipeline >= 5 x training -> {verdict}")
    print(f"device-side path on {figures['device']} (DeviceSubboxes, same batch size)")
    print(f"  device raw         {dev_raw:10.1f} boxes/s   = {dev_raw / raw:8.1f} x NumPy raw      "
          f"= {dev_raw / train:8.1f} x training")
    print(f"  device averaged    {dev_avg:10.1f} boxes/s   = {dev_avg / avg:8.1f} x NumPy averaged "
          f"= {dev_avg / train:8.1f} x training")
    if args.json:
        from tfhalo.atomic import write_json_atomic

        write_json_atomic(args.json, figures)
    return figures


if __name__ == "__main__":
    main()
