"""Issue 25's variants against the released methods over fine-tuning
seeds: purification tuned with the standard-error rule (and with the
plain minimum, and with validation accuracy as the objective) against the
unpurified merge, the widened scale search against the released fixed
bracket, ESM against its rivals (and rank-aware whitening once the
library has it), and NSC against task arithmetic on LoRA adapters (safe
settings, as optimised and with a global scale searched on validation).
Every measurement of a (part, task count, seed) is kept in the cache as
JSON, so runs can be split (each under the machine's time budget) and the
report is rebuilt from all of them.
Writes docs/benchmarks/quality_variants.md.

usage: LIBMERGE_LIBRARY=build/lib/libmerge.so.1 PYTHONPATH=bindings/python \\
       /usr/bin/python3 bench/quality/variants.py [--parts full,nsc] [--tasks 8,14,20]
       [--seeds 0,1,2] [--threads N] [--smoke] [--out DIR] [--report-only
       [--nsc-section-only | --vit-section-only | ...]]
The MLP backbone (run.py's "full" and "lora" kinds) and, for the vit
parts, the ViT under zero-shot-style heads ("vit-zs"), with run.py's
fine-tunes (shared cache)."""
import argparse
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import merges  # noqa: E402
import run  # noqa: E402
import tasks as tasklib  # noqa: E402
import variants_report  # noqa: E402
import variants_runs  # noqa: E402

PARTS = {"full": "full", "purify": "full", "whiten": "full", "nsc": "lora",
         "purify_layer": "full", "esm_variant": "full", "whiten_svd": "full",
         "vit": "vit-zs", "vit_whiten": "vit-zs",
         "whiten_lora": "lora", "esm_default": "full",
         "purify_objective": "full"}  # part -> run.KINDS kind
# Parts whose rows join another part's result of the same task count and
# seed (the rows they are compared with).
JOINS = {"purify": "full", "whiten": "full", "esm_variant": "full", "vit_whiten": "vit"}
def result_path(args, part, n, seed, method=None):
    """One JSON per (part, task count, seed), and per method for purify
    (its rows cost minutes each: a run may stop between methods)."""
    return os.path.join(args.cache, "variants%s" % ("-smoke" if args.smoke else ""),
                        "%s%s-%dtasks-seed%d.json" % (part, "-" + method if method else "", n,
                                                      seed))


def measure(args, part, d, n, seed, stats, method=None):
    s = variants_runs.Setting(d, n, stats, max_evals=3 if args.smoke else run.MAX_EVALS,
                              threads=args.threads)
    cands = variants_runs.keep_candidates(args.smoke)
    t0, cpu0 = time.perf_counter(), time.process_time()
    # When and under what load (the machine is shared): the report's Run
    # paragraph.
    run_info = dict(command=" ".join(sys.argv[1:]), load=[os.getloadavg()[0]],
                    start=time.strftime("%Y-%m-%d %H:%M", time.gmtime()))
    if part == "full":
        rows = variants_runs.full_rows(s, methods=args.full_methods)
    elif part == "whiten":
        rows = variants_runs.whiten_rows(s)
    elif part == "esm_variant":
        rows = variants_runs.esm_variant_rows(s, names=args.esm_variants)
    elif part == "purify_objective":
        rows = variants_runs.objective_rows(s, cands)
    elif part == "esm_default":
        rows = variants_runs.esm_default_rows(s, cands, names=args.esm_variants)
    elif part == "vit":
        rows = variants_runs.vit_rows(s)
    elif part in ("whiten_svd", "vit_whiten", "whiten_lora"):
        rows = variants_runs.whiten_svd_rows(s, released=part != "vit_whiten")
    elif part == "purify":
        rows = {method: variants_runs.purify_rows(s, method, cands)}
    elif part == "purify_layer":
        rows = {method: variants_runs.purify_layer_rows(s, method, cands)}
    else:
        rows = variants_runs.nsc_rows(s, steps=10 if args.smoke else 100)
    run_info["load"].append(os.getloadavg()[0])
    run_info["end"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    return dict(part=part, n=n, seed=seed, individual=s.individual,
                tasks=[t["name"] for t in s.tasks], rows=rows,
                seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - cpu0,
                run=run_info)


def load_all(args):
    """Every cached measurement; a joining part's rows (JOINS: purify's,
    vit_whiten's ...) join its target's result of the same task count and
    seed (the searches they are compared with)."""
    folder = os.path.dirname(result_path(args, "x", 0, 0))
    loaded = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.endswith(".json"):
            with open(os.path.join(folder, name)) as f:
                loaded.append(json.load(f))
    targets = {(r["part"], r["n"], r["seed"]): r for r in loaded if r["part"] in JOINS.values()}
    for r in loaded:
        into = targets.get((JOINS.get(r["part"]), r["n"], r["seed"]))
        if into is None:
            continue
        into["seconds"] += r["seconds"]
        for m, rows in r["rows"].items():
            if m in into["rows"]:
                into["rows"][m].update(rows)
    return [r for r in loaded if r["part"] not in JOINS]


def _jobs(args, part, sizes, seed):
    """(n, method) pairs still to measure for one part and seed."""
    methods = [None]
    if part in ("purify", "purify_layer"):
        methods = args.purify_methods.split(",")
        if part == "purify":
            sizes = [n for n in sizes if n in args.purify_tasks]
    return [(n, m) for n in sizes for m in methods
            if args.redo or not os.path.exists(result_path(args, part, n, seed, m))]


# --NAME-section-only: replace only that section of the existing report
# (the other parts' measurements need not be cached); first given wins.
SECTIONS = [
    ("nsc", variants_report.write_nsc_section, "replace only the NSC section of the existing "
     "report (the other parts' measurements need not be cached)"),
    ("layer", variants_report.write_layer_section,
     "replace only the per-layer purification section"),
    ("esm-variant", variants_report.write_esm_variant_section,
     "replace only the ESM-variant section"),
    ("esm-default", variants_report.write_esm_default_section,
     "replace only the section on ESM's new default (esm_default part)"),
    ("objective", variants_report.write_objective_section,
     "replace only the section on purification's tuning objectives (purify_objective part: "
     "held-out drift, validation accuracy and the label-free teacher score against the test "
     "curve)"),
    ("vit", variants_report.write_vit_section,
     "replace only the ViT section (ESM's scalings on the ViT)"),
    ("whiten", variants_report.write_whiten_svd_section,
     "replace only the section on TSV-M / Iso-C / Iso-CTS whitening"),
]


def _report(args):
    for name, writer, _ in SECTIONS:
        if getattr(args, "%s_section_only" % name.replace("-", "_")):
            return writer(load_all(args), args)
    return variants_report.write(load_all(args), args)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="full,purify,whiten,nsc",
                    help="comma-separated subset of full (scale searches, ESM), purify, "
                    "whiten (ESM rank_aware), nsc, purify_layer, esm_variant (ESM's "
                    "combine/scaling variants), whiten_svd (TSV-M / Iso-C / Iso-CTS "
                    "rank_aware and released), whiten_lora (the same on the MLP's LoRA "
                    "fine-tunes), vit (ESM, its variants and the SVD family "
                    "on the ViT, zero-shot-style heads), vit_whiten (the SVD family "
                    "rank_aware there), esm_default (ESM's new default unpurified, "
                    "purified and rank_aware, beside the SVD family released), "
                    "purify_objective (every keep ratio scored by held-out drift, "
                    "validation accuracy and the teacher score against test)")
    ap.add_argument("--purify-tasks", default="8",
                    help="task counts that get the purify rows (minutes per method)")
    ap.add_argument("--purify-methods", default=",".join(m[0] for m in variants_runs.METHODS))
    ap.add_argument("--tasks", default=None, help="task counts (default 8,14,20; --smoke: 3)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--redo", action="store_true", help="measure again what the cache has")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--full-methods", default=None,
                    help="full part: only these methods (comma-separated labels; "
                    "default all), e.g. esm,tsv,iso_c,iso_cts for the ESM comparison alone")
    ap.add_argument("--esm-variants", default=None,
                    help="esm_variant / esm_default part: only these rows (';'-separated "
                    "names of variants_runs.ESM_VARIANTS / ESM_DEFAULT_ROWS; default all)")
    for name, _, text in SECTIONS:
        ap.add_argument("--%s-section-only" % name, action="store_true", help=text)
    ap.add_argument("--out", default=os.path.join(HERE, "..", "..", "docs", "benchmarks"))
    ap.add_argument("--cache", default=os.path.join(HERE, ".cache"))
    args = ap.parse_args()
    parts = args.parts.split(",")
    if any(p not in PARTS for p in parts):
        ap.error("--parts: known parts are %s" % ", ".join(PARTS))
    args.tasks = args.tasks or ("3" if args.smoke else "8,14,20")
    sizes = [int(n) for n in args.tasks.split(",")]
    args.full_methods = args.full_methods.split(",") if args.full_methods else None
    args.esm_variants = args.esm_variants.split(";") if args.esm_variants else None
    args.purify_tasks = [int(n) for n in args.purify_tasks.split(",")]
    most = len(run.SMOKE_TASKS) if args.smoke else len(tasklib.TASKS)
    if not args.report_only and not all(2 <= n <= most for n in sizes):
        ap.error("--tasks: each count must be between 2 and %d" % most)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    for seed in ([] if args.report_only else [int(x) for x in args.seeds.split(",")]):
        for part in parts:
            todo = _jobs(args, part, sizes, seed)
            if not todo:
                continue
            d = run.finetuned(args.smoke, args.cache, PARTS[part], seed, n_tasks=max(sizes))
            stats = {}
            for n, method in todo:
                print("%s, %d tasks, seed %d%s" % (part, n, seed, ", " + method if method else ""),
                      flush=True)
                if n not in stats:
                    stats[n] = merges.collect(d.net, d.sds[:n], d.tasks[:n], rows=d.rows)
                res = measure(args, part, d, n, seed, stats.get(n), method)
                path = result_path(args, part, n, seed, method)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path + ".part", "w") as f:
                    json.dump(res, f)
                os.replace(path + ".part", path)
                # Rewritten after every measurement: a long run can be read
                # early (a report bug must not lose the measurements).
                try:
                    _report(args)
                except Exception as e:  # noqa: BLE001
                    print("report not written: %r" % e, flush=True)
    path = _report(args)
    print("wrote %s (%.0f s)" % (path, time.perf_counter() - t0))


if __name__ == "__main__":
    main()
