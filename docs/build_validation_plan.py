"""Fill the numbers of ``docs/validation_plan.md`` and render it to ``docs/validation_plan.pdf``.

Numbers come from files, never from hand-typing:

* ``model_weights/hippo_unet.json`` (the weights' sidecar: version, SHA-256, architecture,
  training recipe, training-time validation Dice);
* ``docs/examples/validation_metrics.json`` (Dice and volume error per validation case, measured
  with the shipped weights by ``docs/generate_examples.py``);
* ``docs/examples/test_studies.json`` (volumes and QC flags of the three test studies).

Missing inputs leave a clearly marked PENDING line instead of numbers. The PDF embeds the
SHA-256 of the Markdown it was built from (PDF Keywords ``source-sha256=...`` and the footer),
so a test can tell whether it is stale.

Usage::

    .venv/bin/python docs/build_validation_plan.py          # update the .md, rebuild the PDF
    .venv/bin/python docs/build_validation_plan.py --check  # exit 1 if either is stale
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# This checkout's package and docs/ first (not another checkout's editable install).
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from docgen import DOCS_DIR, REPO_ROOT, rel, replace_blocks, table  # noqa: E402

MARKDOWN = DOCS_DIR / "validation_plan.md"
PDF = DOCS_DIR / "validation_plan.pdf"
SIDECAR = REPO_ROOT / "model_weights" / "hippo_unet.json"
MODEL_CARD = REPO_ROOT / "model_weights" / "MODEL_CARD.md"
VALIDATION = DOCS_DIR / "examples" / "validation_metrics.json"
STUDIES = DOCS_DIR / "examples" / "test_studies.json"
DICOM_PATH = DOCS_DIR / "examples" / "dicom_path_metrics.json"
FONTS = REPO_ROOT / "hippo_scp" / "outputs" / "fonts"

#: Acceptance criteria of a release (section 7 of the plan). Key -> (label, test, threshold).
CRITERIA: list[tuple[str, str, str, float]] = [
    ("dice_anterior.mean", "Mean Dice, anterior", ">=", 0.85),
    ("dice_posterior.mean", "Mean Dice, posterior", ">=", 0.83),
    ("dice_anterior.min", "Worst-case Dice, anterior", ">=", 0.70),
    ("dice_posterior.min", "Worst-case Dice, posterior", ">=", 0.70),
    ("total_error_pct.mean", "Volume bias, total (mean signed error)", "abs<=", 5.0),
    ("total_abs_error_pct.mean", "Mean absolute volume error, total", "<=", 7.5),
    ("anterior_abs_error_pct.mean", "Mean absolute volume error, anterior", "<=", 10.0),
    ("posterior_abs_error_pct.mean", "Mean absolute volume error, posterior", "<=", 10.0),
]

#: Development targets of the model (issue #4, model card): stricter than the release criteria
#: and reported next to them; missing one does not block a release.
TARGETS: list[tuple[str, str, str, float]] = [
    ("dice_anterior.mean", "Mean Dice, anterior", ">=", 0.90),
    ("dice_posterior.mean", "Mean Dice, posterior", ">=", 0.89),
    ("total_abs_error_pct.mean", "Mean absolute volume error, total", "<=", 4.0),
]

PENDING = (
    "**PENDING** — {what} is not committed yet. Run `.venv/bin/python "
    "docs/generate_examples.py` and `.venv/bin/python docs/build_validation_plan.py` once the "
    "final weights are in `model_weights/`."
)


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _dig(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        data = data[part]
    return data


def _passes(value: float, test: str, threshold: float) -> bool:
    if test == ">=":
        return value >= threshold
    if test == "<=":
        return value <= threshold
    return abs(value) <= threshold  # "abs<="


def _signed(value: float) -> str:
    """``+1.2`` / ``-0.3``; ``0.0`` rather than ``-0.0`` for values that round to zero."""
    return "0.0" if round(value, 1) == 0 else f"{value:+.1f}"


def _shown_test(test: str, threshold: float) -> str:
    unit = "" if threshold < 1 else " %"
    shown = {">=": f"≥ {threshold:g}", "<=": f"≤ {threshold:g}"}
    return shown.get(test, f"within ±{threshold:g}") + unit


# ---------------------------------------------------------------------------------- blocks
def block_model() -> str:
    sidecar = _load(SIDECAR)
    if sidecar is None:
        return PENDING.format(what=f"`{rel(SIDECAR)}`")
    from hippo_scp.model.weights import model_version

    arch = sidecar.get("architecture", {})
    training = sidecar.get("training", {})
    prep = sidecar.get("preprocessing", {})
    rows = [
        ("Model version", f"`{model_version(sidecar['sha256'])}`"),
        ("Weights SHA-256", f"`{sidecar['sha256']}`"),
        (
            "Architecture",
            f"3D U-Net, channels {arch.get('channels')}, {arch.get('num_classes')} classes, "
            f"{sidecar.get('parameters', '?'):,} parameters"
            if isinstance(sidecar.get("parameters"), int)
            else f"3D U-Net, channels {arch.get('channels')}",
        ),
        ("Input grid", f"{prep.get('training_spacing_mm')} mm (other spacings are resampled)"),
        ("Intensity normalisation", str(prep.get("intensity", "?"))),
    ]
    for key, label in (
        ("loss", "Loss"),
        ("optimizer", "Optimiser"),
        ("augmentation", "Augmentation"),
        ("batch_size", "Batch size"),
        ("epochs_max", "Epochs (maximum)"),
        ("seed", "Training seed"),
        ("split_seed", "Split seed"),
        ("val_fraction", "Validation fraction"),
    ):
        if training.get(key) is not None:
            rows.append((label, str(training[key])))
    calibration = sidecar.get("calibration")
    if calibration:
        rows.append(
            (
                "Volume calibration",
                f"background logit {calibration['background_logit_offset']:+} "
                f"(chosen on {calibration.get('chosen_on', '?')}; "
                f"uncalibrated weights sha256 {str(calibration.get('source_sha256', '?'))[:12]})",
            )
        )
    return table(["Item", "Value"], rows)


def block_validation() -> str:
    metrics = _load(VALIDATION)
    if metrics is None:
        return PENDING.format(what=f"`{rel(VALIDATION)}`")
    s = metrics["summary"]
    dice = table(
        ["Structure", "Mean Dice", "Median", "Worst case", "Best case"],
        [
            (
                name.capitalize(),
                *(f"{s[f'dice_{name}'][k]:.3f}" for k in ("mean", "median", "min", "max")),
            )
            for name in ("anterior", "posterior", "total")
            if f"dice_{name}" in s
        ],
    )
    hd95 = table(
        ["Structure", "Mean HD95 (mm)", "Median", "Worst case"],
        [
            (
                name.capitalize(),
                *(f"{s[f'hd95_{name}_mm'][k]:.2f}" for k in ("mean", "median", "max")),
            )
            for name in ("anterior", "posterior", "total")
            if f"hd95_{name}_mm" in s
        ],
    )
    volume = table(
        [
            "Structure",
            "Bias (mean signed error)",
            "Mean absolute error",
            "Median absolute",
            "Worst absolute",
        ],
        [
            (
                name.capitalize(),
                f"{_signed(s[f'{name}_error_pct']['mean'])} %",
                f"{s[f'{name}_abs_error_pct']['mean']:.1f} %",
                f"{s[f'{name}_abs_error_pct']['median']:.1f} %",
                f"{s[f'{name}_abs_error_pct']['max']:.1f} %",
            )
            for name in ("anterior", "posterior", "total")
        ],
    )
    lines = [
        f"Model `{metrics['model_version']}`; {metrics['validation_cases']} validation cases "
        f"(split: {metrics['split']}; {metrics['train_cases']} training cases).",
        "",
        "**Dice** (per case, then summarised):",
        "",
        dice,
        "",
        "**Volume error** (predicted − reference, in % of the reference volume):",
        "",
        volume,
    ]
    if "hd95_anterior_mm" in s:
        lines += ["", "**95 % Hausdorff distance** (symmetric, surface to surface):", "", hd95]
    sidecar = _load(SIDECAR) or {}
    recorded = sidecar.get("validation") or {}
    if recorded.get("dice_anterior") is not None:
        lines += [
            "",
            f"Cross-check: the training run recorded mean Dice {recorded['dice_anterior']:.3f} "
            f"(anterior) / {recorded['dice_posterior']:.3f} (posterior) on its validation split "
            f"at epoch {recorded.get('epoch', '?')} (`{rel(SIDECAR)}`).",
        ]
    return "\n".join(lines)


def _criteria_table(
    summary: dict[str, Any], criteria: list[tuple[str, str, str, float]], words: tuple[str, str]
) -> str:
    rows = []
    for key, label, test, threshold in criteria:
        value = float(_dig(summary, key))
        verdict = words[0] if _passes(value, test, threshold) else f"**{words[1]}**"
        if key.startswith("dice"):
            shown = f"{value:.3f}"
        else:
            shown = f"{_signed(value)} %" if test == "abs<=" else f"{value:.1f} %"
        rows.append((label, _shown_test(test, threshold), shown, verdict))
    return table(["Criterion", "Required", "Measured", "Result"], rows)


def block_acceptance() -> str:
    metrics = _load(VALIDATION)
    if metrics is None:
        return PENDING.format(what=f"`{rel(VALIDATION)}`")
    summary = metrics["summary"]
    return (
        _criteria_table(summary, CRITERIA, ("PASS", "FAIL"))
        + "\n\nDevelopment targets of the model (stricter; reported, not release-blocking):\n\n"
        + _criteria_table(summary, TARGETS, ("met", "not met"))
    )


def block_test_studies() -> str:
    studies = _load(STUDIES)
    if studies is None:
        return PENDING.format(what=f"`{rel(STUDIES)}`")
    rows = []
    for name, study in studies["studies"].items():
        v = study["volumes_mm3"]
        rows.append(
            (
                name,
                study["slice_count"],
                f"{v['anterior_mm3']:,.0f}",
                f"{v['posterior_mm3']:,.0f}",
                f"{v['total_mm3']:,.0f}",
                "; ".join(study["qc_flags"]) or "none",
            )
        )
    return (
        f"Model `{studies['model_version']}`. No reference segmentation exists for these "
        "studies: the check is plausibility (QC flags) and the visual review of the report "
        "images.\n\n"
        + table(["Study", "Slices", "Anterior mm³", "Posterior mm³", "Total mm³", "QC flags"], rows)
    )


def block_dicom_path() -> str:
    measured = _load(DICOM_PATH)
    if measured is None:
        return (
            f"**PENDING** — `{rel(DICOM_PATH)}` is not committed yet. Run `.venv/bin/python "
            "docs/validate_dicom_path.py`."
        )
    s = measured["summary"]
    rows = [
        (
            "Through the node (SEG / SR)",
            f"{s['mean_dice_anterior']:.4f}",
            f"{s['mean_dice_posterior']:.4f}",
            f"{s['mean_abs_volume_error_total_pct']:.2f} %",
        ),
        (
            "In-process on the NIfTI arrays",
            f"{s['mean_dice_anterior_in_process']:.4f}",
            f"{s['mean_dice_posterior_in_process']:.4f}",
            "",
        ),
    ]
    return (
        f"Model `{measured['model_version']}`; {s['cases_with_results']} of {s['cases']} "
        f"validation cases returned a SEG and an SR ({s['cases_stored_with_rescale']} stored "
        "with a RescaleSlope because their intensities exceed int16).\n\n"
        + table(
            [
                "Path",
                "Mean Dice anterior",
                "Mean Dice posterior",
                "Mean abs. total-volume error (SR)",
            ],
            rows,
        )
        + f"\n\nThe SEG differs from the in-process labels in "
        f"{s['voxels_differing_from_in_process']} voxels over "
        f"{s['cases_differing_from_in_process']} cases (intensities rounded to integers for "
        "DICOM); the SR's volumes differ from the SEG's voxel counts by at most "
        f"{s['max_sr_minus_seg_volume_mm3']:.1f} mm³."
    )


BLOCKS = {
    "model": block_model,
    "validation-metrics": block_validation,
    "acceptance": block_acceptance,
    "test-studies": block_test_studies,
    "dicom-path": block_dicom_path,
}


def render(text: str) -> str:
    return replace_blocks(text, {name: build() for name, build in BLOCKS.items()})


# ------------------------------------------------------------------------------------ PDF
def source_hash(markdown: str) -> str:
    return hashlib.sha256(markdown.encode("utf-8")).hexdigest()


def pdf_source_hash(pdf: Path = PDF) -> str | None:
    """The ``source-sha256`` a built PDF records (None when absent or unreadable)."""
    try:
        data = pdf.read_bytes()
    except OSError:
        return None
    match = re.search(rb"source-sha256=([0-9a-f]{64})", data)
    return match.group(1).decode() if match else None


def _column_widths(table_html: str) -> list[int]:
    """Column widths in % of the page, proportional to each column's longest cell (clamped)."""
    rows = re.findall(r"<tr>(.*?)</tr>", table_html, flags=re.DOTALL)
    longest: list[int] = []
    for row in rows:
        cells = re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, flags=re.DOTALL)
        for index, cell in enumerate(cells):
            size = min(max(len(re.sub(r"<[^>]+>", "", cell)), 9), 60)
            if index >= len(longest):
                longest.append(size)
            else:
                longest[index] = max(longest[index], size)
    total = sum(longest) or 1
    widths = [max(8, round(100 * size / total)) for size in longest]
    widths[-1] += 100 - sum(widths)
    return widths


def _html(markdown: str) -> str:
    from markdown_it import MarkdownIt

    text = re.sub(r"<!--.*?-->\n?", "", markdown, flags=re.DOTALL)
    # Relative links mean nothing in a PDF: keep their text.
    text = re.sub(r"\[([^\]]+)\]\((?!https?:)[^)]+\)", r"\1", text)
    html = MarkdownIt("commonmark").enable("table").render(text)
    for tag in ("<thead>", "</thead>", "<tbody>", "</tbody>"):
        html = html.replace(tag, "")  # fpdf2's HTML renderer wants bare rows

    def sized(match: re.Match[str]) -> str:
        body = match.group(1)
        widths = iter(_column_widths(body))
        first_row = re.search(r"<tr>(.*?)</tr>", body, flags=re.DOTALL)
        assert first_row is not None
        header = re.sub(
            r"<th[^>]*>", lambda _: f'<th width="{next(widths)}%" align="left">', first_row[1]
        )
        body = body.replace(first_row[1], header, 1)
        body = re.sub(r"<td[^>]*>", '<td align="left">', body)
        return f'<table width="100%">{body}</table>'

    return re.sub(r"<table>(.*?)</table>", sized, html, flags=re.DOTALL)


def build_pdf(markdown: str, target: Path = PDF) -> None:
    from fpdf import FPDF
    from fpdf.fonts import FontFace

    digest = source_hash(markdown)

    class Plan(FPDF):
        def footer(self) -> None:
            self.set_y(-12)
            self.set_font("DejaVu", size=7)
            self.set_text_color(120)
            self.cell(
                0,
                8,
                f"hippo-scp validation plan · built from validation_plan.md "
                f"source-sha256={digest[:16]}… · page {self.page_no()}/{{nb}}",
                align="C",
            )

    pdf = Plan(format="A4")
    pdf.set_creation_date(datetime(2000, 1, 1, tzinfo=UTC))  # reproducible bytes
    pdf.set_title("hippo-scp validation plan")
    pdf.set_author("hippo-scp developers")
    pdf.set_subject("Validation plan of the hippo-scp hippocampus volumetry node")
    pdf.set_keywords(f"source-sha256={digest}")
    pdf.set_creator("docs/build_validation_plan.py (fpdf2)")
    pdf.add_font("DejaVu", "", str(FONTS / "DejaVuSans.ttf"))
    pdf.add_font("DejaVu", "B", str(FONTS / "DejaVuSans-Bold.ttf"))
    pdf.add_font("DejaVu", "I", str(FONTS / "DejaVuSans.ttf"))
    pdf.add_font("DejaVu", "BI", str(FONTS / "DejaVuSans-Bold.ttf"))
    pdf.set_margins(16, 16, 16)
    pdf.set_auto_page_break(True, margin=18)
    pdf.add_page()
    pdf.set_font("DejaVu", size=9.5)
    code = FontFace(family="DejaVu", color=(40, 40, 120))
    pdf.write_html(
        _html(markdown),
        font_family="DejaVu",
        tag_styles={
            "code": code,
            "pre": FontFace(family="DejaVu", size_pt=8.5),
            "h1": FontFace(family="DejaVu", emphasis="BOLD", size_pt=17, color=(20, 20, 20)),
            "h2": FontFace(family="DejaVu", emphasis="BOLD", size_pt=13, color=(20, 20, 20)),
            "h3": FontFace(family="DejaVu", emphasis="BOLD", size_pt=11, color=(20, 20, 20)),
        },
        table_line_separators=True,
    )
    pdf.output(str(target))


# ------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    current = MARKDOWN.read_text(encoding="utf-8")
    fresh = render(current)
    if "--check" in args:
        stale = []
        if fresh != current:
            stale.append(rel(MARKDOWN))
        if pdf_source_hash() != source_hash(current):
            stale.append(rel(PDF))
        if stale:
            print(f"out of date: {', '.join(stale)}; run python docs/build_validation_plan.py")
            return 1
        print("validation plan and PDF are up to date")
        return 0
    if fresh != current:
        MARKDOWN.write_text(fresh, encoding="utf-8")
        print(f"updated {rel(MARKDOWN)}")
    if pdf_source_hash() != source_hash(fresh) or "--force" in args:
        build_pdf(fresh)
        print(f"built {rel(PDF)}")
    else:
        print(f"{rel(PDF)} unchanged")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
