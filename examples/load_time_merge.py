"""A Python loader that merges while it loads: the base model is read
tensor by tensor (here from a safetensors file, one tensor at a time with
libmerge.load(path, names=[...])) by two loader threads, and each tensor
goes through a libmerge.Merger before it is kept, so neither the merged
model nor a second copy of the base is ever built in one piece.

    python3 examples/load_time_merge.py BASE.safetensors FT1.safetensors FT2.safetensors \
        [--method ties] [--param density=0.5] [--out merged.safetensors]

Without arguments it writes a small demo model and two fine-tunes into a
temporary directory, merges them at load time, checks the result against
the offline libmerge.merge bit for bit and prints "ok"."""
import argparse
import os
import queue
import sys
import tempfile
import threading

import numpy as np

import libmerge
import libmerge.files


def load_merged(base_path, merger, threads=2):
    """name -> merged array: `threads` loaders share the queue of tensor
    names; each reads its tensor, merges it in place and stores it."""
    names = queue.Queue()
    for name in libmerge.files.describe(base_path)["tensors"]:
        names.put(name)
    merged, errors = {}, []

    def loader():
        while True:
            try:
                name = names.get_nowait()
            except queue.Empty:
                return
            try:
                tensor = libmerge.load(base_path, names=[name])[name]  # one tensor
                if merger.touches(name):
                    merger.apply_(name, tensor)  # in place, GIL released
                merged[name] = tensor
            except BaseException as e:  # reported by the main thread
                errors.append(e)
                return

    workers = [threading.Thread(target=loader) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    return merged


def demo():
    rng = np.random.default_rng(0)
    shapes = {"fc1.weight": (32, 16), "fc1.bias": (32,), "fc2.weight": (8, 32), "fc2.bias": (8,)}
    base = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    fts = [{k: v + 0.05 * rng.standard_normal(v.shape).astype(np.float32)
            for k, v in base.items()} for _ in range(2)]
    with tempfile.TemporaryDirectory() as d:
        base_path = os.path.join(d, "base.safetensors")
        libmerge.save(base_path, base)
        with libmerge.Merger("ties", fts, density=0.5) as merger:
            merged = load_merged(base_path, merger)
    want = libmerge.merge("ties", base, fts, density=0.5)
    for k in base:
        if not np.array_equal(merged[k], want[k]):
            print("MISMATCH in %s" % k)
            return 1
    print("ok: %d tensors merged at load time, identical to the offline merge" % len(merged))
    return 0


def main(argv):
    if not argv:
        return demo()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base")
    ap.add_argument("finetuned", nargs="+")
    ap.add_argument("--method", default="ties")
    ap.add_argument("--param", action="append", default=[], help="name=value")
    ap.add_argument("--out", help="write the merged model here (.safetensors/.gguf/.npz)")
    args = ap.parse_args(argv)
    params = {}
    for p in args.param:
        k, v = p.split("=", 1)
        params[k] = float(v)
    models = [libmerge.load(path) for path in args.finetuned]
    with libmerge.Merger(args.method, models, **params) as merger:
        merged = load_merged(args.base, merger)
    if args.out:
        libmerge.save(args.out, merged)
    print("merged %d tensors" % len(merged))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
