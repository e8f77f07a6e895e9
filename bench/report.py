"""Render bench/results.json as BENCHMARKS.md (``python bench/report.py`` re-renders)."""

from __future__ import annotations

import json
import statistics
import sys
from itertools import pairwise
from pathlib import Path

from imgclf.common.files import write_text

GOALS = {"folder_decode": 1.5, "folder_train_input": 3.0, "unchanged_folder_s": 10.0,
         "data_path_mlp": 5.0,
         "tracking_overhead": 0.02, "noop_repro_s": 2.0, "memory_bytes": 2 * 1024**3,
         "accuracy": 0.94, "accuracy_floor": 0.935, "wall_s": 360, "long_accuracy": 0.945,
         "long_wall_s": 30 * 60,
         "pruning_saving": 0.5, "pruning_gap": 0.003}


def _ratio(result: dict) -> str:
    return (f"{result['ratio_median']:.2f}x "
            f"({result['ratio_min']:.2f}-{result['ratio_max']:.2f})")


def _precision(machine: dict) -> str:
    precision = machine.get("training_precision")
    if precision is None:
        return ""
    return (", training in bf16 (the CPU has AMX)" if precision == "bf16"
            else ", training in float32 (the CPU has no AMX)")


def _verdict(ok: bool, miss: str = "") -> str:
    return "meets the goal" if ok else f"**misses the goal**{': ' + miss if miss else ''}"


def _preset(result: dict | None) -> list[str]:
    lines = ["## The longer preset (`make exp PRESET=long`)", ""]
    goal = (f">= {GOALS['long_accuracy']} test accuracy within "
            f"{GOALS['long_wall_s'] // 60} min")
    if result is None:
        return [*lines, "Not measured yet: `make bench-long` runs it on the benchmark's "
                f"project (about 30 minutes on 2 CPU cores). Goal: {goal}.", ""]
    ok = (result["test_accuracy"] >= GOALS["long_accuracy"]
          and result["wall_s"] <= GOALS["long_wall_s"])
    values = ", ".join(f"`{value}`" for value in result["values"])
    return [*lines, f"`dvc exp run` with {values} took **{result['wall_s'] / 60:.0f} min** "
            f"(training {result['train_s'] / 60:.0f} min) and reached "
            f"**{result['test_accuracy']:.4f}** test accuracy (best validation epoch "
            f"{result['val_best_accuracy']:.4f}). Goal: {goal}: {_verdict(ok)}.", ""]


def _data_path(results: dict) -> list[str]:
    lines = ["## Data path", "",
             "Images per second through forward, backward and an optimizer step, the same model "
             "(channels-last, as the train stage runs it) "
             "and the same flip-augmented batches of 128 from three loaders: the project's batch "
             "loader; a `TensorDataset` + `DataLoader` over the same uint8 tensors, flipping "
             "each batch (the strongest plain-PyTorch baseline); and torchvision's "
             "`FashionMNIST` + `DataLoader` with per-sample `ToTensor`, `RandomHorizontalFlip` "
             "and `Normalize`. Speed-ups are ours against each, median (min-max) of "
             "interleaved rounds.", "",
             "| model | ours img/s | TensorDataset img/s | torchvision img/s "
             "| vs TensorDataset | vs torchvision |", "|---|---:|---:|---:|---:|---:|"]
    for name, result in results.items():
        speed, ratios = result["images_per_s"], result["ratios"]
        lines.append(f"| {name} | {speed['ours']:.0f} | {speed['tensors']:.0f} | "
                     f"{speed['torchvision']:.0f} | {_ratio(ratios['tensors'])} | "
                     f"{_ratio(ratios['torchvision'])} |")
    lines.append("")
    for name, result in results.items():
        strong, weak = (result["ratios"][side]["ratio_median"]
                        for side in ("tensors", "torchvision"))
        goal = GOALS["data_path_mlp"] if name == "mlp" else None
        verdict = (f" Goal >= {goal:g}x: {_verdict(weak >= goal)} against torchvision, "
                   f"{_verdict(strong >= goal)} against the TensorDataset baseline."
                   if goal else "")
        lines.append(f"- {name}: {strong:.2f}x the TensorDataset baseline "
                     f"({'faster' if strong >= 1 else 'slower'}), {weak:.2f}x torchvision's "
                     f"per-sample loader.{verdict}")
    return [*lines, "", "Against per-sample PIL transforms the batch loader wins; against the "
            "strongest plain-PyTorch loader over the same tensors there is little or nothing "
            "left to gain.", ""]


def _search_row(label: str, result: dict) -> str:
    counts = result["counts"]
    return (f"| {label} | {result['trial_epochs']} | {result['seconds']:.0f} | "
            f"{result['best_val_accuracy']:.4f} | {counts['complete']} / {counts['pruned']} |")


def _tuning(r: dict) -> list[str]:
    head = ["| {} | trial-epochs | seconds | best val accuracy | complete / pruned |",
            "|---|---:|---:|---:|---|"]
    lines = ["## Tuning efficiency", ""]
    budget, unpruned = r["budget"], r["pruners"]["none"]
    lines += [f"Each pruner against none at a realistic budget: {budget['n_trials']} trials x "
              f"{budget['epochs']} epochs over the learning rate and batch size, the same "
              "sampler and seed.", "", head[0].format("pruner"), head[1],
              *[_search_row(pruner, result) for pruner, result in r["pruners"].items()], ""]
    for pruner in ("median", "hyperband"):
        result = r["pruners"][pruner]
        saved = 1 - result["trial_epochs"] / unpruned["trial_epochs"]
        gap = unpruned["best_val_accuracy"] - result["best_val_accuracy"]
        ok = saved >= GOALS["pruning_saving"] and gap <= GOALS["pruning_gap"]
        lines.append(f"- {pruner}: {saved:.0%} fewer trial-epochs, a best value "
                     f"{abs(gap) * 100:.2f} points {'below' if gap >= 0 else 'above'} no "
                     f"pruning's. Goal >= 50% fewer, within 0.3 point: {_verdict(ok)}.")
    default = r["default_budget"]
    lines += ["", f"TPE against the Gaussian-process sampler (`tune.sampler: gp`) at the default "
              f"budget ({default['n_trials']} trials x {default['epochs']} epochs, "
              f"{default['pruner']} pruning), one search per sampler seed:", "",
              head[0].format("sampler, seed"), head[1]]
    means = {}
    for sampler, runs in r["samplers"].items():
        lines += [_search_row(f"{sampler}, {seed}", result)
                  for seed, result in enumerate(runs)]
        means[sampler] = statistics.mean(result["best_val_accuracy"] for result in runs)
    gap = means["tpe"] - means["gp"]
    lines += ["", "Mean best validation accuracy: "
              + ", ".join(f"{s} {m:.4f}" for s, m in means.items()) + "; "
              + (f"{'tpe' if gap > 0 else 'gp'} is ahead by {abs(gap) * 100:.2f} points."
                 if gap else f"a tie: of {default['n_trials']} trials, the baseline and "
                 f"{default['startup_trials']} random ones do not depend on the sampler."), ""]
    lines += [f"The two samplers at the realistic budget ({budget['n_trials']} trials x "
              f"{budget['epochs']} epochs, median pruning, seed 0):", "",
              head[0].format("sampler"), head[1],
              *[_search_row(sampler, result)
                for sampler, result in r["samplers_at_budget"].items()], ""]
    baseline = [label for label, result in (*r["pruners"].items(),
                                            *r["samplers_at_budget"].items())
                if result["best_is_baseline"]]
    if baseline:
        lines += [f"In the searches of {', '.join(baseline)} the best trial is the baseline "
                  "(params.yaml's values, trial 0): those searches found nothing better, so "
                  "they show what pruning costs, not how well the sampler searches.", ""]
    return lines


def _recipes(rows: list[dict] | None, notes: list[str] | None = None) -> list[str]:
    lines = ["## Recipes tried", ""]
    if not rows:
        return [*lines, "Not measured yet: `python bench/run.py --only recipes` trains each "
                "candidate change to the default recipe (about 40 minutes).", ""]
    lines += ["The default recipe under three seeds (the spread a change has to beat), then "
              "each change to it on its own, trained on the pipeline's splits at params.yaml's "
              "learning rate and batch size (the tuning baseline). A recipe is chosen on "
              "validation accuracy (6,000 images: a 95% interval of about ±0.6 point); test "
              "accuracy is shown, never used to choose.", "",
              "| change | model | width | epochs | train seconds | val accuracy "
              "| test accuracy |", "|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        change = ", ".join(f"`{k}={v}`" for k, v in row["change"].items()) or "the default"
        change += " †" * bool(row.get("scored_in_bf16"))
        lines.append(f"| {change} | {row.get('model', '')} | {row['width']} | {row['epochs']} "
                     f"| {row['train_s']:.0f} | {row['val_accuracy']:.4f} "
                     f"| {row['test_accuracy']:.4f} |")
    if notes:
        lines += ["", *(f"- {note}" for note in notes)]
    return [*lines, ""]


def _tracking(t: dict) -> list[str]:
    overhead = t["ratio_median"] - 1
    lines = ["## Tracking overhead", "",
             "The training loop with per-epoch MLflow logging (one batched request per epoch) "
             "vs the same loop with tracking off; same data, seed and epochs.", "",
             f"Time with / without tracking: {_ratio(t)}, i.e. {overhead * 100:+.1f} %."]
    share = t["in_mlflow_share"]
    spread = t["ratio_max"] - t["ratio_min"]
    lines += ["", f"Time spent inside MLflow calls (opening the run, its params, every epoch's "
              f"metrics, closing it): {share * 100:.1f} % of the tracked loop "
              f"({statistics.median(t['in_mlflow_s']):.2f} s per run)."]
    noisy = spread > GOALS["tracking_overhead"]
    if noisy:
        lines.append(f"The with/without ratio varies by {spread * 100:.0f} points between "
                     "repeats on this machine, more than the goal, so the time inside MLflow "
                     "decides.")
    ok = share <= GOALS["tracking_overhead"] and (noisy or overhead <= GOALS["tracking_overhead"])
    return [*lines, f"Goal <= 2 %: {_verdict(ok)}.", ""]


def _folders(f: dict | None) -> list[str]:
    lines = ["## Your own images (a folder of JPEGs)", ""]
    if f is None:
        return [*lines, "Not measured yet: `python bench/run.py --only folders`.", ""]
    d, t, m = f["decode"], f["train_input"], f["memory"]
    per_s = t["images_per_s"]
    lines += [
        f"A generated folder of {d['images']} RGB JPEGs, 96 to 400 pixels a side, in ten "
        "classes. torchvision's side is `ImageFolder` + `DataLoader` with `num_workers` = "
        "cores doing the same decode and resize to 64x64.", "",
        f"- **Preprocess** (decode and resize to 64x64 on all cores): "
        f"{d['ours_images_per_s']:.0f} images/s against torchvision's "
        f"{d['torchvision_images_per_s']:.0f}, **{d['speedup']:.2f}x**. Goal >= 1.5x: "
        f"{_verdict(d['speedup'] >= GOALS['folder_decode'])}."
        + ("" if d["speedup"] >= GOALS["folder_decode"] else
           " Both sides decode with Pillow (libjpeg-turbo); preprocess decodes JPEGs at a "
           "reduced DCT scale and its workers write straight into shared memory, but the "
           "entropy decoding of these noisy JPEGs, which no scale shortens, is the bulk of "
           "both sides' work."),
        f"- **Training input** (cnn at 64x64 RGB, batch 128, flip augmentation, forward, "
        f"backward and step): {per_s['store']:.0f} images/s from the memory-mapped store, "
        f"{per_s['torchvision_folder']:.0f} from torchvision's folder loader "
        f"(**{t['vs_torchvision_folder']:.2f}x**; goal >= 3x: "
        f"{_verdict(t['vs_torchvision_folder'] >= GOALS['folder_train_input'])}) and "
        f"{per_s['tensor_dataset']:.0f} from a `TensorDataset` + `DataLoader` over the same "
        f"uint8 tensors in memory (**{t['vs_tensor_dataset']:.2f}x**).",
        f"- **Memory**: the train stage, one epoch over a store of {m['store_gib']:.1f} GiB "
        f"({m['images']} images), peaked at **{m['peak_rss_gib']:.2f} GiB** resident "
        f"({m['seconds']:.0f} s). Goal <= 2 GB: "
        f"{_verdict(m['peak_rss_bytes'] <= GOALS['memory_bytes'])}."]
    if u := f.get("unchanged"):
        lines.append(
            f"- **Unchanged folder**: with {u['files']} files, a second `dvc repro` of the "
            f"first stage (the manifest check; everything after it is skipped) takes "
            f"**{u['noop_s']:.1f} s** (median), {_ratio(u['noop'])} the time of `dvc "
            f"version`; the first ingest took {u['first_s']:.0f} s. Goal: seconds: "
            f"{_verdict(u['noop_s'] <= GOALS['unchanged_folder_s'])}.")
    return [*lines, ""]


def _serving(s: dict | None) -> list[str]:
    lines = ["## Predictions", ""]
    if s is None:
        return [*lines, "Not measured yet: `python bench/run.py --only serving`.", ""]
    load, predict = s["load"], s["predict"]
    return [*lines,
            f"- **Serving** (`make serve`, the champion, one base64 PNG per request): "
            f"{load['clients']} concurrent clients x {load['requests'] // load['clients']} "
            f"requests, **{load['errors']} errors**, p50 **{load['p50_ms']:.1f} ms**, p99 "
            f"**{load['p99_ms']:.1f} ms**, {load['requests_per_s']:.0f} requests/s.",
            f"- **imgclf-predict** on the test split exported as {predict['images']} PNGs: "
            f"**{predict['images_per_s']:.0f} images/s** ({predict['seconds']:.1f} s, model "
            f"loading included); accuracy against the folder names {predict['accuracy']:.4f}, "
            f"the evaluate stage's {predict['evaluate_accuracy']:.4f}.", ""]


def render(r: dict) -> str:
    m, p = r["machine"], r["pipeline"]
    lines = [
        "# Benchmarks",
        "",
        f"Measured by `make bench`, last on {m['date']}: {m['cpu_cores']} CPU cores ({m['cpu']}), "
        f"torch {m['torch']}, Python {m['python']}, device {m['device']}"
        f"{_precision(m)}. "
        "Comparisons run both sides in one process, interleaved, and give the median ratio "
        "with min-max. Raw numbers: `bench/results.json`.",
        "",
    ]
    measured: dict[str, list[str]] = {}
    for section, day in r.get("measured", {}).items():
        measured.setdefault(day, []).append(section)
    if len(measured) > 1:  # `--only` reran some sections
        lines += ["Sections by the day they were last measured: " + "; ".join(
            f"{day}: {', '.join(names)}" for day, names in sorted(measured.items())) + ".", ""]
    if m["device"] == "cpu":
        lines += ["No GPU run is recorded here: this machine has none.", ""]

    ok = p["test_accuracy"] >= GOALS["accuracy"] and p["wall_s"] <= GOALS["wall_s"]
    misses = [f"{p['wall_s'] - GOALS['wall_s']:.0f} s over"] * (p["wall_s"] > GOALS["wall_s"]) \
        + [f"{GOALS['accuracy'] - p['test_accuracy']:.4f} short"] * (
            p["test_accuracy"] < GOALS["accuracy"])
    walls = [p["before_train_s"]] + [t["wall_s"] for t in r["timeline"]]
    epoch_s = [b - a for a, b in pairwise(walls)]
    lines += [
        "## Time to accuracy (the default `make run` recipe)",
        "",
        f"`dvc repro` from nothing (download, preprocess, tune, train, evaluate) took "
        f"**{p['wall_s']:.0f} s** and reached **{p['test_accuracy']:.4f}** test accuracy "
        f"(best validation epoch {p['val_best_accuracy']:.4f}). Goal: >= {GOALS['accuracy']} "
        f"within {GOALS['wall_s']} s: {_verdict(ok, ', '.join(misses))}."
        + (f" Where 0.94 is out of reach, the floor is >= {GOALS['accuracy_floor']} within "
           f"{GOALS['wall_s']} s: " + _verdict(p["test_accuracy"] >= GOALS["accuracy_floor"]
                                             and p["wall_s"] <= GOALS["wall_s"]) + "."
           if not ok else "")
        + f" Its training epochs took {min(epoch_s):.0f}-{max(epoch_s):.0f} s each.",
        "",
        "| stage | seconds |",
        "|---|---:|",
        *[f"| {stage} | {seconds:.0f} |" for stage, seconds in p["stage_s"].items()],
        "",
        "Validation accuracy of the model being trained, by wall time since `dvc repro` "
        "started (from the train stage's own per-epoch history; the test split is scored "
        "once, at the end):",
        "",
        "| after | epochs done | validation accuracy |",
        "|---|---:|---:|",
    ]
    for minutes in (1, 2, 4, 6):
        reached = [t for t in r["timeline"] if t["wall_s"] <= minutes * 60]
        if reached:
            lines.append(f"| {minutes} min | {reached[-1]['epoch']} | "
                         f"{reached[-1]['val_accuracy']:.4f} |")
        else:
            lines.append(f"| {minutes} min | 0 | (downloading, tuning) |")
    lines.append("")
    lines += _preset(r.get("preset"))
    lines += _recipes(r.get("recipes"), r.get("recipe_notes"))

    lines += _data_path(r["data_path"])

    lines += _folders(r.get("folders"))
    lines += _serving(r.get("serving"))
    lines += _tracking(r["tracking"])

    noop = p["noop_repro"]
    noop_s = sorted(noop["b_s"])[len(noop["b_s"]) // 2]
    lines += ["## DVC overhead", "",
              f"A no-op `dvc repro` (everything cached) takes {noop_s:.2f} s (median), "
              f"{_ratio(noop)} the time of `dvc version`. Goal <= 2 s: "
              f"{_verdict(noop_s <= GOALS['noop_repro_s'])}.", ""]

    lines += _tuning(r["pruning"])

    peaks = p["peak_rss_bytes"]
    worst = max(peaks.values()) if peaks else 0
    lines += ["## Memory", "", "Peak resident memory of each stage during the pipeline run.",
              "", "| stage | peak RSS |", "|---|---:|",
              *[f"| {stage} | {rss / 1024**2:.0f} MiB |" for stage, rss in peaks.items()],
              "", f"Goal <= 2 GB: {_verdict(worst <= GOALS['memory_bytes'])}.", ""]

    rows = r["scaling"]
    per_image = [row["epoch_s"] / row["images"] * 1e6 for row in rows]
    lines += ["## Scaling", "", "Seconds per training epoch by training-set size.", "",
              "| share | images | seconds | µs per image |", "|---:|---:|---:|---:|",
              *[f"| {row['fraction']:.0%} | {row['images']} | {row['epoch_s']:.1f} | "
                f"{us:.0f} |" for row, us in zip(rows, per_image, strict=True)],
              "", f"Cost per image varies {min(per_image):.0f}-{max(per_image):.0f} µs: "
              + ("linear." if max(per_image) <= 1.25 * min(per_image)
                 else "not quite linear (fixed per-epoch costs show at small sizes)."), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1]
    results = json.loads((root / "bench" / "results.json").read_text())
    write_text(root / "BENCHMARKS.md", render(results))
    sys.exit(0)
