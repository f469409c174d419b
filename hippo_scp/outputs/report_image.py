"""The one-page visual report: rendered with Pillow, stored as an RGB Secondary Capture.

The page is for a reader scrolling through a study in OHIF, so it must be legible at a glance
at typical viewport sizes: large type, one volume table, a montage of the slices with coloured
contours of both labels, the QC flags and an explicit "NOT FOR DIAGNOSTIC USE" line.

Fonts are shipped with the package (DejaVu Sans, ``outputs/fonts``) so the image renders the
same on every host, whatever fonts the container has; Pillow's built-in bitmap font would be
unreadable at this size.
"""

from __future__ import annotations

import datetime
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import PersonName
from scipy import ndimage

from hippo_scp.outputs.identity import (
    ANTERIOR_STRUCTURE,
    NOT_FOR_DIAGNOSTIC_USE,
    POSTERIOR_STRUCTURE,
    REPORT_SERIES_DESCRIPTION,
    REPORT_SERIES_NUMBER,
    OutputIdentity,
    reference_header,
    series_created_now,
)
from hippo_scp.pipeline.measurement import HippocampusVolumes
from hippo_scp.pipeline.prior_comparison import PriorComparison, PriorLookup

WIDTH = 1024
HEIGHT = 1024
MONTAGE_COLUMNS = 6
MONTAGE_ROWS = 2

_BACKGROUND = (18, 20, 24)
_PANEL = (34, 38, 46)
_TEXT = (235, 235, 235)
_MUTED = (160, 166, 176)
_WARN = (255, 196, 0)
_OK = (110, 200, 120)
_ALERT_BG = (170, 20, 30)


@lru_cache(maxsize=16)
def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    path = resources.files("hippo_scp.outputs") / "fonts" / name
    with resources.as_file(path) as real_path:
        return ImageFont.truetype(str(real_path), size)


@dataclass(frozen=True)
class PriorReport:
    """The "prior examination" block: a comparison, or one line saying why there is none."""

    comparison: PriorComparison | None
    #: printed instead of the table when there is no comparison (why not)
    note: str = ""

    @classmethod
    def of(
        cls, lookup: PriorLookup | None, comparison: PriorComparison | None
    ) -> PriorReport | None:
        """None when no prior source was asked (the block is not drawn at all)."""
        if lookup is None:
            return None
        if comparison is not None:
            return cls(comparison)
        if lookup.status in ("found", "none"):
            return cls(None, "No earlier examination with HippoAI results in the PACS.")
        if lookup.status == "unavailable":
            return cls(None, f"Not compared: {lookup.reason or 'the PACS cannot be asked'}.")
        return cls(None, "Not compared: the PACS query for earlier results failed.")

    def heading(self) -> str:
        """``Prior 2019-01-19 (1.0 years earlier)``."""
        c = self.comparison
        if c is None:
            return "Prior examination"
        date = c.prior.study_date.isoformat() if c.prior.study_date else "date not recorded"
        days = c.interval_days
        if days is None:
            when = ""
        elif days == 0:
            when = " (same day)"
        elif days < 2 * 31:
            when = f" ({days} days earlier)"
        elif days < 365:
            when = f" ({days / 30.44:.0f} months earlier)"
        else:
            when = f" ({days / 365.25:.1f} years earlier)"
        return f"Prior {date}{when}"

    def footnote(self) -> str:
        """Yearly rate (when the interval allows one) and the model caveat."""
        c = self.comparison
        if c is None:
            return ""
        parts = []
        rate = c.annual_total_change_pct
        if rate is not None:
            parts.append(f"total {rate:+.1f} %/year")
        if not c.same_model:
            parts.append("prior by another model")
        if c.prior_count > 1:
            parts.append(f"latest of {c.prior_count} exams")
        return "; ".join(parts)


@dataclass(frozen=True)
class ReportContent:
    """Everything printed on the page (kept apart from rendering so it can be unit-tested)."""

    patient_name: str
    patient_id: str
    patient_age: str
    patient_sex: str
    study_date: str
    series_description: str
    volumes: HippocampusVolumes
    qc_flags: Sequence[str]
    model_version: str
    weights_sha256: str
    software_version: str
    #: the model's measured volume error (see :func:`describe_model_error`); may be empty
    model_error_lines: Sequence[str] = ()
    #: the comparison with the prior examination (None: not asked, block not drawn)
    prior: PriorReport | None = None
    generated: str = field(
        default_factory=lambda: datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    )


def _person_name(value: object) -> str:
    """Readable "FAMILY, Given" from a PN; prefers the alphabetic group (the shipped font has
    Latin, Greek and Cyrillic glyphs but no CJK ideographs)."""
    if value is None or str(value) == "":
        return "not recorded"
    pn = value if isinstance(value, PersonName) else PersonName(str(value))
    group = pn.alphabetic or pn.ideographic or pn.phonetic or str(pn)
    parts = [p.strip() for p in str(group).split("^")]
    family = parts[0] if parts else ""
    given = " ".join(p for p in parts[1:3] if p)
    return f"{family}, {given}" if family and given else (family or given or str(pn))


def _age(value: object) -> str:
    text = str(value or "").strip()
    if len(text) == 4 and text[:3].isdigit() and text[3] in "DWMY":
        unit = {"D": "days", "W": "weeks", "M": "months", "Y": "years"}[text[3]]
        return f"{int(text[:3])} {unit}"
    return text or "not recorded"


def _sex(value: object) -> str:
    text = str(value or "").strip().upper()
    return {"M": "male", "F": "female", "O": "other"}.get(text, text or "not recorded")


def _age_sex(age: str, sex: str) -> str:
    missing = "not recorded"
    return missing if age == missing and sex == missing else f"{age} / {sex}"


def _date(value: object) -> str:
    text = str(value or "").strip()
    if len(text) == 8 and text.isdigit():
        return f"{text[:4]}-{text[4:6]}-{text[6:]}"
    return text or "not recorded"


def describe_model_error(metadata: Mapping[str, Any] | None) -> tuple[str, ...]:
    """Two report lines on what one volume is worth, from the weights' sidecar (the
    out-of-fold volume error that ``hippo-scp calibrate`` recorded); none if it is absent.

    Why on the report: a reader comparing two examinations needs to know that a few percent
    of change in a part's volume is within the model's error, not atrophy.
    """
    try:
        stats = metadata["calibration"]["out_of_fold_volume_error_pct"]  # type: ignore[index]
        n = int(stats["n_cases"])
        total, ant, post = stats["total"], stats["anterior"], stats["posterior"]
        line2 = (
            f"total ±{float(total['median_abs']):.1f} % "
            f"(90 % of cases: ±{float(total['p90_abs']):.0f} %), "
            f"ant. ±{float(ant['median_abs']):.0f} %, post. ±{float(post['median_abs']):.0f} %"
        )
    except (KeyError, TypeError, ValueError):
        return ()
    return (f"Volume error in cross-validation, median ({n} cases):", line2)


def report_content_from_dataset(
    source: Dataset,
    volumes: HippocampusVolumes,
    qc_flags: Sequence[str],
    identity: OutputIdentity,
    *,
    prior: PriorReport | None = None,
) -> ReportContent:
    """Collect the printed fields from the source header (identifiers are printed on purpose:
    a report that does not say whose it is cannot be checked against the images)."""
    return ReportContent(
        patient_name=_person_name(source.get("PatientName")),
        patient_id=str(source.get("PatientID") or "not recorded"),
        patient_age=_age(source.get("PatientAge")),
        patient_sex=_sex(source.get("PatientSex")),
        study_date=_date(source.get("StudyDate")),
        series_description=str(source.get("SeriesDescription") or ""),
        volumes=volumes,
        qc_flags=tuple(qc_flags),
        model_version=identity.model_version,
        weights_sha256=identity.weights_sha256,
        software_version=identity.software_version,
        model_error_lines=identity.model_error_lines,
        prior=prior,
    )


def _window(frames: np.ndarray) -> np.ndarray:
    """Robust 0.5-99.5 percentile window to uint8 (the crop has no reliable WindowCenter)."""
    data = frames.astype(np.float32)
    lo, hi = np.percentile(data, [0.5, 99.5]) if data.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    return (np.clip((data - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)


def _pick_slices(label_frames: np.ndarray, count: int) -> list[int]:
    """Evenly spaced slices over the labelled extent (all slices when nothing is labelled)."""
    labelled = np.flatnonzero(label_frames.reshape(label_frames.shape[0], -1).any(axis=1))
    first, last = (
        (int(labelled[0]), int(labelled[-1])) if labelled.size else (0, label_frames.shape[0] - 1)
    )
    picks = np.linspace(first, last, num=min(count, last - first + 1))
    return sorted({int(round(p)) for p in picks})


def _tile(
    image: np.ndarray, labels: np.ndarray, width: int, height: int
) -> tuple[Image.Image, int, int]:
    """One montage tile: greyscale slice scaled to fit (aspect kept), with 2-px contours of
    both labels drawn on the scaled grid so they stay crisp."""
    rows, cols = image.shape
    scale = min(width / cols, height / rows)
    size = (max(1, round(cols * scale)), max(1, round(rows * scale)))
    grey = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    for structure in (ANTERIOR_STRUCTURE, POSTERIOR_STRUCTURE):
        small = (labels == structure.label).astype(np.uint8)
        if not small.any():
            continue
        mask = np.asarray(Image.fromarray(small).resize(size, Image.Resampling.NEAREST)) > 0
        edge = mask & ~ndimage.binary_erosion(mask, iterations=2, border_value=0)
        rgb[edge] = structure.rgb
    return Image.fromarray(rgb, mode="RGB"), size[0], size[1]


def render_report(
    content: ReportContent, image_frames: np.ndarray, label_frames: np.ndarray
) -> np.ndarray:
    """Render the page; returns an ``(HEIGHT, WIDTH, 3)`` uint8 RGB array.

    ``image_frames`` and ``label_frames`` are ``(Z, Rows, Columns)`` in source layout (frame k
    looks like the k-th slice in a viewer).
    """
    page = Image.new("RGB", (WIDTH, HEIGHT), _BACKGROUND)
    draw = ImageDraw.Draw(page)
    v = content.volumes

    # Title bar with the disclaimer on the right, in red, where the eye lands first.
    draw.rectangle([0, 0, WIDTH, 64], fill=_PANEL)
    draw.text((24, 14), "HippoAI  Hippocampus volumetry", font=_font(30, True), fill=_TEXT)
    banner = NOT_FOR_DIAGNOSTIC_USE
    bw = draw.textlength(banner, font=_font(22, True))
    draw.rectangle([WIDTH - bw - 44, 12, WIDTH - 16, 52], fill=_ALERT_BG)
    draw.text((WIDTH - bw - 30, 18), banner, font=_font(22, True), fill=(255, 255, 255))

    # Patient block (left).
    y = 84
    label_font, value_font = _font(19), _font(23, True)
    for label, value in (
        ("Patient", content.patient_name),
        ("Patient ID", content.patient_id),
        ("Age / Sex", _age_sex(content.patient_age, content.patient_sex)),
        ("Study date", content.study_date),
        ("Series", content.series_description or "-"),
    ):
        draw.text((24, y + 3), label, font=label_font, fill=_MUTED)
        draw.text((150, y), _fit(draw, value, value_font, 330), font=value_font, fill=_TEXT)
        y += 38

    # Volume table (right).
    x0, y = 500, 84
    head_font, cell_font, big_font = _font(18, True), _font(23), _font(25, True)
    draw.text((x0 + 30, y), "Structure", font=head_font, fill=_MUTED)
    draw.text((x0 + 280, y), "Volume mm³", font=head_font, fill=_MUTED)
    draw.text((x0 + 420, y), "Share", font=head_font, fill=_MUTED)
    y += 34
    rows = (
        ("Anterior", v.anterior_mm3, v.anterior_share, ANTERIOR_STRUCTURE.rgb),
        ("Posterior", v.posterior_mm3, v.posterior_share, POSTERIOR_STRUCTURE.rgb),
    )
    for name, mm3, share, colour in rows:
        draw.rectangle([x0, y + 6, x0 + 18, y + 24], fill=colour)
        draw.text((x0 + 30, y), name, font=cell_font, fill=_TEXT)
        _right(draw, x0 + 395, y, f"{mm3:,.0f}", big_font, _TEXT)
        _right(draw, x0 + 500, y, f"{share * 100:.0f} %", cell_font, _TEXT)
        y += 42
    draw.line([x0, y, x0 + 500, y], fill=_MUTED, width=1)
    y += 8
    draw.text((x0 + 30, y), "Total", font=_font(23, True), fill=_TEXT)
    _right(draw, x0 + 395, y, f"{v.total_mm3:,.0f}", _font(27, True), _TEXT)
    _right(draw, x0 + 500, y, "100 %", cell_font, _TEXT)
    y += 44
    draw.text(
        (x0, y),
        f"{v.total_voxels:,} voxels x {v.voxel_volume_mm3:.3g} mm³",
        font=_font(16),
        fill=_MUTED,
    )
    for line in list(content.model_error_lines)[:2]:
        y += 21
        draw.text(
            (x0, y), _fit(draw, line, _font(16), WIDTH - 16 - x0), font=_font(16), fill=_MUTED
        )

    # Montage.
    top = 320
    draw.text(
        (24, top),
        "Slices with contours:  orange = anterior,  blue = posterior",
        font=_font(19),
        fill=_MUTED,
    )
    top += 30
    cell_w, cell_h = (WIDTH - 48) // MONTAGE_COLUMNS, 215
    shown = _window(image_frames)
    for i, k in enumerate(_pick_slices(label_frames, MONTAGE_COLUMNS * MONTAGE_ROWS)):
        r, c = divmod(i, MONTAGE_COLUMNS)
        tile, tw, th = _tile(shown[k], label_frames[k], cell_w - 8, cell_h - 26)
        cx = 24 + c * cell_w + (cell_w - tw) // 2
        cy = top + r * cell_h
        page.paste(tile, (cx, cy))
        draw.text(
            (24 + c * cell_w + 4, cy + th + 2),
            f"slice {k + 1}/{label_frames.shape[0]}",
            font=_font(14),
            fill=_MUTED,
        )

    # QC flags (and, beside them, the comparison with the prior examination).
    y = top + MONTAGE_ROWS * cell_h + 10
    draw.rectangle([16, y, WIDTH - 16, y + 136], fill=_PANEL)
    qc_width = WIDTH - 64 if content.prior is None else WIDTH // 2 - 40
    if content.qc_flags:
        draw.text((32, y + 10), "QC flags", font=_font(22, True), fill=_WARN)
        fy = y + 42
        for line in _flag_lines(draw, content.qc_flags, _font(18), qc_width - 40):
            draw.text((44, fy), line, font=_font(18), fill=_WARN)
            fy += 23
    else:
        draw.text((32, y + 10), "QC: no flags raised", font=_font(22, True), fill=_OK)
        fy = y + 44
        for line in _wrap(
            draw,
            "Both labels present, total volume within the training range.",
            _font(19),
            qc_width,
        ):
            draw.text((32, fy), line, font=_font(19), fill=_MUTED)
            fy += 25
    if content.prior is not None:
        _draw_prior(draw, content.prior, WIDTH // 2, y)

    # Footer: provenance and the disclaimer again.
    y = HEIGHT - 88
    draw.text(
        (24, y),
        f"Model {content.model_version}   weights sha256 {content.weights_sha256[:16]}   "
        f"{content.software_version}   generated {content.generated}",
        font=_font(15),
        fill=_MUTED,
    )
    draw.rectangle([0, HEIGHT - 56, WIDTH, HEIGHT], fill=_ALERT_BG)
    footer = f"{NOT_FOR_DIAGNOSTIC_USE}  -  research software, results need review by a reader"
    fw = draw.textlength(footer, font=_font(21, True))
    draw.text(((WIDTH - fw) / 2, HEIGHT - 44), footer, font=_font(21, True), fill=(255, 255, 255))
    return np.asarray(page, dtype=np.uint8).copy()


def _draw_prior(draw: ImageDraw.ImageDraw, prior: PriorReport, x0: int, y: int) -> None:
    """The right half of the bottom panel: prior, now and change per structure."""
    draw.line([x0 - 8, y + 10, x0 - 8, y + 126], fill=_MUTED, width=1)
    draw.text((x0, y + 6), prior.heading(), font=_font(19, True), fill=_TEXT)
    c = prior.comparison
    if c is None:
        fy = y + 42
        for line in _wrap(draw, prior.note, _font(18), WIDTH - 40 - x0)[:3]:
            draw.text((x0, fy), line, font=_font(18), fill=_MUTED)
            fy += 24
        return
    head, cell = _font(15, True), _font(17)
    columns = ((x0 + 225, "prior mm³"), (x0 + 335, "now mm³"), (x0 + 455, "change"))
    for x_right, title in columns:
        _right(draw, x_right, y + 32, title, head, _MUTED)
    ry = y + 50
    for change in c.changes:
        bold = change.structure == "Total"
        font = _font(17, True) if bold else cell
        pct = change.change_pct
        draw.text((x0, ry), change.structure, font=font, fill=_TEXT)
        _right(draw, columns[0][0], ry, f"{change.prior_mm3:,.0f}", font, _TEXT)
        _right(draw, columns[1][0], ry, f"{change.current_mm3:,.0f}", font, _TEXT)
        _right(draw, columns[2][0], ry, "-" if pct is None else f"{pct:+.1f} %", font, _TEXT)
        ry += 20
    note = prior.footnote()
    if note:
        draw.text(
            (x0, ry + 2),
            _fit(draw, note, _font(15), WIDTH - 32 - x0),
            font=_font(15),
            fill=_MUTED if c.same_model else _WARN,
        )


def _flag_lines(
    draw: ImageDraw.ImageDraw,
    flags: Sequence[str],
    font: ImageFont.FreeTypeFont,
    width: int,
    max_lines: int = 4,
) -> list[str]:
    """The QC flags in at most ``max_lines`` lines, none silently dropped: wrapped when that
    fits, else one shortened line per flag (and how many more there are)."""
    wrapped = [
        [("!  " if i == 0 else "    ") + line for i, line in enumerate(_wrap(draw, f, font, width))]
        for f in flags
    ]
    if sum(len(lines) for lines in wrapped) <= max_lines:
        return [line for lines in wrapped for line in lines]
    shown = list(flags) if len(flags) <= max_lines else list(flags)[: max_lines - 1]
    lines = [_fit(draw, f"!  {flag}", font, width) for flag in shown]
    if len(flags) > len(shown):
        lines.append(f"!  ... and {len(flags) - len(shown)} more flag(s)")
    return lines


def _wrap(
    draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont, width: int
) -> list[str]:
    """Break ``text`` into lines no wider than ``width`` pixels (at spaces)."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if current and draw.textlength(candidate, font=font) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    if current:
        lines.append(current)
    return lines


def _right(
    draw: ImageDraw.ImageDraw,
    x_right: float,
    y: float,
    text: str,
    font: ImageFont.FreeTypeFont,
    fill: tuple[int, int, int],
) -> None:
    draw.text((x_right - draw.textlength(text, font=font), y), text, font=font, fill=fill)


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont, width: int) -> str:
    """Truncate with an ellipsis so long names do not run into the volume table."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def png_bytes(rgb: np.ndarray) -> bytes:
    """PNG encoding of the rendered page (written next to the DICOM files by ``analyze``)."""
    buffer = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def build_report_sc(
    source: Dataset,
    rgb: np.ndarray,
    identity: OutputIdentity,
    *,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> hd.sc.SCImage:
    """Wrap the rendered page as an RGB Secondary Capture in the source study.

    ``BurnedInAnnotation`` is YES: the page carries the patient's name and ID, and
    de-identification tools rely on this flag to know the pixels need scrubbing.
    """
    header = reference_header(source)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=header,
        pixel_array=np.ascontiguousarray(rgb, dtype=np.uint8),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=REPORT_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=1,
        manufacturer=identity.manufacturer,
        patient_orientation=("L", "P"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=identity.contributing_equipment(),
        series_description=REPORT_SERIES_DESCRIPTION,
        manufacturer_model_name=identity.model_name,
        software_versions=identity.software_versions,
        device_serial_number=identity.device_serial_number,
        **series_created_now(),
    )
    # from_ref_dataset copies a fixed subset; copy the complete Patient / Study modules as the
    # SEG and SR do (PatientAge, StudyDescription, ...), so all three objects agree.
    sc.copy_patient_and_study_information(header)
    sc.BurnedInAnnotation = "YES"
    sc.RecognizableVisualFeatures = "NO"
    sc.ImageComments = NOT_FOR_DIAGNOSTIC_USE
    return sc
