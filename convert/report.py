"""The verification table and conversion_report.md."""

from __future__ import annotations

from leukedge.edge_app.manifest import FP32, INT8, Manifest
from leukedge.edge_app.settings import DISCLAIMER


def verification_table(manifest: Manifest) -> str:
    """Markdown table, one row per variant, Keras reference first."""
    rows = [
        "| variant | file | size (KB) | input | accuracy | macro-F1 | agreement with Keras | max abs prob diff | status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    reference = manifest.reference
    if reference:
        rows.append(
            f"| keras | {manifest.source_model.file} | {manifest.source_model.bytes / 1024:.0f} "
            f"| float32 | {reference.accuracy:.2%} | {reference.macro_f1:.4f} | - | - | reference |"
        )
    for name, entry in manifest.variants.items():
        check = entry.verification
        figures = (
            (
                f"{check.accuracy:.2%} | {check.macro_f1:.4f} | {check.agreement:.2%} | "
                f"{check.max_abs_prob_diff:.4f}"
            )
            if check
            else "- | - | - | -"
        )
        rows.append(
            f"| {name} | {entry.file} | {entry.bytes / 1024:.0f} | {entry.input.dtype} "
            f"| {figures} | {entry.status} |"
        )
    return "\n".join(rows)


def trust_table(manifest: Manifest) -> str:
    """Markdown: each variant's own thresholds and what its rule does on the test split."""
    rows = [
        "| variant | temperature | conformal threshold (LAC) | OOD threshold | test ECE | coverage | "
        "mean set size | answered | right when answered | unknown | far-out frames unknown |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in manifest.variants.items():
        trust = entry.trust
        if not trust:
            continue
        test, far = entry.extra.get("trust_test"), entry.extra.get("far_out_check", {})
        figures = (
            (
                f"{test['ece_15']:.2%} | {test['coverage']:.2%} | {test['mean_set_size']:.3f} | "
                f"{test['answered']:.2%} | "
                f"{'-' if test['answered_right'] is None else format(test['answered_right'], '.2%')} | "
                f"{test['unknown']:.2%}"
            )
            if test
            else "- | - | - | - | - | -"
        )
        rows.append(
            f"| {name} | {trust['temperature']:.4g} | {trust['conformal']['threshold']:.4g} | "
            f"{trust['ood']['threshold']:.4g} | {figures} | {far.get('unknown', '-')}/{far.get('frames', '-')} |"
        )
    return "\n".join(rows)


def conversion_report(manifest: Manifest) -> str:
    variants = manifest.variants
    sizes = ""
    if FP32 in variants:
        fp32 = variants[FP32].bytes
        sizes = ", ".join(f"{name} {entry.bytes / fp32:.1%}" for name, entry in variants.items())
        sizes = f"\nSize against fp32: {sizes}.\n"
    reference = manifest.reference
    n = reference.n if reference else 0
    calibration = manifest.calibration
    quant = "\n".join(
        f"- {name}: input {e.input.dtype} {e.input.shape} (scale {e.input.scale:g}, "
        f"zero point {e.input.zero_point}), output {e.output.dtype} (scale {e.output.scale:g}, "
        f"zero point {e.output.zero_point})"
        for name, e in variants.items()
    )
    shared = variants[INT8].per_tensor_kernels if INT8 in variants else None
    if shared:
        quant += (
            f"\n\nint8 kernels stored with one scale for the whole kernel instead of one per output "
            f"channel ({len(shared)}; trained on one int8 grid, see `convert/per_tensor.py`): "
            + ", ".join(f"`{name}`" for name in shared)
            + "."
        )
    fit = manifest.extra.get("trust_fit")
    trust = ""
    if fit:
        first = next(e.trust for e in variants.values() if e.trust)
        trust = f"""
## Trust parameters (docs/trust.md)
Temperature {fit["temperature"]:.4g} fit on the val split (NLL {fit["val_nll_before"]:.4f} -> {fit["val_nll_after"]:.4f},
ECE {fit["val_ece_before"]:.2%} -> {fit["val_ece_after"]:.2%}). OOD score: {fit["ood_method"]} on the
{first["ood"]["feature"]}, statistics from {fit["n_train"]} train images (Ledoit-Wolf shrinkage
{fit["ledoit_wolf_shrinkage"]:.3f}), threshold keeping {first["ood"]["retention"]:.1%} of the {fit["n_val"]} val images.
Conformal: LAC at target coverage {first["conformal"]["target_coverage"]:g} on the val split. Each variant's
thresholds come from its own outputs on the val split; test-split figures of each rule:

{trust_table(manifest)}
"""
    source = manifest.source_model
    return f"""# Conversion report

> {DISCLAIMER}

Source: `{source.file}` (sha256 `{source.sha256[:16]}...`),
input {manifest.image_size}x{manifest.image_size} RGB pixels 0..255, labels {", ".join(manifest.labels)}.
Converted by LeukEdge {manifest.leukedge_version} on {manifest.created_utc} in
{manifest.conversion_seconds or 0:.0f} s.
{f"int8 calibration: {calibration.samples} images from the {calibration.source} (seed {calibration.seed})." if calibration else ""}

## Verification on the test split (n={n})
Every variant runs in the LeukEdge runtime (the one the Pi uses) on the same test images as the
Keras model. A variant fails if its accuracy is more than {manifest.max_drop_points} points below Keras.

{verification_table(manifest)}
{sizes}
## Tensors
{quant}

Each file carries TFLite Model Metadata (name, description, version, author, license, input
image spec with normalization mean 0 / std 1 on raw 0..255 pixels, output description) and
`labels.txt` as its associated label file. `manifest.json` holds the hashes.
{trust}"""
