"""Run by a Python that has DeepSparse (not necessarily ours): compile the exported model, check-run and time it on
the numpy inputs, write its outputs, print one JSON line. Imports nothing from smcbench (it is not installed there).
Usage: python deepsparse_worker.py JOB.json"""

import ctypes
import gc
import json
import os
import sys
import time

import numpy as np


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main(path):
    from deepsparse import compile_model

    with open(path) as f:
        job = json.load(f)
    root = job["root"]

    def load(group, i):
        return [np.load(f"{root}/{group}-{i}-{j}.npy", allow_pickle=False) for j in range(job["inputs"])]

    base = rss_mb()
    times = {}
    for group, batch in (("single", 1), ("serving", None)):
        items = [load(group, i) for i in range(job[group])]
        engine = compile_model(f"{root}/{group}.onnx", batch_size=batch or items[0][0].shape[0],
                               num_cores=job["threads"])
        for i, item in enumerate(items):
            np.save(f"{root}/{group}-{i}-out.npy", engine(item)[0], allow_pickle=False)
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        passes = []
        for rep in range(job["reps"] + 1):  # the first pass warms up
            start = time.perf_counter()
            for item in items:
                engine(item)
            if rep:
                passes.append(time.perf_counter() - start)
        times[group] = (passes, len(items), items[0][0].shape[0])
        memory = peak_mb() - base
    passes, n, _ = times["single"]
    latency = [s / n * 1e3 for s in passes]
    passes, n, b = times["serving"]
    throughput = [n * b / s for s in passes]
    print(json.dumps({"latency_ms": latency, "throughput": throughput, "memory_mb": memory,
                      "engine": str(type(engine).__name__)}))


if __name__ == "__main__":
    main(sys.argv[1])
