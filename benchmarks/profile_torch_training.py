"""Where one distillation step's time goes on the PyTorch backend (issue 18).

Profiles one `APMDistiller` train-function step of an official-sized APM
(random weights, batch 1, float32) and the plain-PyTorch baseline of
benchmarks/cpu.py with `torch.profiler`, after timing three steps of each:

    python benchmarks/profile_torch_training.py --model ttt \
        > benchmarks/results/cpu_profile_torch_training.txt

The first two lines are `(wall s, process CPU s)` of three steps each; the
tables list the operators by their own CPU time.
"""

import argparse
import os
import sys
import time

os.environ["KERAS_BACKEND"] = "torch"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("coco", "ttt"), default="ttt")
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args(argv)

    import keras
    import numpy as np
    from keras import ops
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile

    import gpu  # the shared builders
    import keras_apm

    model = gpu.build_apm(
        args.model, "float32",
        argparse.Namespace(smoke=False, chunk_size=None, seed=0),
    )
    rng = np.random.default_rng(0)
    batch = {
        k: ops.convert_to_tensor(v)
        for k, v in gpu.random_batch(model, 1, rng).items()
    }
    distiller = keras_apm.APMDistiller(model)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-4))
    step, _ = gpu.train_function_step(distiller, batch, "torch")
    baseline, _, _ = gpu.build_baseline(
        gpu.mlp_shape(model), model.grid_shape, "float32", 1, 0, False, True
    )
    steps = {"keras_apm (torch backend)": step, "plain PyTorch": baseline}
    for run in steps.values():
        run()  # first-touch memory, lazy builds
    for name, run in steps.items():
        times = []
        for _ in range(3):
            cpu, wall = time.process_time(), time.perf_counter()
            run()
            times.append(
                (round(time.perf_counter() - wall, 3),
                 round(time.process_time() - cpu, 3))
            )
        print(name, times)
    for name, run in steps.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        print("=====", name)
        print(prof.key_averages().table(
            sort_by="self_cpu_time_total", row_limit=args.rows
        ))


if __name__ == "__main__":
    main()
