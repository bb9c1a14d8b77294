"""The model card (``MODEL_CARD.md``) written from ``metrics.json`` and the model's JSON: how it was trained, how
to reproduce it, Table 1, per-class and subgroup figures, and the sections other commands measure and record
(``update_metrics``: triage, quality gate, explanations, robustness)."""

from __future__ import annotations

import json
from pathlib import Path

from ml.serve.inference import ORIGINAL_ONLY, model_metadata, served_views
from ml.serve.labels import CLASSES, FULL_NAMES
from ml.study.formats import fmt, pct, rate_words
from ml.study.subgroups import subgroup_lines, weakest_groups_line

# As reported by the seed paper (80:20 split by image, so not comparable to a lesion-grouped test part).
PAPER_REPORTED = {"accuracy": 0.7138, "macro_precision": 0.8577, "macro_recall": 0.6042}


ROW_KEYS = (
    "accuracy",
    "balanced_accuracy",
    "macro_precision",
    "macro_recall",
    "macro_auc",
    "melanoma_recall",
)


def selection(meta: dict) -> str:
    """How the kept weights were chosen, in words, from the recipe and the kept epoch in the model's JSON."""
    recipe, kept = meta["recipe"], meta.get("kept_epoch")
    best = "lowest val loss" if recipe["select_on"] == "val_loss" else f"best val {recipe['select_on']}"
    start = recipe.get("average_from")
    if not start:
        return f"the epoch with the {best} kept (early-stopping patience {recipe['patience']})"
    kept_words = f": the average of epochs {start}-{kept}" if kept else ""
    return (
        f"from epoch {start} on, the running mean of the weights after each epoch (stochastic weight averaging) is "
        f"the candidate, and the candidate with the {best} is kept{kept_words}"
    )


def trained_as(meta: dict) -> str:
    members = meta.get("members")
    if not members:
        return f"trained {meta['created_at']} with seed {meta['recipe']['seed']}"
    seeds = ", ".join(str(m["recipe"]["seed"]) for m in members)
    return f"combined {meta['created_at']} from {len(members)} networks trained with seeds {seeds}"


def constancy(recipe: dict) -> str:
    power = recipe.get("colour_constancy")
    if power is None:
        return ""
    return (
        f"colour constancy inside the model (shades of grey: each image's colour channels scaled to equal "
        f"{power:g}th-power means, its brightness kept, so a light's or camera's colour cast is undone), "
    )


def recipe_line(recipe: dict, meta: dict) -> str:
    return (
        f"layers from `{recipe['trainable_from']}` up fine-tuned, batch norm frozen; "
        f"{recipe['copies']} cached copies of every training image (1 plain + augmented: flips, rotation, zoom, colour"
        f"{'; light colour, compression, blur, resolution' if recipe.get('augmentation') == 'acquisition' else ''}); "
        f"class weights (n/n_c)^{recipe['class_weight_power']}; Adam, peak learning rate {recipe['learning_rate']}, "
        f"warm-up and cosine decay (to {recipe.get('final_learning_rate', 0.0):g} of the peak); up to "
        f"{recipe['epochs']} epochs of batch {recipe['batch_size']}; {selection(meta)}"
    )


def recipe_lines(meta: dict) -> list[str]:
    members = meta.get("members")
    if not members:
        return [f"- Recipe `{meta['recipe']['name']}`: {recipe_line(meta['recipe'], meta)}."]
    lines = [
        f"- An ensemble of {len(members)} such networks (`python -m ml.train.ensemble`). Their frozen blocks up to "
        f"`{meta['recipe']['cut']}` hold the same ImageNet weights, so the served model runs them once, then each "
        "member's fine-tuned upper blocks; its last layer averages the members' logits (one file, one Dense softmax)."
    ]
    for k, m in enumerate(members):
        v = m["val"]
        seed, head_seed = m["recipe"]["seed"], m["recipe"].get("head_seed")
        lines.append(
            f"- Member {k} (seed {seed}, head seed {seed if head_seed is None else head_seed}, "
            f"{m['train_seconds'] / 60:.0f} min): {recipe_line(m['recipe'], m)}. Alone on val at its own operating "
            f"point: accuracy {fmt(v['accuracy'])}, balanced accuracy {fmt(v['balanced_accuracy'])}, macro AUC "
            f"{fmt(v['macro_auc'])}, melanoma recall {fmt(v['melanoma_recall'])}."
        )
    return lines


# Recipe options a member may have been trained with (``ml.train --set``), and their values when off: the
# defaults of ``ml.train.fit.Recipe``, written out because importing ml.train.fit here would load Keras.
SETTINGS_OFF = {"colour_constancy": None, "augmentation": "mild", "mixup": 0.0, "cutmix": 0.0}


def reproduce(meta: dict) -> str:
    """The commands that made this model, in Markdown."""
    members = meta.get("members")
    views = served_views(meta)
    if not members:
        if views == ORIGINAL_ONLY:
            return "`python -m ml.train` (writes the model and its JSON here)"
        return f"`python -m ml.train`, then `python -m ml.train.calibrate --views {','.join(views)}`"
    train = []
    for k, m in enumerate(members):
        r = m["recipe"]
        head = f" --head-seed {r['head_seed']}" if r.get("head_seed") is not None else ""
        settings = "".join(f" --set {key}={r[key]}" for key, off in SETTINGS_OFF.items() if r.get(key, off) != off)
        train.append(
            f"`python -m ml.train --seed {r['seed']}{head} --copies {r['copies']} --epochs {r['epochs']}{settings} "
            f"--out ml/runs/member{k}`"
        )
    files = " ".join(f"ml/runs/member{k}/skinsite.keras" for k in range(len(members)))
    views_flag = "" if views == ORIGINAL_ONLY else f" --views {','.join(views)}"
    int8_flag = " --int8" if meta.get("served_precision") == "int8" else ""
    return f"{', '.join(train)}, then `python -m ml.train.ensemble {files}{views_flag}{int8_flag}`"


def views_words(meta: dict) -> str:
    views = served_views(meta)
    if views == ORIGINAL_ONLY:
        return ""
    return (
        f" Served over {len(views)} test-time views of every image ({', '.join(views)}; "
        "`ml.serve.inference.VIEWS`), their log-probabilities averaged; the operating point was chosen on val that way."
    )


def val_comparison(folder: Path) -> dict | None:
    """``python -m ml.study.compare``'s output kept beside a model (``val_comparison.json``), if there is one."""
    file = folder / "val_comparison.json"
    return json.loads(file.read_text()) if file.exists() else None


def comparison_lines(meta: dict, comparison: dict) -> list[str]:
    """The shipped model's operating point judged on held-out halves of val, and the models compared with it
    that way and not shipped (``python -m ml.study.compare``, stored as val_comparison.json beside the model)."""
    shipped = next((row for row in comparison.values() if row.get("version") == meta["version"]), None)
    if shipped is None:
        return []
    held = shipped["held_out_point"]
    lines = [
        "- Those val figures are measured on the images the point was chosen on. Chosen on one half of val and "
        f"judged on the other (halves split by lesion, both ways, {shipped['repeats']} halvings; `python -m ml.study.compare`, "
        f"`val_comparison.json`): accuracy {fmt(held['accuracy']['mean'])}, balanced accuracy "
        f"{fmt(held['balanced_accuracy']['mean'])}, melanoma recall {fmt(held['melanoma_recall']['mean'])} (means). "
        "The shipped model was itself kept because of its val figures, so any halves of val keep some of that "
        "favour: the comparisons below are close calls, not evidence that the others are worse on new images."
    ]

    def recorded_sum(row: dict) -> float:
        return row["recorded_val"]["accuracy"] + row["recorded_val"]["balanced_accuracy"]

    def seeds(row: dict) -> str:
        """The networks' seeds, each marked with the Keras backend it was trained on where that is not TensorFlow."""
        backends = row.get("backends") or [None] * len(row["seeds"])
        return ", ".join(
            f"{seed}" if backend in (None, "tensorflow") else f"{seed} ({backend})"
            for seed, backend in zip(row["seeds"], backends, strict=True)
        )

    def paired_text(row: dict) -> str:
        pair = row.get("paired_with_reference")
        if not pair or pair["reference"] != shipped["version"]:
            return ""
        return (
            f"; on the same halves it did better on {pair['better_share']:.0%} of them (mean difference "
            f"{pair['mean']:+.3f}, sd {pair['sd']:.3f})"
        )

    for name, row in comparison.items():
        if row is not shipped:
            lines.append(
                f"- Compared so and not shipped: {name}, {row['networks']} networks (seeds {seeds(row)}; "
                f"`{row['version']}`): raw val "
                f"macro AUC {fmt(row['raw_macro_auc'])} against {fmt(shipped['raw_macro_auc'])}, melanoma AUC "
                f"{fmt(row['raw_melanoma_auc'])} against {fmt(shipped['raw_melanoma_auc'])}; accuracy + balanced "
                f"accuracy on held-out halves {fmt(row['held_out_point']['accuracy_plus_balanced']['mean'])} against "
                f"{fmt(held['accuracy_plus_balanced']['mean'])}, at its own point {fmt(recorded_sum(row))} against "
                f"{fmt(recorded_sum(shipped))}" + paired_text(row) + "."
            )
    return lines


def model_card(meta: dict, metrics: dict, comparison: dict | None = None) -> str:
    test, val = metrics["test"], metrics["val"]
    recipe = meta["recipe"]
    lines = [
        f"# Model card: {meta['name']}",
        "",
        f"Version `{meta['version']}`, {trained_as(meta)} "
        f"in {meta['train_seconds'] / 60:.0f} minutes on this project's 2-core CPU (fine-tuning; building the activation "
        f"cache is not counted when it already existed){', operating point chosen again ' + meta['recalibrated_at'] if meta.get('recalibrated_at') else ''}. "
        f"Evaluated {metrics['evaluated_at']}.",
        "",
        "**Screening aid only, never a diagnosis.** The model sorts dermoscopic images of skin lesions into the "
        "seven HAM10000 classes. A clinician decides; a lesion of concern is biopsied or referred whatever the model says.",
        "",
        "## Headline (HAM10000 test part, lesion-grouped, "
        f"{test['n']} images, measured from `ml.predict` output of the served TFLite file)",
        "",
        "| metric | value |",
        "|---|---|",
        *[
            f"| {k.replace('_', ' ')} | {fmt(test[k])} |"
            for k in (
                "accuracy",
                "balanced_accuracy",
                "macro_auc",
                "melanoma_recall",
                "malignant_sensitivity",
                "malignant_specificity",
                "macro_precision",
                "macro_recall",
                "macro_f1",
                "weighted_precision",
                "weighted_recall",
                "weighted_f1",
            )
        ],
        f"| ECE before temperature scaling | {fmt(metrics['ece_before_temperature'])} |",
        f"| ECE after temperature scaling (served) | {fmt(metrics['ece_after_temperature'])} |",
        "",
        "## Per class (test)",
        "",
        "| class | name | support | precision | recall | F1 | AUC |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {c} | {FULL_NAMES[c]} | {test['per_class'][c]['support']} | {fmt(test['per_class'][c]['precision'])} "
            f"| {fmt(test['per_class'][c]['recall'])} | {fmt(test['per_class'][c]['f1'])} | {fmt(metrics['test_auc_per_class'][c])} |"
            for c in CLASSES
        ],
        "",
        "![confusion matrix](confusion_matrix.png) ![ROC curves](roc_curves.png)",
        "",
        *subgroup_lines(metrics.get("subgroups", {})),
        "## Table 1: the seed paper's comparison, every row measured by our code on the same test part",
        "",
        "| approach | accuracy | balanced acc. | macro precision | macro recall | macro AUC | melanoma recall |",
        "|---|---|---|---|---|---|---|",
        "| seed paper, as reported (80:20 split by image; not comparable) | "
        + " | ".join(fmt(PAPER_REPORTED.get(k)) for k in ROW_KEYS)
        + " |",
        *[
            f"| {name} | " + " | ".join(fmt(row.get(k)) for k in ROW_KEYS) + " |"
            for name, row in metrics["table1"].items()
        ],
        "",
        "The SVM's scores are margins, not probabilities: its AUC ranks them, its calibration is not reported.",
        "",
        *safety_sections(metrics),
        "## How it was made",
        "",
        f"- Data: HAM10000 ({meta['images']['train']} train / {meta['images']['val']} val / {meta['images']['test']} test "
        "images, split by lesion). Fit on train, every choice on val, test only for this card.",
        f"- Input {meta['input_size'][1]}x{meta['input_size'][0]} (the images are 200x150), {constancy(recipe)}"
        f"MobileNetV2 1.0 with ImageNet weights, global average pooling, Dense {recipe['units']} ReLU, Dropout "
        f"{recipe['dropout']}, Dense 7 softmax.",
        *recipe_lines(meta),
    ]
    if "logit_adjustment" in meta:
        la = meta["logit_adjustment"]
        lines += [
            f"- Operating point, chosen on val: logits - tau * log(train prior) + b * [class is mel] with "
            f"tau = {la['tau']:.2f}, b = {la.get('melanoma_bias', 0.0):.2f} (keeping val "
            f"melanoma recall >= {recipe.get('min_val_melanoma_recall')}, the best sum of val accuracy and balanced "
            "accuracy), then temperature "
            f"T = {meta['temperature']:.3f} fitted on val by log-likelihood; both folded into the last layer."
            + views_words(meta),
            f"- On val at that point: accuracy {fmt(val['accuracy'])}, balanced accuracy {fmt(val['balanced_accuracy'])}, "
            f"macro AUC {fmt(val['macro_auc'])}, melanoma recall {fmt(val['melanoma_recall'])}.",
            *comparison_lines(meta, comparison or {}),
        ]
    if meta.get("served_precision") == "int8":
        lines.append(
            "- Served as int8: the TFLite file computes the convolutions in 8-bit integers (weights per channel, "
            f"activations per tensor, their ranges measured on {meta.get('int8_calibration_images', 200)} train "
            "images); the dense layers and the softmax "
            "stay float. The operating point and temperature were chosen on that file's own val outputs, and every "
            "figure on this card is measured from it. The Keras file (float16 weights, for Grad-CAM and the quality "
            "gate's features) computes in float and can answer differently on some images "
            "(`ml/models/quantization.json`: the comparison on val that led to the switch)."
        )
    elif meta.get("weights") == "float16":
        lines.append(
            "- Weights rounded to float16 before the operating point was chosen, and stored so in both files (half "
            "their float32 size); the model computes in float32."
        )
    lines += [
        "",
        "![training curves](training_curves.png)",
        "",
        "## Files",
        "",
        *[f"- `{name}`: sha256 `{digest}`" for name, digest in meta["files"].items()],
        "",
        f"Reproduce: {reproduce(meta)}, `python -m ml.study.baselines`, `python -m ml.train --recipe paper`, then "
        "`python -m ml.evaluate --reference paper=ml/runs/paper/paper.tflite`.",
        "",
        "## Limits",
        "",
        "- HAM10000 comes from two centres (Vienna, Queensland), mostly fair skin; other dermatoscopes, skin types and "
        "acquisition settings will do worse. Rare classes (df, vasc, akiec) have few test images, so their figures are "
        "wide-margin estimates.",
        "- Images are 200x150 downscales: fine structure visible at full resolution is lost.",
        "- Not for use without dermoscopy, on non-lesion images, or as the only basis of a clinical decision. The quality "
        "gate catches many such images, not all of them (see its section).",
        *weakest_groups_line(metrics.get("subgroups", {})),
        "",
    ]
    return "\n".join(lines)


# Sections that other commands measure (``ml.study.quality evaluate``, ``ml.study.triage fit``, ``ml.study.explain --bench``) and
# store in metrics.json; re-running this evaluation keeps them while the model version is the same.
SAFETY_KEYS = ("triage", "quality_gate", "explain", "robustness")


def kept_sections(metrics_file: Path, version: str) -> dict:
    if not metrics_file.exists():
        return {}
    old = json.loads(metrics_file.read_text())
    if old.get("model_version") != version:
        return {}
    return {k: old[k] for k in SAFETY_KEYS if k in old}


def update_metrics(models_dir: Path, key: str, value: dict) -> None:
    """Store one section in metrics.json and render the model card again (no predictions are re-run)."""
    if key not in SAFETY_KEYS:
        raise ValueError(f"{key}: not a section this function may write")
    meta = model_metadata(models_dir / "skinsite.tflite")
    metrics_file = models_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    if (
        metrics.get("model_version") != meta["version"]
        or value.get("model_version", meta["version"]) != meta["version"]
    ):
        raise ValueError(f"{metrics_file} or the new {key} section is not for {meta['version']}: run ml.evaluate first")
    metrics[key] = value
    metrics_file.write_text(json.dumps(metrics, indent=2))
    (models_dir / "MODEL_CARD.md").write_text(model_card(meta, metrics, val_comparison(models_dir)))


def safety_sections(metrics: dict) -> list[str]:
    """The triage, quality gate, robustness and explanation sections of the card, from their metrics.json keys
    (if present)."""
    lines: list[str] = []
    triage = metrics.get("triage")
    if triage:
        test = triage["test"]
        rows = [
            ("urgent", "melanoma", "melanoma_sensitivity", "melanoma_specificity"),
            ("urgent", "malignant (mel, bcc, akiec)", "malignant_sensitivity", "malignant_specificity"),
            ("urgent or uncertain", "melanoma", "melanoma_sensitivity", "melanoma_specificity"),
            ("urgent or uncertain", "malignant (mel, bcc, akiec)", "malignant_sensitivity", "malignant_specificity"),
        ]
        key = {"urgent": "urgent", "urgent or uncertain": "urgent_or_uncertain"}
        gate_test = metrics.get("quality_gate", {}).get("ham_test")
        gated = f" ({pct(gate_test['flagged_rate'])} of test)" if gate_test else ""
        lines += [
            "## Risk tiers (triage)",
            "",
            f"Malignant probability = P(mel) + P(bcc) + P(akiec) of the served, temperature-scaled probabilities. "
            f"**urgent** when it is at least {pct(triage['urgent_threshold'])}, **routine** when below "
            f"{pct(triage['routine_threshold'])}, **uncertain** in between and whenever the quality gate flags the image. "
            f"Both thresholds were chosen on val only: urgent as the highest threshold keeping val melanoma sensitivity "
            f">= {triage['targets']['urgent_val_melanoma_sensitivity']:.2f}, routine as the highest keeping "
            f">= {triage['targets']['not_routine_val_malignant_sensitivity']:.2f} of val malignant lesions out of routine "
            "(`python -m ml.study.triage fit`). Measured on the test part from the served probabilities alone, before the gate "
            f"moves the images it flags{gated} to uncertain (95% Wilson intervals):",
            "",
            "| tier rule | positives | sensitivity | specificity |",
            "|---|---|---|---|",
            *[
                f"| {rule} | {who} | {rate_words(test[key[rule]][sens])} | {rate_words(test[key[rule]][spec])} |"
                for rule, who, sens, spec in rows
            ],
            "",
            f"Test tier counts: {', '.join(f'{t} {n}' for t, n in test['tier_counts'].items())} of {test['n']} images "
            f"(val: {', '.join(f'{t} {n}' for t, n in triage['val']['tier_counts'].items())}). Per true class "
            "(urgent / uncertain / routine): "
            + "; ".join(f"{c} {v['urgent']}/{v['uncertain']}/{v['routine']}" for c, v in test["tiers_by_class"].items())
            + ".",
            "",
        ]
        target = triage["targets"]["urgent_val_melanoma_sensitivity"]
        reached = test["urgent"]["melanoma_sensitivity"]["value"]
        if reached < target:
            lines += [
                f"On test, urgent catches {fmt(reached)} of melanomas, short of the {target:.2f} it was set for on val "
                f"({fmt(triage['val']['urgent']['melanoma_sensitivity']['value'])} there): the model ranks test "
                f"melanomas less well than val ones (melanoma AUC {fmt(metrics['test_auc_per_class']['mel'])} on test). "
                "The thresholds were not moved to fit test; a clinician's own judgement stays the safety net.",
                "",
            ]
    gate = metrics.get("quality_gate")
    if gate:
        lines += [
            "## Quality gate (is this a dermoscopic lesion image?)",
            "",
            gate["description"],
            "",
            f"- HAM10000 test images wrongly flagged: **{pct(gate['ham_test']['flagged_rate'])}** "
            f"({gate['ham_test']['flagged']}/{gate['ham_test']['n']}); by reason: "
            + ", ".join(f"{k} {v}" for k, v in gate["ham_test"]["by_reason"].items())
            + f". Val (where the feature threshold was set): {pct(gate['ham_val']['flagged_rate'])}.",
            f"- Images that should be flagged, all sets together: **{pct(gate['non_dermoscopic_flagged_rate'])}** "
            'flagged; per set below ("either": no right answer, reported and not scored).',
            "",
            "| set | should be | images | flagged | main reasons |",
            "|---|---|---|---|---|",
            *[
                f"| {c['name']} | {c['expect']} | {c['n']} | {pct(c['flagged_rate'])} | "
                + ", ".join(f"{k} {v}" for k, v in list(c["by_reason"].items())[:3])
                + " |"
                for c in gate["categories"]
            ],
            "",
        ]
        for note in gate.get("notes", []):
            lines += [note, ""]
    robustness = metrics.get("robustness")
    if robustness:
        rows = robustness["changes"]
        lines += [
            "## Robustness to acquisition changes",
            "",
            f"Every {robustness['part']} image changed as another dermatoscope, light or camera might change it, "
            f"and the served file measured on each changed copy of all {robustness['n']} images at its served operating "
            "point (`python -m ml.study.robustness --record`). Measured only: nothing was chosen on it. There are no images "
            "from other sources here; this shows which differences in acquisition the figures above do not survive.",
            "",
            "| change | accuracy | balanced acc. | macro AUC | melanoma recall | answers changed |",
            "|---|---|---|---|---|---|",
            *[
                f"| {r['change']} | {fmt(r['accuracy'])} | {fmt(r['balanced_accuracy'])} | {fmt(r['macro_auc'])} | "
                f"{fmt(r['melanoma_recall'])} | {pct(r['answers_changed'])} |"
                for r in rows
            ],
            "",
        ]
        unchanged, changed = rows[0], rows[1:]
        if changed:
            auc_moves = max(abs(r["macro_auc"] - unchanged["macro_auc"]) for r in changed)
            low = min(changed, key=lambda r: r["melanoma_recall"])
            high = max(changed, key=lambda r: r["melanoma_recall"])
            most = max(changed, key=lambda r: r["answers_changed"])
            lines += [
                f"Macro AUC moves by at most {auc_moves:.3f} from the unchanged images'; melanoma recall ranges from "
                f"{fmt(low['melanoma_recall'])} ({low['change']}) to {fmt(high['melanoma_recall'])} ({high['change']}) "
                f"against {fmt(unchanged['melanoma_recall'])}; up to {pct(most['answers_changed'])} of the answers "
                f"change ({most['change']}).",
                "",
            ]
    explain = metrics.get("explain")
    if explain:
        lines += [
            "## Grad-CAM and gate cost (worker)",
            "",
            f"One `Explainer.explain` call (one LiteRT call on the companion file for the probabilities and the "
            f"last activations, Grad-CAM of the predicted class in numpy, the gate, the overlay): p50 "
            f"{explain['ms_per_image_p50']:.1f} ms, p95 {explain['ms_per_image_p95']:.1f} ms per image (the model call "
            f"alone p50 {explain.get('model_call_ms_p50', float('nan')):.1f} ms) on this "
            f"project's {explain['cpu_count']}-core CPU; resident memory {explain['rss_mb_after_load']:.0f} MiB after "
            f"loading the companion file and the gate, with no TensorFlow in the process "
            "(`python -m ml.study.explain --bench --record`).",
            "",
        ]
    return lines
