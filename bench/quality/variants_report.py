"""docs/benchmarks/quality_variants.md from bench/quality/variants.py's
measurements: paired comparisons over seeds, each with the paired
standard error of the test sample (report._paired_se) and the spread over
seeds."""
import os

import numpy as np

import report
import run
import variants_runs

# A difference counts only beyond this many paired standard errors.
SE_RULE = 2.0


def _se(result, a, b):
    return float(report._paired_se(dict(individual=result["individual"]), a, b))


def _get(rows, m, a, b):
    """rows[m][a] and rows[m][b], or None when either is missing."""
    row = rows.get(m, {})
    return (row[a], row[b]) if a in row and b in row else None


def _best_rival(rows, row):
    """(rows["esm"][row], the best of TSV-M / Iso-C / Iso-CTS released,
    picked per seed on the test split: favouring the rival), or None."""
    if row not in rows.get("esm", {}) or not all(m in rows for m in variants_runs.SVD_FAMILY):
        return None
    best = max(variants_runs.SVD_FAMILY, key=lambda m: rows[m]["widened"]["norm"])
    return rows["esm"][row], rows[best]["widened"]


def _verdict(diff, se):
    if abs(diff) <= SE_RULE * se:
        return "level"
    return "ahead" if diff > 0 else "behind"


def _pairs(results, part, pick):
    """{n: [(seed, a_row, b_row, result)]} for every result of `part` where
    pick(rows) gives the two rows (or None)."""
    out = {}
    for r in sorted(results, key=lambda r: (r["n"], r["seed"])):
        if r["part"] != part:
            continue
        ab = pick(r["rows"])
        if ab is not None:
            out.setdefault(r["n"], []).append((r["seed"],) + tuple(ab) + (r,))
    return out


def _summary(items):
    """Per-seed "diff (SE)" cells, mean, SD, seeds ahead and the verdict of
    the mean against the standard error of the mean."""
    diffs = [a["norm"] - b["norm"] for _, a, b, _ in items]
    ses = [_se(r, a, b) for _, a, b, r in items]
    cells = ", ".join("%+.1f (%.1f)" % (d, s) for d, s in zip(diffs, ses))
    mean = float(np.mean(diffs))
    se_mean = float(np.sqrt(np.sum(np.square(ses)))) / len(ses)
    sd = "%.1f" % np.std(diffs, ddof=1) if len(diffs) > 1 else "—"
    ahead = "%d of %d" % (sum(d > 0 for d in diffs), len(diffs))
    return ["%.1f" % np.mean([a["norm"] for _, a, _, _ in items]),
            "%.1f" % np.mean([b["norm"] for _, _, b, _ in items]),
            cells, "%+.1f" % mean, sd, ahead, _verdict(mean, se_mean)]


_HEAD = ("| {what} | tasks | {a} | {b} | difference per seed (SE) | mean | SD over seeds "
         "| seeds ahead | verdict |\n|---|---|---|---|---|---|---|---|---|")


def _table(results, part, what, a, b, groups):
    """One row per (group, task count): `groups` is [(label, pick)]."""
    lines = [_HEAD.format(what=what, a=a, b=b)]
    for label, pick in groups:
        for n, items in sorted(_pairs(results, part, pick).items()):
            lines.append("| %s | %d | %s |" % (label, n, " | ".join(_summary(items))))
    return lines + [""]


def _methods(results):
    return [m[0] for m in variants_runs.METHODS
            if any(m[0] in r["rows"] for r in results if r["part"] == "full")]


def _purify(results):
    ms = _methods(results)
    out = ["## Purification: keep=\"cv\" against the unpurified merge", "",
           "Both searched on validation with the widened bracket; purify cv tunes the keep "
           "ratio (among %s) on the statistics' 4 folds by held-out drift, at the default "
           "scale, before the search. *se_rule 1* (the library default): the largest ratio "
           "whose mean drift excess over the best is within one standard error; *se_rule 0*: "
           "the plain minimum of the same curve; *val-accuracy objective*: the candidate "
           "with the best validation accuracy at the default scale (what the library's "
           "host-score tuner picks). A rule that picks the same ratio as another gets the "
           "same merge." % ", ".join(
               "%g" % c for c in _candidates(results)), ""]
    for plabel in variants_runs.PURIFY:
        out += ["### %s − unpurified" % plabel, ""]
        out += _table(results, "full", "method", plabel, "unpurified",
                      [(m, lambda rows, m=m, p=plabel: _get(rows, m, p, "widened"))
                       for m in ms])
    out += ["### purify cv (se_rule 1) − purify cv, se_rule 0", ""]
    out += _table(results, "full", "method", "se_rule 1", "se_rule 0",
                  [(m, lambda rows, m=m: _get(rows, m, "purify cv", "purify cv, se_rule 0"))
                   for m in ms])
    out += ["Keep ratios chosen (seeds in order):", "",
            "| method | tasks | se_rule 1 | se_rule 0 | val-accuracy objective |",
            "|---|---|---|---|---|"]
    for m in ms:
        for n in sorted({r["n"] for r in results if r["part"] == "full"}):
            rs = sorted((r for r in results if r["part"] == "full" and r["n"] == n
                         and "purify cv" in r["rows"].get(m, {})), key=lambda r: r["seed"])
            if not rs:
                continue
            out.append("| %s | %d | %s |" % (m, n, " | ".join(
                ", ".join("%g" % r["rows"][m][p].get("keep", float("nan")) for r in rs)
                for p in variants_runs.PURIFY)))
    return out + [""] + _tracking(results, ms)


def _candidates(results):
    for r in results:
        for row in r["rows"].values():
            if "keep_curve" in row:
                return [c["keep"] for c in row["keep_curve"]]
    return []


def _spearman(x, y):
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    if np.std(rx) == 0 or np.std(ry) == 0:
        return np.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def _tracking(results, ms):
    """How well each tuning objective tracks test accuracy over the keep
    candidates at the default scale: rank correlation with the test curve
    and the regret of its choice (best candidate's test accuracy minus
    the chosen one's)."""
    objectives = [("held-out drift, se_rule 1", "purify cv"),
                  ("held-out drift, se_rule 0", "purify cv, se_rule 0"),
                  ("validation accuracy", "purify, val-accuracy objective"),
                  ("never purify (keep 1.0)", None)]
    regret = {o: [] for o, _ in objectives}
    rho = {"held-out drift": [], "validation accuracy": []}
    for r in results:
        if r["part"] != "full":
            continue
        for m in ms:
            row = r["rows"].get(m)
            if row is None or "keep_curve" not in row:
                continue
            curve = row["keep_curve"]
            test = {c["keep"]: c["norm"] for c in curve}
            best = max(test.values())
            for o, p in objectives:
                keep = 1.0 if p is None else row[p]["keep"]
                regret[o].append(best - test[keep])
            drift = dict((c[0], c[-1]) for c in row["purify cv"].get("curve", []))
            keeps = [c["keep"] for c in curve]
            tests = [test[k] for k in keeps]
            if all(k in drift for k in keeps):
                rho["held-out drift"].append(_spearman([-drift[k] for k in keeps], tests))
            rho["validation accuracy"].append(_spearman([c["val"] for c in curve], tests))
    out = ["### Which tuning objective tracks accuracy", "",
           "Every candidate keep ratio merged at the default scale and scored on the test "
           "split; over all methods, task counts and seeds: the mean rank correlation "
           "(Spearman) of each objective with that test curve (drift negated), and the "
           "mean regret of each rule's choice (best candidate's normalized test accuracy "
           "minus the chosen one's, points).", ""]
    return out + _tracking_tables(rho, [(o, regret[o]) for o, _ in objectives])


def _tracking_tables(rho, regrets):
    """The two tables of an objective comparison: mean rank correlation per
    objective ({name: [rho per curve]}, undefined ones left out) and, per
    rule ([(name, [regret per curve])]), the mean and worst regret and how
    often it chose the best candidate."""
    out = ["| objective | mean rank correlation with test accuracy |", "|---|---|"]
    for k, v in rho.items():
        v = [x for x in v if not np.isnan(x)]
        out.append("| %s | %s (%d curves) |" % (k, "%.2f" % np.mean(v) if v else "—", len(v)))
    out += ["", "| rule | mean regret | worst regret | choices at the best candidate |",
            "|---|---|---|---|"]
    for name, v in regrets:
        if v:
            out.append("| %s | %.2f | %.2f | %d of %d |" % (
                name, np.mean(v), np.max(v), sum(x <= 1e-9 for x in v), len(v)))
    return out + [""]


def _scale(results):
    ms = _methods(results)
    out = ["## Scale search: widened bracket against the released fixed bracket", "",
           "`libmerge.search(widen=%d)` moves the bracket past an edge where the best point "
           "sits (at most %d times, within the parameter's range); `widen=0` is the released "
           "search on the fixed bracket (task arithmetic [0, 1.5], the others [0, 2]). "
           "Scale found per seed (*moves*: times the bracket moved; *edge*: still at an "
           "edge)." % (variants_runs.WIDEN, variants_runs.WIDEN), ""]
    out += _table(results, "full", "method", "widened", "fixed",
                  [(m, lambda rows, m=m: _get(rows, m, "widened", "fixed")) for m in ms])
    out += ["| method | tasks | widened: scale (moves, edge) | fixed: scale (edge) |",
            "|---|---|---|---|"]
    for m in ms:
        for n in sorted({r["n"] for r in results if r["part"] == "full"}):
            rs = sorted((r for r in results if r["part"] == "full" and r["n"] == n
                         and m in r["rows"]), key=lambda r: r["seed"])
            w = ", ".join("%.3g (%d%s)" % (r["rows"][m]["widened"]["scale"],
                                            r["rows"][m]["widened"]["widened"],
                                            ", edge" if r["rows"][m]["widened"]["at_edge"] else "")
                          for r in rs)
            f = ", ".join("%.3g%s" % (r["rows"][m]["fixed"]["scale"],
                                      " (edge)" if _fixed_edge(r["rows"][m]["fixed"]) else "")
                          for r in rs)
            out.append("| %s | %d | %s | %s |" % (m, n, w, f))
    out += ["", "Ranking of the methods by mean normalized accuracy over seeds:", ""]
    for n in sorted({r["n"] for r in results if r["part"] == "full"}):
        rs = [r for r in results if r["part"] == "full" and r["n"] == n]
        for which in ("fixed", "widened"):
            # A run restricted to some methods (--full-methods) ranks those.
            means = {m: np.mean([r["rows"][m][which]["norm"] for r in rs if m in r["rows"]])
                     for m in ms if any(m in r["rows"] for r in rs)}
            order = sorted(means, key=lambda m: -means[m])
            out.append("- %d tasks, %s: %s" % (n, which, " > ".join(
                "%s %.1f" % (m, means[m]) for m in order)))
    return out + [""]


def _fixed_edge(row):
    lo, hi = row["bracket"]
    return min(abs(row["scale"] - lo), abs(row["scale"] - hi)) <= 0.02 * (hi - lo)


def _esm(results):
    out = ["## ESM", "",
           "Widened searches. The rival is, per seed, the best of TSV-M, Iso-C and Iso-CTS "
           "on the test split (favouring the rival).", ""]
    out += _table(results, "full", "comparison", "esm", "best rival",
                  [("esm − best rival", lambda rows: _best_rival(rows, "widened"))])
    whiten = _pairs(results, "full", lambda rows: (rows["esm"]["whiten rank_aware"],
                                                   rows["esm"]["widened"])
                    if "whiten rank_aware" in rows.get("esm", {}) else None)
    if whiten:
        out += _table(results, "full", "comparison", "esm, whiten rank_aware", "esm released",
                      [("rank_aware − released", lambda rows: (
                          rows["esm"]["whiten rank_aware"], rows["esm"]["widened"])
                        if "whiten rank_aware" in rows.get("esm", {}) else None)])

        def white_vs_rival(rows):
            pair = _best_rival(rows, "widened")
            if pair is None or "whiten rank_aware" not in rows["esm"]:
                return None
            return rows["esm"]["whiten rank_aware"], pair[1]
        out += _table(results, "full", "comparison", "esm, whiten rank_aware", "best rival",
                      [("rank_aware − best rival", white_vs_rival)])
    else:
        out += ["`whiten=\"rank_aware\"` is not in this build's ESM (not landed when this ran): "
                "not measured.", ""]
    return out


ESM_VARIANT_HEAD = "## ESM variants aimed at the gap to the SVD family"


def _variant_tables(results, part, names, suffix):
    """Per ESM variant: against released ESM and against the best rival;
    then the first two variants against each other. `suffix` ends each
    heading (the ViT's tables repeat the MLP's)."""
    out = []
    for v in names:
        out += ["### esm, %s%s" % (v, suffix), ""]
        out += _table(results, part, "comparison", "variant", "esm released",
                      [("variant − released",
                        lambda rows, v=v: _get(rows, "esm", v, "widened"))])
        out += _table(results, part, "comparison", "variant", "best rival",
                      [("variant − best rival", lambda rows, v=v: _best_rival(rows, v))])
    if len(names) > 1:
        a, b = names[0], names[1]
        out += ["### %s − %s%s" % (a, b, suffix), ""]
        out += _table(results, part, "comparison", a, b,
                      [("first − second", lambda rows: _get(rows, "esm", a, b))])
    return out


def _esm_variants(results):
    """Each variant of variants_runs.ESM_VARIANTS against released ESM and
    against the best of TSV-M / Iso-C / Iso-CTS (per seed, on the test
    split: favouring the rival), all widened searches of the same run."""
    names = [v for v, _ in variants_runs.ESM_VARIANTS]
    if not any(v in r["rows"].get("esm", {}) for r in results if r["part"] == "full"
               for v in names):
        return []
    out = [ESM_VARIANT_HEAD, "",
           "ESM's essential subspaces with the last steps changed "
           "(docs/methods/esm.md, \"Spectral combine\"): *combine spectral* keeps A_cat's "
           "row norms as the directions' weights between the two polar factors (TSV-M's "
           "form) instead of setting every direction to the mean singular value; "
           "*scalings off* is `inter_task`, `eig_weighting`, `inter_dim` and "
           "`layer_scaling` all false. Every row searched on validation with the widened "
           "bracket; all rows of a (task count, seed) come from the same run.", ""]
    out += _variant_tables(results, "full", names, "")
    out += ["Scales found (alpha; seeds in order):", "",
            "| tasks | esm released | %s |" % " | ".join(names),
            "|---|---|%s" % ("---|" * len(names))]
    for n in sorted({r["n"] for r in results if r["part"] == "full"}):
        rs = sorted((r for r in results if r["part"] == "full" and r["n"] == n),
                    key=lambda r: r["seed"])
        cells = [", ".join("%.3g" % r["rows"]["esm"]["widened"]["scale"] for r in rs)]
        cells += [", ".join("%.3g" % r["rows"]["esm"][v]["scale"] for r in rs
                            if v in r["rows"]["esm"]) for v in names]
        out.append("| %d | %s |" % (n, " | ".join(cells)))
    return out + [""]


ESM_DEFAULT_HEAD = "## ESM's new default (scalings off): purification and rank-aware whitening"
ESM_DEFAULT_WHAT = ("ESM's new default unpurified, purify cv and whiten rank_aware, beside "
                    "TSV-M / Iso-C / Iso-CTS released")


def _cell_verdicts(results, part, pick):
    """Over every (task count, seed) cell: how many differences are
    ahead / level / behind beyond SE_RULE of their own paired SE."""
    got = {"ahead": 0, "level": 0, "behind": 0}
    for items in _pairs(results, part, pick).values():
        for _, a, b, r in items:
            got[_verdict(a["norm"] - b["norm"], _se(r, a, b))] += 1
    return got


def _reading(results, part, label, pick):
    """One comparison in words: the mean and its verdict per task count,
    then the per-cell verdicts."""
    by_n = _pairs(results, part, pick)
    means = [(n, _summary(items)) for n, items in sorted(by_n.items())]
    cells = _cell_verdicts(results, part, pick)
    return "*%s*: %s at %s tasks (%s); per (task count, seed) cell: %d ahead, %d level, " \
        "%d behind." % (label, " / ".join(m[3] for _, m in means),
                        " / ".join(str(n) for n, _ in means),
                        ", ".join(m[6] for _, m in means),
                        cells["ahead"], cells["level"], cells["behind"])


def _by_count(results, part, pick):
    """{n: (mean difference, verdict of the mean)}."""
    return {n: (float(sm[3]), sm[6]) for n, sm in
            ((n, _summary(items)) for n, items in _pairs(results, part, pick).items())}


def _goals(results, part, bases, names):
    """Issue 25's two goals in words: every purified row not behind its
    unpurified base (`bases`: {purified: base}), and each row at least a
    point above the best rival."""
    def where(by, keep):
        hit = [str(n) for n, mv in sorted(by.items()) if keep(*mv)]
        return "at %s tasks" % " / ".join(hit) if hit else "at no task count"
    out = []
    for v, b in bases.items():
        pick = lambda rows, v=v, b=b: _get(rows, "esm", v, b)  # noqa: E731
        cells = _cell_verdicts(results, part, pick)
        out.append("*%s* is behind *%s* (the mean beyond 2 SE) %s, and in %d of %d (task "
                   "count, seed) cells." % (v, b, where(_by_count(results, part, pick),
                                                     lambda m, vd: vd == "behind"),
                                            cells["behind"], sum(cells.values())))
    for v in names:
        by = _by_count(results, part, lambda rows, v=v: _best_rival(rows, v))
        out.append("*%s* is at least 1 point ahead of the best rival (and ahead beyond 2 SE) "
                   "%s; behind it %s." % (v, where(by, lambda m, vd: m >= 1.0 and vd == "ahead"),
                                          where(by, lambda m, vd: vd == "behind")))
    return "Issue 25's goals: " + " ".join(out)


def _run_paragraph(rs):
    """When, how and under what load the part's cells were measured (the
    run metadata variants.measure keeps)."""
    info = [r["run"] for r in rs if "run" in r]
    if not info:
        return []
    loads = [x for i in info for x in i["load"]]
    cpu = [r["cpu_seconds"] for r in rs if "cpu_seconds" in r]
    commands = sorted({i["command"] for i in info})
    return ["**Run (%s to %s UTC; %d cells, each process one torch thread):** %s. CPU time "
            "(user+sys of the process) per cell %.0f-%.0f s, %.0f s in all; wall %.0f-%.0f s "
            "per cell; 1-minute load average %.1f-%.1f at the cells' starts and ends (a "
            "2-core machine shared with other runs)." % (
                min(i["start"] for i in info), max(i["end"] for i in info), len(info),
                "; ".join("`variants.py %s`" % c for c in commands), min(cpu), max(cpu),
                sum(cpu), min(r["seconds"] for r in rs), max(r["seconds"] for r in rs),
                min(loads), max(loads)), ""]


def _esm_default(results, args):
    """ESM at the library's new default (variants_runs.ESM_DEFAULT_ROWS)
    against its own unpurified / released-whitening rows and against the
    best of the SVD family of the same run (per seed, on the test split:
    favouring the rival)."""
    rs = [r for r in results if r["part"] == "esm_default"]
    if not rs:
        return []
    base = variants_runs.ESM_DEFAULT
    names = [v for v, _, _ in variants_runs.ESM_DEFAULT_ROWS
             if any(v in r["rows"]["esm"] for r in rs)]
    purified = [v for v, _, p in variants_runs.ESM_DEFAULT_ROWS if p and v in names]
    unpurified = {v: next(u for u, e, p in variants_runs.ESM_DEFAULT_ROWS
                          if not p and e == extra)
                  for v, extra, p in variants_runs.ESM_DEFAULT_ROWS if p}
    against = [(v, base) for v in names if v != base]
    against += [(v, unpurified[v]) for v in purified if unpurified[v] != base]
    out = [ESM_DEFAULT_HEAD, "",
           "`esm` at the library's defaults since issue 25's change (`inter_task`, "
           "`eig_weighting`, `inter_dim`, `layer_scaling` false; combine polar; whiten "
           "released): *%s*; *+ purify cv*: `purify={\"keep\": \"cv\"}` with the library's "
           "rule (se_rule 1, held-out drift on the statistics' 4 folds, candidates %s, tuned at "
           "the default scale before the search); *+ whiten rank_aware*: "
           "`whiten=\"rank_aware\"`. The rival is, per seed, the best of TSV-M, Iso-C and "
           "Iso-CTS (all `whiten=\"released\"`) on the test split (favouring the rival). Every "
           "row searched on validation with the widened bracket; all rows of a (task count, "
           "seed) come from the same run (every ESM row in the sections above is released "
           "ESM, scalings on)." % (base, ", ".join(
               "%g" % c for c in variants_runs.keep_candidates(args.smoke))), ""]
    out += ["### Against the unpurified, released-whitening rows", ""]
    out += _table(results, "esm_default", "comparison", "variant", "base",
                  [("%s − %s" % (a, b), lambda rows, a=a, b=b: _get(rows, "esm", a, b))
                   for a, b in against])
    out += ["### Against the best rival", ""]
    out += _table(results, "esm_default", "comparison", "esm", "best rival",
                  [("%s − best rival" % v, lambda rows, v=v: _best_rival(rows, v))
                   for v in names])
    out += ["Keep ratios chosen by purify cv, scales found (alpha) and the best rival "
            "(seeds in order):", "",
            "| tasks | %s | %s | best rival |" % (
                " | ".join("keep: %s" % v for v in purified),
                " | ".join("alpha: %s" % v for v in names)),
            "|---|%s" % ("---|" * (len(purified) + len(names) + 1))]
    for n in sorted({r["n"] for r in rs}):
        got = sorted((r for r in rs if r["n"] == n), key=lambda r: r["seed"])
        cells = [", ".join("%g" % r["rows"]["esm"][v]["keep"] for r in got
                           if v in r["rows"]["esm"]) for v in purified]
        cells += [", ".join("%.3g" % r["rows"]["esm"][v]["scale"] for r in got
                            if v in r["rows"]["esm"]) for v in names]
        cells.append(", ".join(max(variants_runs.SVD_FAMILY,
                                   key=lambda m: r["rows"][m]["widened"]["norm"])
                               for r in got))
        out.append("| %d | %s |" % (n, " | ".join(cells)))
    out += ["", "Measured (task counts: seeds): %s." % _cells(rs), ""]
    out += _run_paragraph(rs)
    out += ["**Reading** (generated from the tables above; a mean is *level* when within "
            "%g SE of the mean, a (task count, seed) cell when within %g of its own paired "
            "SE): " % (SE_RULE, SE_RULE) + " ".join(
        [_reading(results, "esm_default", "%s − %s" % (a, b),
                  lambda rows, a=a, b=b: _get(rows, "esm", a, b)) for a, b in against]
        + [_reading(results, "esm_default", "%s − best rival" % v,
                    lambda rows, v=v: _best_rival(rows, v)) for v in names]), "",
            _goals(results, "esm_default", {v: unpurified[v] for v in purified}, names), ""]
    return out


def _set_measured_line(lines, what, cells):
    """The header's "Measured" list with the line for `what` replaced (or
    added at the list's end)."""
    line = "- %s: %s" % (what, cells)
    start = lines.index("Measured (task counts: seeds):") + 2
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("- "))
    at = next((i for i in range(start, end) if lines[i].startswith("- %s:" % what)), None)
    return lines[:at] + [line] + lines[at + 1:] if at is not None else \
        lines[:end] + [line] + lines[end:]


def write_esm_default_section(results, args):
    """Only the section on ESM's new default (before the ViT section) and
    its line of the header's "Measured" list."""
    path = _replace_section(args, ESM_DEFAULT_HEAD, _esm_default(results, args), before=VIT_HEAD)
    cells = _cells([r for r in results if r["part"] == "esm_default"])
    if cells:
        with open(path) as f:
            lines = f.read().split("\n")
        with open(path, "w") as f:
            f.write("\n".join(_set_measured_line(lines, ESM_DEFAULT_WHAT, cells)))
    return path


def write_esm_variant_section(results, args):
    """Only the ESM-variant section (before the purification sections)."""
    return _replace_section(args, ESM_VARIANT_HEAD, _esm_variants(results),
                            before="## Purification: keep=\"cv\" against the unpurified merge")


NSC_HEAD = "## NSC on LoRA adapters"


def _nsc_mean(results, n, label, key):
    vals = [r["rows"][label][key] for r in results
            if r["part"] == "nsc" and r["n"] == n and label in r["rows"]]
    return "%.3f" % np.mean(vals) if vals else "—"


def _nsc(results, steps):
    """NSC's runs against task arithmetic, as they come out of the
    optimiser and with a global scale searched on validation."""
    if not any(r["part"] == "nsc" for r in results):
        return []
    runs = []
    for r in results:
        runs += [k for k in r["rows"] if r["part"] == "nsc" and k.startswith("nsc")
                 and not k.endswith((", scale searched", ", output_match", ", teacher scale"))
                 and k not in runs]
    sizes = sorted({r["n"] for r in results if r["part"] == "nsc"})
    out = [NSC_HEAD, "",
           "MLP, LoRA rank 8 on the three layers; NSC is label-free (%d steps, the validation "
           "images unlabeled as its batches, held-out early stopping on 256 unseen training "
           "images). *safe defaults*: the drivers' defaults (lambda >= 0, SPSA lr 1e-3 with "
           "the modules after every target frozen; trust region off unless named; init 0.4 "
           "per task, the paper's, unless *init at TA's lambda*: the task-arithmetic lambda "
           "searched below, per task). Task arithmetic (TA): lambda searched on validation "
           "(widened). *scale searched*: the run's coefficients c[m][k] times one global "
           "alpha searched on validation by the same search as TA's lambda (same bracket "
           "[0, 1.5], widening, 15 merges; alpha = 1 is the run's own merge). The search uses "
           "the validation labels, so the scaled rows are no longer label-free; the released "
           "NSC code searches lambda on validation for its baselines (`--linsearch`) but runs "
           "NSC itself at a fixed `--lamda`." % steps, ""]
    def pick(k):
        return lambda rows: (rows[k], rows["task_arithmetic"]) if k in rows else None
    taught = [k for k in runs if any(k + ", teacher scale" in r["rows"] for r in results
                                     if r["part"] == "nsc")]
    if taught:
        out += ["### Teacher scale (the drivers' default, label-free)", "",
                "*teacher scale*: the run's coefficients times one global alpha searched, "
                "by the same search as TA's lambda, on a label-free score: minus the mean "
                "over tasks of the KL divergence from task k's own fine-tuned model (base + "
                "its adapter, through its head) to the merge, on task k's validation images "
                "without their labels (`libmerge.torch.nsc_teacher_score`; "
                "docs/methods/nsc.md \"Teacher scale\"). What `nsc_merge` and "
                "`nsc_merge_spsa` return by default. *TA, teacher scale*: task arithmetic's "
                "lambda searched on the same score instead of validation accuracy.", ""]
        out += _table(results, "nsc", "comparison", "teacher scale", "task arithmetic",
                      [("%s, teacher scale − TA" % k, pick(k + ", teacher scale"))
                       for k in taught] +
                      [("TA, teacher scale − TA", pick("task arithmetic, teacher scale"))])
        out += ["### As optimised, and the other scale rules", ""]
    out += _table(results, "nsc", "comparison", "nsc", "task arithmetic",
                  [("%s − TA" % k, pick(k)) for k in runs])
    out += _table(results, "nsc", "comparison", "nsc, scale searched", "task arithmetic",
                  [("%s, scale searched − TA" % k, pick(k + ", scale searched")) for k in runs])
    matched = [k for k in runs if any(k + ", output_match" in r["rows"] for r in results
                                      if r["part"] == "nsc")]
    if matched:
        out += ["*output_match*: the run's coefficients scaled per module by "
                "`alpha_rule=\"output_match\"` (label-free: the least-squares factor that "
                "brings the merged delta's output on each task's unlabeled calibration rows, "
                "the statistics' %s rows per task, closest to that task's adapter's; "
                "docs/methods/nsc.md \"Label-free scale\")." % run.calibration_rows("mlp"), ""]
        out += _table(results, "nsc", "comparison", "nsc, output_match", "task arithmetic",
                      [("%s, output_match − TA" % k, pick(k + ", output_match"))
                       for k in matched])
    out += ["Scales (means over seeds): TA's searched lambda; per run, the mean NSC "
            "coefficient after optimisation and the searched alpha (their product is the "
            "mean coefficient actually merged).", "",
            "| run | %s |" % " | ".join("%d tasks: coefficient, alpha" % n for n in sizes),
            "|---|%s" % ("---|" * len(sizes)),
            "| task arithmetic (lambda) | %s |" % " | ".join(
                _nsc_mean(results, n, "task_arithmetic", "scale") for n in sizes)]
    for k in runs:
        out.append("| %s | %s |" % (k, " | ".join(
            "%s, %s" % (_nsc_mean(results, n, k, "mean_coefficient"),
                        _nsc_mean(results, n, k + ", scale searched", "scale"))
            for n in sizes)))
    if taught:
        out += ["", "Teacher scale (means over seeds): TA's lambda and each run's alpha.", "",
                "| run | %s |" % " | ".join("%d tasks" % n for n in sizes),
                "|---|%s" % ("---|" * len(sizes)),
                "| task arithmetic (lambda) | %s |" % " | ".join(
                    _nsc_mean(results, n, "task arithmetic, teacher scale", "scale")
                    for n in sizes)]
        out += ["| %s | %s |" % (k, " | ".join(
            _nsc_mean(results, n, k + ", teacher scale", "scale") for n in sizes))
            for k in taught]
    return out + [""]


def _coverage(results):
    """What was measured: a table may hold fewer seeds or task counts
    than asked when a run was stopped (each measurement is kept)."""
    out = ["Measured (task counts: seeds):", ""]
    for part, what in (("full", "scale searches and ESM, methods %s" % ", ".join(
            m[0] for m in variants_runs.METHODS)), ("nsc", "NSC and task arithmetic on LoRA"),
                       ("esm_default", ESM_DEFAULT_WHAT),
                       ("purify_objective", "purification's tuning objectives against "
                        "the test curve (held-out drift, validation accuracy, teacher score)")):
        cells = _cells([r for r in results if r["part"] == part])
        if cells:
            out.append("- %s: %s" % (what, cells))
    for m in variants_runs.METHODS:
        cells = _cells([r for r in results if r["part"] == "full"
                        and "purify cv" in r["rows"].get(m[0], {})])
        if cells:
            out.append("- purify rows, %s: %s" % (m[0], cells))
    return out


def _cells(rs):
    by = {}
    for r in rs:
        by.setdefault(r["n"], []).append(r["seed"])
    return "; ".join("%d tasks: %s" % (n, ", ".join(map(str, sorted(s))))
                     for n, s in sorted(by.items()))


def write(results, args):
    seeds = sorted({r["seed"] for r in results})
    sizes = sorted({r["n"] for r in results})
    secs = sum(r["seconds"] for r in results)
    names = max((r["tasks"] for r in results), key=len, default=[])
    lines = ["# Issue 25's variants against the released methods, over seeds%s" % (
                 " (smoke run)" if args.smoke else ""), "",
             "Generated by `bench/quality/variants.py%s` (measurements: %d settings, %.0f s "
             "of merging and scoring; fine-tuning excluded) from the cached measurements "
             "of task counts %s and seeds %s. %s and %s as in [quality.md](quality.md) "
             "(fine-tunes of %d steps; seed s fine-tunes every task and draws its head "
             "anew on the same pretrained backbone, as [quality_seeds.md](quality_seeds.md)). "
             "Normalized test %% (merged / fine-tuned, averaged over tasks) at the scale "
             "the %d-merge golden-section search picks on validation. *SE*: the paired "
             "standard error of a difference over the test sample; a difference is "
             "*level* when within %g SE (per seed; for the mean, the SE of the mean), "
             "whatever its sign. *SD over seeds*: how much the fine-tunes themselves move "
             "it. The first *n* of these tasks: %s." % (
                 " --smoke" if args.smoke else "", len(results), secs,
                 ", ".join(map(str, sizes)), ", ".join(map(str, seeds)),
                 report.KIND_TITLES["full"], report.KIND_TITLES["lora"],
                 run.FINETUNE_STEPS[args.smoke], 3 if args.smoke else 15, SE_RULE, ", ".join(names)), ""]
    lines += _coverage(results) + [""]
    if any(r["part"] == "full" for r in results):
        lines += _scale(results) + _esm(results) + _esm_variants(results)
    lines += _esm_default(results, args)
    lines += _vit(results) + _whiten_svd(results)
    if any(r["part"] == "full" for r in results):
        lines += _purify(results)
    lines += _objective(results) + _layer(results, args)
    lines += _nsc(results, 10 if args.smoke else 100)
    os.makedirs(args.out, exist_ok=True)
    path = _report_path(args)
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


LAYER_HEAD = "## Purification: per-layer keep against keep=\"cv\""


def _layer(results, args):
    """Per-layer keep ratios against one ratio per model (both keep="cv",
    se_rule 1) and against the unpurified merge."""
    rs = [r for r in results if r["part"] == "purify_layer"]
    if not rs:
        return []
    ms = [m[0] for m in variants_runs.METHODS if any(m[0] in r["rows"] for r in rs)]
    out = [LAYER_HEAD, "",
           "`purify={\"keep\": \"cv\", \"per_layer\": True}` (docs/methods/purify.md, "
           "\"Per-layer keep\"): the same 4 folds and candidates (%s) as keep=\"cv\", the "
           "held-out drift split per 2-D tensor and the standard-error rule (se_rule 1) "
           "applied to each tensor's own curve, with per-layer rank allocation; keep=\"cv\" "
           "picks one ratio for the model (per-model allocation, the default). Every row "
           "searched on validation with the widened bracket; all three rows of a (method, "
           "task count, seed) come from the same run (its own fine-tunes)." % ", ".join(
               "%g" % c for c in variants_runs.keep_candidates(args.smoke)), ""]
    for a, b in (("purify cv, per layer", "purify cv"), ("purify cv, per layer", "widened"),
                 ("purify cv", "widened")):
        out += ["### %s − %s" % (a, "unpurified" if b == "widened" else b), ""]
        out += _table(results, "purify_layer", "method", a,
                      "unpurified" if b == "widened" else b,
                      [(m, lambda rows, m=m, a=a, b=b: _get(rows, m, a, b)) for m in ms])
    out += ["Ratios chosen per layer (fc1, fc2, fc3 ... in the model's order; seeds in "
            "order, `/` between seeds) and keep=\"cv\"'s single ratio:", "",
            "| method | tasks | per layer | keep=\"cv\" |", "|---|---|---|---|"]
    for m in ms:
        for n in sorted({r["n"] for r in rs}):
            got = sorted((r for r in rs if r["n"] == n and m in r["rows"]),
                         key=lambda r: r["seed"])
            if got:
                out.append("| %s | %d | %s | %s |" % (m, n, " / ".join(
                    ", ".join("%g" % v for v in r["rows"][m]["purify cv, per layer"]["keep"]
                              .values()) for r in got),
                    ", ".join("%g" % r["rows"][m]["purify cv"]["keep"] for r in got)))
    return out + [""]


def _report_path(args):
    return os.path.join(args.out, "quality_variants%s.md" % ("-smoke" if args.smoke else ""))


def _replace_section(args, head, section, before=None):
    """Replaces the section headed `head` (up to the next "## " heading) of
    the existing report; a missing one goes before the heading `before`
    (or at the end)."""
    path = _report_path(args)
    with open(path) as f:
        lines = f.read().split("\n")
    if head in lines:
        start = lines.index(head)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
                   len(lines))
    else:
        start = end = lines.index(before) if before in lines else len(lines)
    with open(path, "w") as f:
        f.write("\n".join(lines[:start] + section + lines[end:]))
    return path


OBJECTIVE_HEAD = "## Purification: a label-free teacher objective"


def _objective(results):
    """The purify_objective part: each tuning objective against the test
    curve over the keep candidates (rank correlation, regret of its
    choice), over every method, task count and seed."""
    rs = [r for r in results if r["part"] == "purify_objective"]
    if not rs:
        return []
    rules = [("held-out drift, se_rule 1 (the library's keep=\"cv\")", None),
             ("held-out drift, minimum", lambda c: -c["drift"]),
             ("validation accuracy (labels)", lambda c: c["val"]),
             ("teacher score (no labels)", lambda c: c["teacher"]),
             ("never purify (keep 1.0)", lambda c: float(c["keep"] == 1.0))]
    rho = {"held-out drift": [], "validation accuracy": [], "teacher score": []}
    # regret[rule][method]: best candidate's test accuracy minus the chosen one's
    regret = {name: {} for name, _ in rules}
    methods = []
    for r in rs:
        for m, row in r["rows"].items():
            methods += [m] if m not in methods else []
            curve = row["curve"]
            tests = [c["norm"] for c in curve]
            for name, key in rules:
                keep = row["drift_keep"] if key is None else max(curve, key=key)["keep"]
                regret[name].setdefault(m, []).append(
                    max(tests) - next(c["norm"] for c in curve if c["keep"] == keep))
            rho["held-out drift"].append(_spearman([-c["drift"] for c in curve], tests))
            rho["validation accuracy"].append(_spearman([c["val"] for c in curve], tests))
            rho["teacher score"].append(_spearman([c["teacher"] for c in curve], tests))
    out = [OBJECTIVE_HEAD, "",
           "MLP, full fine-tuning. For each of %s, every candidate keep ratio (%s) merged at "
           "the method's default scale (where keep=\"cv\" tunes) and scored on the test "
           "split, on validation accuracy, by keep=\"cv\"'s held-out drift (the statistics' "
           "4 folds) and by the teacher score (`libmerge.torch.teacher_score`: minus the mean "
           "over tasks of the KL divergence from task k's fine-tuned model to the merge, "
           "through task k's head, on its validation images without their labels). *esm "
           "default*: ESM's library defaults (scalings off); *esm*: the released scalings. "
           "Rank correlation (Spearman) of each objective with the test curve (drift "
           "negated; a curve that is flat under an objective counts as undefined and is left "
           "out) and regret of each rule's choice (best candidate's normalized test accuracy "
           "minus the chosen one's, points). Measured (task counts: seeds): %s." % (
               ", ".join(methods), ", ".join("%g" % c["keep"] for c in rs[0]["rows"][
                   methods[0]]["curve"]), _cells(rs)), ""]
    out += _tracking_tables(rho, [(name, [x for per in regret[name].values() for x in per])
                                  for name, _ in rules])
    out += ["Mean regret per method (points):", "",
            "| rule | %s |" % " | ".join(methods), "|---|%s" % ("---|" * len(methods))]
    for name, _ in rules:
        out.append("| %s | %s |" % (name, " | ".join(
            "%.2f" % np.mean(regret[name][m]) if m in regret[name] else "—" for m in methods)))
    return out + [""]


def write_objective_section(results, args):
    """Only the section on purification's tuning objectives (before the
    per-layer one)."""
    return _replace_section(args, OBJECTIVE_HEAD, _objective(results), before=LAYER_HEAD)


def write_layer_section(results, args):
    """Only the per-layer purification section (before the NSC one)."""
    return _replace_section(args, LAYER_HEAD, _layer(results, args), before=NSC_HEAD)


def write_nsc_section(results, args):
    """Only the NSC section (the last one)."""
    return _replace_section(args, NSC_HEAD, _nsc(results, 10 if args.smoke else 100))


VIT_HEAD = "## ESM's scalings on the ViT (zero-shot-style heads)"


def _vit(results):
    """The vit part: released ESM and its scalings-off variants against
    each other and against the best of the SVD family, as the MLP's ESM
    variant section."""
    if not any(r["part"] == "vit" for r in results):
        return []
    names = [v for v, _ in variants_runs.ESM_VARIANTS]
    out = [VIT_HEAD, "",
           "%s, as in [quality.md](quality.md) (fine-tunes of %d steps, %d calibration "
           "images of 17 tokens per task; seed s fine-tunes every task and draws its head "
           "anew). The MLP's ESM-variant rows above repeated on the ViT, where the paper "
           "tuned ESM's polarized scalings: released ESM, ESM with the scalings off "
           "(combine polar and spectral) and TSV-M, Iso-C and Iso-CTS (whiten=\"released\"), "
           "every row searched on validation with the widened bracket; all rows of a (task "
           "count, seed) come from the same run. The rival is, per seed, the best of TSV-M, "
           "Iso-C and Iso-CTS on the test split." % (
               report.KIND_TITLES["vit-zs"], run.FINETUNE_STEPS[False],
               run.calibration_rows("vit")), ""]
    out += _table(results, "vit", "comparison", "esm released", "best rival",
                  [("released − best rival", lambda rows: _best_rival(rows, "widened"))])
    out += _variant_tables(results, "vit", names, " (ViT)")
    out += ["Scales found (alpha; seeds in order):", "",
            "| tasks | %s |" % " | ".join(["esm released"] + names + list(
                variants_runs.SVD_FAMILY)),
            "|---|%s" % ("---|" * (1 + len(names) + len(variants_runs.SVD_FAMILY)))]
    rs_all = [r for r in results if r["part"] == "vit"]
    for n in sorted({r["n"] for r in rs_all}):
        rs = sorted((r for r in rs_all if r["n"] == n), key=lambda r: r["seed"])
        cells = [", ".join("%.3g" % r["rows"]["esm"][v]["scale"] for r in rs
                           if v in r["rows"]["esm"]) for v in ["widened"] + names]
        cells += [", ".join("%.3g" % r["rows"][m]["widened"]["scale"] for r in rs)
                  for m in variants_runs.SVD_FAMILY]
        out.append("| %d | %s |" % (n, " | ".join(cells)))
    out += ["", "Measured (task counts: seeds): %s." % _cells(rs_all), ""]
    return out


def write_vit_section(results, args):
    """Only the ViT section (after the MLP's ESM-variant section)."""
    return _replace_section(args, VIT_HEAD, _vit(results),
                            before="## Purification: keep=\"cv\" against the unpurified merge")


WHITEN_HEAD = "## Rank-aware whitening for TSV-M, Iso-C and Iso-CTS"


def _whiten_svd(results):
    """whiten="rank_aware" against whiten="released" for the SVD family,
    on the MLP (whiten_svd part) and on the ViT (vit_whiten rows joined to
    the vit part)."""
    parts = [(p, t) for p, t in (("whiten_svd", report.KIND_TITLES["full"]),
                                 ("whiten_lora", report.KIND_TITLES["lora"]),
                                 ("vit", report.KIND_TITLES["vit-zs"]))
             if any(r["part"] == p and any("whiten rank_aware" in row for row in r["rows"].values())
                    for r in results)]
    if not parts:
        return []
    out = [WHITEN_HEAD, "",
           "`whiten=\"rank_aware\"` (docs/methods/svd_family.md, \"Rank-aware whitening\": "
           "directions below the inputs' f32 noise floor dropped, those near it shrunk, "
           "before the polar step) against `whiten=\"released\"` (the papers' code), both "
           "searched on validation with the widened bracket, in the same run.", ""]
    for part, title in parts:
        out += ["### %s" % title, ""]
        out += _table(results, part, "method", "rank_aware", "released",
                      [(m, lambda rows, m=m: _get(rows, m, "whiten rank_aware", "widened"))
                       for m in variants_runs.SVD_FAMILY])
        out += ["Measured (task counts: seeds): %s." % _cells(
            [r for r in results if r["part"] == part
             and any("whiten rank_aware" in row for row in r["rows"].values())]), ""]
    return out


def write_whiten_svd_section(results, args):
    """Only the SVD-family whitening section (before the purification
    sections)."""
    return _replace_section(args, WHITEN_HEAD, _whiten_svd(results),
                            before="## Purification: keep=\"cv\" against the unpurified merge")
