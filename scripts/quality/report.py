#!/usr/bin/python3
"""report.py QUALITY_DIR OUT.md: writes docs/RESULTS.md from the cache of scripts/quality.sh.
report.py --quantizers QUALITY_DIR OUT.md: docs/RESULTS_QUANTIZERS.md, the quantizer kinds on the
shipped teacher (cache of QUALITY_DIR=runs/quantizers scripts/quality.sh; text: quantizers.md).
report.py --teachers QUALITY_DIR OUT.md: writes docs/RESULTS_TEACHERS.md from the caches of the
test teachers beside QUALITY_DIR (<dir>/quality-<name>, TEACHER=... scripts/quality.sh) and
scripts/quality/teachers.md (text).
The prose (findings, grids, what did not work) is scripts/quality/notes.md, inserted as is;
tables, commands, machine and date are generated here."""
import datetime
import glob
import json
import os
import platform
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
Q = OUT = None  # the cache and the output file: set by main (or by a caller: teachers_report.py)


def jload(p):
    try:
        with open(p) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def variant_desc(name):
    if name == "fp":
        return "FP teacher", "32/32"
    fp_checkpoint = name.startswith("fp-")  # an FP checkpoint (e.g. pruned): no quantization
    p = os.path.join(HERE, "variants", name + ".yaml")
    desc, w, a = name, "?", "?"
    with open(p) as f:
        t = f.read()
    m = re.match(r"#\s*(.*)", t)
    if m:
        desc = m.group(1).strip()
    mw = re.search(r"weight_bits:\s*(\d+)", t)
    ma = re.search(r"act_bits:\s*(\d+)", t)
    w = mw.group(1) if mw else "4"
    a = ma.group(1) if ma else "4"
    if fp_checkpoint:
        w = a = "32"
    return desc, "%s/%s" % (w, a)


def fmt(vals, nd=3):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    if len(vals) == 1:
        return ("%." + str(nd) + "f") % vals[0]
    return ("%." + str(nd) + "f ± %." + str(nd) + "f") % (statistics.mean(vals), statistics.stdev(vals))


def rows_for(n_filter, seed_filter=None, min_seeds=1):
    """One row per variant: metrics over the seeds whose sample count is n_filter."""
    names = sorted(os.listdir(os.path.join(Q, "eval"))) if os.path.isdir(os.path.join(Q, "eval")) else []
    order = {"fp": 0}
    names.sort(key=lambda s: (order.get(s, 1 if s.startswith("ptq") else 2 if s.startswith("ref") else 3), s))
    rows = []
    for name in names:
        evs, cmps, fps, seeds = [], [], [], []
        for p in sorted(glob.glob(os.path.join(Q, "eval", name, "s*_n%d.json" % n_filter))):
            tag = os.path.basename(p)[:-5]
            e = jload(p)
            if e is None:
                continue
            seed = int(tag.split("_")[0][1:])
            if seed_filter is not None and seed not in seed_filter:
                continue
            seeds.append(seed)
            evs.append(e)
            fps.append(jload(os.path.join(Q, "evalfp", name, tag + ".json")) or {})
            cmps.append(jload(os.path.join(Q, "cmp", name, tag + ".json")) if name != "fp"
                        else {"rmse": 0.0, "agreement": 1.0})
        if len(evs) < min_seeds:
            continue
        rows.append((name, seeds, evs, [c or {} for c in cmps], fps))  # aligned with seeds: {} for a missing comparison
    return rows


def table(n_filter, title, seed_filter=None, min_seeds=1):
    rows = rows_for(n_filter, seed_filter, min_seeds)
    if not rows:
        return ""
    out = ["### %s" % title, "",
           "| variant | W/A | seeds | FID(judge) | class acc | precision | recall | IS | FID to FP samples | pixel RMSE to FP (same noise) | judge agreement with FP | fine-tune wall | peak RSS | export | UNet part |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, seeds, evs, cmps, fps in rows:
        desc, wa = variant_desc(name)
        ft = jload(os.path.join(Q, "meta", name + ".finetune.json")) or {}
        ex = jload(os.path.join(Q, "meta", name + ".export.json")) or {}
        try:  # the UNet part as `effdm export` prints it
            with open(os.path.join(Q, "logs", name + ".export.log")) as f:
                m = re.search(r"UNet part: (\d+) bytes .*?vs FP32 UNet (\d+) bytes", f.read())
            if m:
                ex["unet_bytes"], ex["unet_fp32_bytes"] = int(m.group(1)), int(m.group(2))
        except OSError:
            pass
        wall = "%.0f s" % ft["wall_s"] if ft.get("wall_s") is not None else "-"
        if ft.get("calib_s"):
            wall += " (calib %.0f s)" % ft["calib_s"]
        rss = "%.0f MiB" % (ft["peak_rss_kb"] / 1024) if ft.get("peak_rss_kb") else "-"
        size = "%.2f MiB" % (ex["file_bytes"] / 2 ** 20) if ex.get("file_bytes") else "-"
        unet = ("%.2f MiB (1/%.2f of FP32)" % (ex["unet_bytes"] / 2 ** 20, ex["unet_fp32_bytes"] / ex["unet_bytes"])
                if ex.get("unet_bytes") else "-")
        out.append("| `%s`: %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            name, desc, wa, ",".join(map(str, seeds)),
            fmt([e.get("fid") for e in evs], 2), fmt([e.get("class_accuracy") for e in evs]),
            fmt([e.get("precision") for e in evs]), fmt([e.get("recall") for e in evs]),
            fmt([e.get("is_mean") for e in evs], 2), fmt([f.get("fid") for f in fps], 2),
            fmt([c.get("rmse") for c in cmps], 4), fmt([c.get("agreement") for c in cmps]),
            wall, rss, size, unet))
    out.append("")
    return "\n".join(out)


DEFAULT_W4A4 = "effdm-epsfit-w4a4"


def paired(n_filter):
    """Per-seed differences of every fine-tuned variant (>= 3 seeds) against the naive PTQ
    variant of the same W/A on the same seeds (same noise): mean ± sd and how many seeds favour
    the variant. The judgement "closer to FP than PTQ" is read here, not from overlapping ± bands."""
    rows = {name: (seeds, evs, cmps, fps) for name, seeds, evs, cmps, fps in rows_for(n_filter, min_seeds=3)}
    out = []
    pairs = []
    for name in rows:
        wa = variant_desc(name)[1]
        if name.endswith("-udfc"):  # pruning with UDFC against the same pruning without it
            pairs.append((name, name[:-len("-udfc")] + "-none"))
        if name.endswith("-q4udfc") and name.count("-") > 2:  # quantization UDFC against the same pruned
            pairs.append((name, name[:-len("-q4udfc")]))      # checkpoint without it (else: vs ptq below)
        if name.startswith("fp-"):
            continue
        ptq = "ptq-w%sa%s" % tuple(wa.split("/"))  # the naive PTQ variant of the same bits
        pairs.append((name, ptq))
        # fine-tuned W4A4 variants also against the recipe's default of session 6 (both gains)
        if name.startswith("effdm-") and wa == "4/4" and name != DEFAULT_W4A4:
            pairs.append((name, DEFAULT_W4A4))
        # a fine-tuned kind against the uniform student of the same bits and against its own PTQ
        for kind in ("-easyquant", "-nupes"):
            if name.startswith("effdm-") and name.endswith(kind):
                pairs.append((name, name[:-len(kind)]))
                pairs.append((name, "ptq-" + name[len("effdm-"):]))
        # rotated (quant.rotate) against the same without rotation, and fine-tuned against its rotated PTQ
        if "-rot64" in name or "-rot16" in name:
            pairs.append((name, name.replace("-rot64", "").replace("-rot16", "")))
        if name.startswith("effdm-") and "-rot64" in name:
            pairs.append((name, "ptq-w%sa%s-rot64" % tuple(wa.split("/"))))
    seen = set()
    pairs = [p for p in pairs if not (p in seen or seen.add(p))]
    for name, base in pairs:
        seeds, evs, cmps, fps = rows[name]
        if name == "fp" or name == base or base not in rows:
            continue
        bseeds, bevs, bcmps, bfps = rows[base]
        common = [s for s in seeds if s in bseeds]
        if len(common) < 3:
            continue
        def col(key, src, bsrc, lower_better, nd=4):
            if any(src[seeds.index(s)].get(key) is None or bsrc[bseeds.index(s)].get(key) is None
                   for s in common):
                return "-"
            d = [src[seeds.index(s)].get(key) - bsrc[bseeds.index(s)].get(key) for s in common]
            better = sum(1 for v in d if (v < 0) == lower_better and v != 0)
            f = "%+." + str(nd) + "f ± %." + str(nd) + "f (%d/%d)"
            return f % (statistics.mean(d), statistics.stdev(d), better, len(d))
        if not out:
            out = ["### Paired against naive PTQ (same seeds, same noise), %d samples per seed" % n_filter, "",
                   "Cell: mean ± sd over seeds of (variant - the `vs` model: naive PTQ at the same bits, or "
                   "for fine-tuned W4A4 variants also `%s`, the recipe's W4A4 model of session 6, or for a "
                   "pruned model with UDFC the same pruning without it); in "
                   "parentheses the seeds on which the variant is closer to FP (lower FID, FID to FP, RMSE; "
                   "higher accuracy, agreement)." % DEFAULT_W4A4, "",
                   "| variant | vs | seeds | ΔFID(judge) | Δclass acc | ΔFID to FP samples | Δpixel RMSE to FP | Δagreement with FP |",
                   "|---|---|---|---|---|---|---|---|"]
        out.append("| `%s` | `%s` | %s | %s | %s | %s | %s | %s |" % (
            name, base, ",".join(map(str, common)), col("fid", evs, bevs, True, 2),
            col("class_accuracy", evs, bevs, False), col("fid", fps, bfps, True, 2),
            col("rmse", cmps, bcmps, True),
            col("agreement", cmps, bcmps, False)))
    return "\n".join(out + [""]) if out else ""


def teacher_sections():
    """The test teachers (scripts/teachers/train_teacher.py), each in its cache
    <dir of Q>/quality-<name> made by TEACHER=... scripts/quality.sh: the same tables."""
    global Q
    main_q, out = Q, []
    for tq in sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(main_q)), "quality-*"))):
        name = os.path.basename(tq)[len("quality-"):]
        Q = tq
        ns = sample_counts()
        part = []
        for n in sorted(ns, reverse=True):
            part.append(table(n, "Test teacher `%s`: every variant, %d samples per seed (mean ± sd over seeds)" % (name, n)))
            part.append(paired(n))
        out += part
    Q = main_q
    return out


def sh(cmd):
    try:
        return subprocess.check_output(cmd, shell=True, text=True, stderr=subprocess.DEVNULL).strip()
    except subprocess.CalledProcessError:
        return "?"


def provenance():
    """The date, commit and machine lines every generated report starts with."""
    return ["- date (UTC): %s" % datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M"),
            "- commit: %s" % sh("git rev-parse --short HEAD"),
            "- machine: %s, %s cores, %s, %s" % (
                sh("lscpu | sed -n 's/^Model name: *//p'"), os.cpu_count(), platform.system(),
                platform.release())]


def sample_counts():
    """The per-seed sample counts N of the evaluations in the cache Q (its s<seed>_n<N>.json files)."""
    return sorted({int(m.group(1)) for p in glob.glob(os.path.join(Q, "eval", "*", "*.json"))
                   for m in [re.search(r"_n(\d+)\.json$", p)] if m})


def notes(name):
    """The prose file scripts/quality/<name> as one part (none when it is absent)."""
    path = os.path.join(HERE, name)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [f.read().rstrip() + "\n"]


def write_out(parts):
    """OUT, written under a temporary name and renamed."""
    with open(OUT + ".tmp", "w") as f:
        f.write("\n".join(parts))
    os.replace(OUT + ".tmp", OUT)


def teachers_main():
    global Q, OUT
    Q, OUT = sys.argv[2], sys.argv[3]
    parts = ["# Quality results: effdm on test teachers of other shapes", "",
             "Generated by `scripts/quality/report.py --teachers` from the caches of "
             "`TEACHER=DIR scripts/quality.sh` (numbers) and `scripts/quality/teachers.md` (text). "
             "Do not edit by hand.", ""] + provenance() + [
             "- protocol: as docs/RESULTS.md (DDIM 20 steps, eta 0, guidance 3.0 - unconditional "
             "teachers: no guidance term -, class-balanced, 1000 samples per seed, judge network "
             "features), FID to FP against 2000 samples of the test teacher itself (seeds 100-101).", ""]
    parts += notes("teachers.md")
    parts += teacher_sections()
    write_out(parts)


def prune_section():
    """The pruned models' sizes (effdm compress logs) and the sampling-speed ratios measured in
    one run (scripts/quality/prune.sh -> meta/prune_speed.json)."""
    out = []
    fl = jload(os.path.join(Q, "meta", "prune_flops.json")) or {}
    def mflop(k):
        return "%.2f" % fl[k] if k in fl else "-"
    for log in sorted(glob.glob(os.path.join(Q, "logs", "prune-ff*.log"))):
        t = open(log, errors="replace").read()
        m = re.search(r"(\d+) of (\d+) FeedForward units (?:and \d+ of \d+ attention heads )?kept .*?\n\s*UNet parameters: (\d+) -> (\d+)", t, re.S)
        if m:
            name = os.path.basename(log)[6:-4]
            out.append("| `%s` | %s of %s | %s -> %s (%.1f%% fewer) | %s -> %s |" % (
                name, m.group(1), m.group(2), m.group(3), m.group(4),
                100 * (1 - int(m.group(4)) / int(m.group(3))), mflop("fp"), mflop(name)))
    if out:
        out = ["### Pruning: sizes (`effdm compress`)", "",
               "UNet work: MFLOP of GEMM work (conv, linear, attention) of one UNet forward of one image, "
               "counted by `effdm sample --profile` (scripts/quality/prune.sh --flops); an export runs the "
               "same GEMM shapes in integers.", "",
               "| pruned checkpoint | FeedForward units kept | UNet parameters | UNet MFLOP per image |",
               "|---|---|---|---|"] + out + [""]
    sp = jload(os.path.join(Q, "meta", "prune_speed.json"))
    if sp:
        s = sp["cpu_seconds_64_images"]
        out += ["### Pruning: sampling speed (64 images, DDIM 20, guidance 3, %d thread, CPU seconds of the "
                "process, the minimum of %d interleaved rounds, one run; %s)" % (sp["threads"], len(sp["all"]["fp"]),
                                                                          sp["cpu"]), "",
                "| model | CPU seconds | ratio unpruned / pruned |", "|---|---|---|",
                "| FP teacher | %.2f | |" % s["fp"],
                "| FP, 30%% of the FeedForward units pruned (UDFC) | %.2f | %.3f |" % (s["fp-ff30"], sp["fp_over_pruned"]),
                "| W4A8 export (`ptq-w4a8`) | %.2f | |" % s["w4a8"],
                "| W4A8 export of the 30%% pruned model (`ptq-w4a8-ff30-udfc`) | %.2f | %.3f |" % (
                    s["w4a8-ff30"], sp["w4a8_over_pruned"]), ""]
    return "\n".join(out)


def quantizers_main():
    """report.py --quantizers Q OUT.md: the quantizer kinds on the shipped teacher (cache Q of
    QUALITY_DIR=Q scripts/quality.sh, text scripts/quality/quantizers.md)."""
    global Q, OUT
    Q, OUT = sys.argv[2], sys.argv[3]
    ns = sample_counts()
    parts = ["# Quality results: the quantizer kinds (uniform, easyquant, nupes) on the shipped teacher", "",
             "Generated by `scripts/quality/report.py --quantizers` from the cache of "
             "`QUALITY_DIR=%s scripts/quality.sh` (numbers) and `scripts/quality/quantizers.md` (text). "
             "Do not edit by hand." % os.path.relpath(Q), ""] + provenance() + [
             "- protocol: as docs/RESULTS.md (DDIM 20 steps, eta 0, guidance 3.0, class-balanced, "
             "judge network features; pixel RMSE and agreement against the FP teacher's samples of the "
             "same seed; FID to FP against 5000 FP samples of seeds 100-104).", ""]
    parts += notes("quantizers.md")
    for n in sorted(ns, reverse=True):
        parts.append(table(n, "Every variant, %d samples per seed (mean ± sd over seeds)" % n))
        parts.append(paired(n))
    parts.append(prune_section())
    write_out(parts)


def main():
    global Q, OUT
    if sys.argv[1] == "--teachers":
        return teachers_main()
    if sys.argv[1] == "--quantizers":
        return quantizers_main()
    Q, OUT = sys.argv[1], sys.argv[2]
    ns = sample_counts()
    parts = ["# Quality results: effdm on the shipped Fashion-MNIST teacher", "",
             "Generated by `scripts/quality/report.py` from the cache of `scripts/quality.sh` "
             "(numbers) and `scripts/quality/notes.md` (text). Do not edit by hand.", ""] + provenance() + [
             "- protocol (every table): DDIM 20 steps, eta 0, guidance 3.0, class-balanced "
             "samples (image i has class i mod 10 and its own noise stream (seed, i)); FID(judge), "
             "IS, precision/recall (k = 3) and class accuracy by `effdm eval` against "
             "`models/zoo/fmnist-ldm/fmnist_test_judge.safetensors`; pixel RMSE (pixels in "
             "[0, 1]) and judge class agreement against the FP teacher's samples of the SAME "
             "seed (same noise) by `effdm compare`; FID to FP samples: FID(judge) "
             "of the same samples against 5000 FP-teacher samples of seeds 100-104 (its own noise, "
             "never an evaluated image's; `effdm stats` of those, then `effdm eval`), the "
             "distance of the model's sample distribution from the teacher's it imitates - "
             "the FP row is the floor of that measure at 1000 samples. With several seeds a cell is "
             "mean ± sample standard deviation over the seeds.",
             "- fine-tune wall: `effdm finetune` under `/usr/bin/time -v` (calibration "
             "included, its share in parentheses), peak RSS likewise; export: the "
             "`effdm export` file (FP autoencoder included).", ""]
    parts += notes("notes.md")
    for n in sorted(ns, reverse=True):
        parts.append(table(n, "Confirmation: every variant with >= 3 seeds, %d samples per seed (mean ± sd over seeds)" % n,
                           min_seeds=3))
        parts.append(paired(n))
        parts.append(table(n, "Every variant at seed 0 (screening), %d samples" % n, seed_filter={0}))
    parts += ["## Exact commands", "",
              "```sh",
              "cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j2",
              "# per variant NAME (scripts/quality/variants/NAME.yaml, run.out set to $Q/runs/NAME):",
              "./build/effdm finetune --config $Q/cfg/NAME.yaml",
              "./build/effdm export --run $Q/runs/NAME --out $Q/models/NAME.safetensors [--epoch best]",
              "./build/effdm sample --model $Q/models/NAME.safetensors --n N --steps 20 --eta 0 --scale 3 --seed S --out $Q/samples/NAME/sS_nN",
              "./build/effdm sample --n N --steps 20 --eta 0 --scale 3 --seed S --out $Q/samples/fp/sS_nN   # FP teacher",
              "./build/effdm eval --samples DIR --ref models/zoo/fmnist-ldm/fmnist_test_judge.safetensors --json out.json",
              "./build/effdm compare $Q/samples/NAME/sS_nN $Q/samples/fp/sS_nN --ref models/zoo/fmnist-ldm/fmnist_test_judge.safetensors --json out.json",
              "# all of it, cached and resumable:",
              "SEEDS=\"0 1 2\" N=1000 scripts/quality.sh fp ptq-w4a4 NAME ...",
              "```", ""]
    write_out(parts)


if __name__ == "__main__":
    main()
