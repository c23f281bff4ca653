#!/usr/bin/env python
"""Choose the OOD retention on the VALIDATION split under the robustness shifts.

    python scripts/choose_ood_retention.py models/model_int8.tflite
    python scripts/choose_ood_retention.py runs/default/tflite/model_int8.tflite \\
        --retentions 0.99,0.97,0.95,0.945,0.94 --json retention.json

For every shift and severity of `edge-bench robustness` (and the clean images) it runs the model
once on the val images, then, for each candidate retention, sets the OOD threshold as
edge-convert would (the finite-sample quantile of the model's own clean val scores) and applies
the model's own conformal rule and the app's quality gate. It prints, per retention, the share
of clean frames answered and the worst answered-wrong share over all conditions, and names the
largest retention at which no condition answers more than --max-wrong of its frames wrongly.
Only the val split is read: the test split stays for reporting. Convert with the chosen value
(`edge-convert --ood-retention R`) when the script says so (`convert_again` in the JSON;
scripts/quickstart does it): when the choice is below the model's own retention and moves its
threshold (see `advise`). The released default came from this script.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from leukedge.benchmarks.evaluation import load_rgb_images, resolve_eval_set
from leukedge.benchmarks.models import ModelDiscoveryError, discover_models
from leukedge.benchmarks.options import output_option
from leukedge.benchmarks.robustness.evaluation import (
    load_models,
    outcome_fractions,
    run_condition,
)
from leukedge.benchmarks.robustness.settings import RobustnessSettings, conditions
from leukedge.convert.trust_fit import FitError, conformal_quantile
from leukedge.edge_app.clitools import FiniteFloat
from leukedge.train.dataset import DatasetError


def collect(model, eval_set, images) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Probabilities, OOD scores and gate rejects of every condition, computed once."""
    outputs = {}
    for condition in tqdm(conditions(RobustnessSettings()), desc="conditions", unit="condition"):
        seen = run_condition(condition, [model], eval_set, images, RobustnessSettings().seed)
        key = f"{condition.name} {condition.severity}" if condition.shift else "clean"
        outputs[key] = (seen.probabilities[id(model)], seen.scores[id(model)], seen.rejected)
    return outputs


def advise(chosen_row: dict | None, current) -> tuple[bool, str]:
    """Whether to convert again at the chosen retention (only if that gives the file this table
    describes), and why, in words.

    Only a lower retention does: edge-convert sets the int8 OOD branch's ranges from the threshold
    at its default retention or a higher one in use (convert.trust_fit.range_threshold), so a higher
    retention would change the int8 scores the table was made from (seed 2 of docs/trust.md: 580
    in the table, 547 in the file). Between retentions at or below the default the scores stay
    the same and the table is exact; from above the default it is close, and a lower retention
    only refers more. Two retentions can also give one threshold (a quantile of a few hundred
    scores), and then there is nothing to convert.
    """
    if chosen_row is None:
        return False, f"kept at {current.retention:g}"
    if math.isclose(chosen_row["threshold"], current.threshold, rel_tol=1e-6):
        return False, "the choice gives the same threshold, nothing to convert again"
    if chosen_row["retention"] > current.retention:
        return False, (
            f"kept at {current.retention:g}: a higher retention would move the int8 OOD ranges, "
            "and this table would not describe the file converted again"
        )
    return True, f"convert again with --ood-retention {chosen_row['retention']:g}"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "--retentions",
    default="0.99,0.98,0.97,0.96,0.955,0.95,0.945,0.94,0.93,0.92,0.90",
    show_default=True,
    help="Comma-separated candidate retentions.",
)
@click.option(
    "--max-wrong",
    default=0.03,
    show_default=True,
    type=FiniteFloat(0, 1),
    help="Largest share of a condition's frames that may be answered wrongly.",
)
@output_option("--json", "json_out", "Also write the table and the choice as JSON.")
def main(model: Path, retentions: str, max_wrong: float, json_out: Path | None) -> None:
    """Print the retention table and the chosen retention (see the module docstring)."""
    try:
        candidates = sorted({float(r) for r in retentions.split(",")}, reverse=True)
    except ValueError:
        candidates = []
    if not candidates or not all(0 < r < 1 for r in candidates):  # also refuses nan
        raise click.BadParameter(
            f"{retentions!r}: give shares between 0 and 1, like 0.97,0.95",
            param_hint="--retentions",
        )
    try:
        entries = discover_models([model])
        eval_set = resolve_eval_set(None, entries, split="val")
    except (ModelDiscoveryError, DatasetError) as error:
        raise click.ClickException(str(error)) from None
    (loaded,) = load_models(entries, eval_set, threads=None)
    if not loaded.ok or loaded.rule.trust is None:
        raise click.ClickException(
            f"{model}: {loaded.error or 'no trust parameters to re-threshold'}"
        )
    outputs = collect(loaded, eval_set, load_rgb_images(eval_set))
    clean_scores = outputs["clean"][1]
    rows = []
    for retention in candidates:
        try:
            threshold = conformal_quantile(clean_scores, retention, f"--retentions {retention:g}")
        except FitError as error:
            raise click.ClickException(str(error)) from None
        trust = replace(
            loaded.rule.trust, ood=replace(loaded.rule.trust.ood, threshold=float(threshold))
        )
        rule = replace(loaded.rule, trust=trust)
        shares = {
            key: outcome_fractions(*rule.decide(p, s), loaded.y_true, r)
            for key, (p, s, r) in outputs.items()
        }
        worst = max(shares, key=lambda key: shares[key]["answered_wrong"])
        rows.append(
            {
                "retention": retention,
                "threshold": float(threshold),
                "clean_answered": shares["clean"]["answered_right"]
                + shares["clean"]["answered_wrong"],
                "worst_condition": worst,
                "worst_answered_wrong": shares[worst]["answered_wrong"],
                "conditions_over": sum(v["answered_wrong"] > max_wrong for v in shares.values()),
            }
        )
    click.echo(
        f"{model.name}, {eval_set.describe()}, {len(outputs)} conditions, max wrong {max_wrong:.0%}"
    )
    click.echo(
        "| retention | OOD threshold | clean answered | worst answered wrong | conditions over |"
    )
    click.echo("|---|---|---|---|---|")
    for row in rows:
        click.echo(
            f"| {row['retention']:g} | {row['threshold']:.0f} | {row['clean_answered']:.1%} | "
            f"{row['worst_answered_wrong']:.1%} ({row['worst_condition']}) | {row['conditions_over']} |"
        )
    chosen_row = next((row for row in rows if row["conditions_over"] == 0), None)
    chosen = chosen_row["retention"] if chosen_row else None
    current = loaded.rule.trust.ood
    click.echo(
        f"chosen: {chosen:g}"
        if chosen is not None
        else "chosen: none of the candidates meets --max-wrong"
    )
    convert_again, advice = advise(chosen_row, current)
    click.echo(
        f"this model: retention {current.retention:g}, OOD threshold {current.threshold:.0f}; {advice}"
    )
    if json_out:
        json_out.write_text(
            json.dumps(
                {
                    "model": str(model),
                    "split": "val",
                    "n_images": len(clean_scores),
                    "max_wrong": max_wrong,
                    "rows": rows,
                    "chosen": chosen,
                    "current_retention": current.retention,
                    "current_threshold": current.threshold,
                    "convert_again": convert_again,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
