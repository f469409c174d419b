"""Render the generated tables of ``docs/conformance.md`` from the product's own code.

Sources (what the document states is what the node negotiates):

* :mod:`hippo_scp.network.presentation` -- SOP classes and transfer syntaxes accepted as SCP,
  and the contexts the SCU proposes when it sends results;
* :mod:`hippo_scp.network.receiver` / :mod:`hippo_scp.network.sender` -- association
  rejections and C-STORE statuses;
* :mod:`hippo_scp.assembly.selection` -- the SOP classes the node can analyse;
* :mod:`hippo_scp.outputs.identity` -- how the created objects identify themselves;
* :mod:`hippo_scp.config` (pydantic models) + the comments of ``ae_config.yaml`` -- every
  configuration key with its type, default and description.

Usage::

    .venv/bin/python docs/generate_conformance.py          # rewrite docs/conformance.md
    .venv/bin/python docs/generate_conformance.py --check  # exit 1 if it is out of date
"""

from __future__ import annotations

import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

# This checkout's package and docs/ first (not another checkout's editable install).
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import annotated_types  # noqa: E402
import pynetdicom  # noqa: E402
from docgen import DOCS_DIR, REPO_ROOT, rel, replace_blocks, run, table  # noqa: E402
from pydantic import AfterValidator, BaseModel  # noqa: E402
from pydicom.uid import (  # noqa: E402
    JPEG2000,
    UID,
    Comprehensive3DSRStorage,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)
from pynetdicom.sop_class import _STORAGE_CLASSES as _STORAGE_KEYWORDS  # noqa: E402
from pynetdicom.sop_class import Verification  # noqa: E402

from hippo_scp import MANUFACTURER, SOFTWARE_NAME, __version__  # noqa: E402
from hippo_scp.assembly.selection import ANALYSABLE_SOP_CLASSES  # noqa: E402
from hippo_scp.config import NodeConfig  # noqa: E402
from hippo_scp.network import association_limit, presentation, receiver, sender  # noqa: E402
from hippo_scp.network.prior_query import PriorResultsQuery  # noqa: E402
from hippo_scp.outputs import identity  # noqa: E402

TARGET = DOCS_DIR / "conformance.md"
CONFIG_FILE = REPO_ROOT / "ae_config.yaml"

#: The objects the node creates and sends, with the transfer syntax their builders write.
#: ``tests/docs`` checks these against the files the real pipeline produces (docs/examples).
RESULT_OBJECTS: list[tuple[str, UID, UID, int, str]] = [
    (
        "Segmentation",
        SegmentationStorage,
        ExplicitVRLittleEndian,
        identity.SEG_SERIES_NUMBER,
        identity.SEG_SERIES_DESCRIPTION,
    ),
    (
        "Volumes SR (TID 1500)",
        Comprehensive3DSRStorage,
        ExplicitVRLittleEndian,
        identity.SR_SERIES_NUMBER,
        identity.SR_SERIES_DESCRIPTION,
    ),
    (
        "Report image",
        SecondaryCaptureImageStorage,
        ExplicitVRLittleEndian,
        identity.REPORT_SERIES_NUMBER,
        identity.REPORT_SERIES_DESCRIPTION,
    ),
]

_LOSSY = {JPEG2000, JPEGLSNearLossless, JPEGBaseline8Bit, JPEGExtended12Bit}

_STATUS_MEANING = {
    0x0000: "Success",
    0xA700: "Refused: Out of Resources",
    0xC000: "Error: Cannot Understand",
    0xB000: "Warning: Coercion of Data Elements",
    0xB006: "Warning: Elements Discarded",
    0xB007: "Warning: Data Set Does Not Match SOP Class",
}

_REJECT_SOURCE = {
    1: "service-user",
    2: "service-provider (ACSE)",
    3: "service-provider (presentation)",
}
_REJECT_RESULT = {1: "rejected-permanent", 2: "rejected-transient"}


def _uid_name(uid: UID) -> str:
    """pydicom's name; pynetdicom's keyword, split into words, for UIDs pydicom lacks."""
    if uid.name != str(uid):
        return uid.name
    keyword = {str(v): k for k, v in _STORAGE_KEYWORDS.items()}.get(str(uid), str(uid))
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", keyword)


def _uid_row(uid: UID) -> tuple[str, str]:
    return (_uid_name(uid), f"`{uid}`")


def _kind(ts: UID) -> str:
    if not ts.is_compressed:
        return "uncompressed"
    return "lossy" if ts in _LOSSY else "lossless"


# ---------------------------------------------------------------------------------- blocks
def block_implementation() -> str:
    return table(
        ["Item", "Value"],
        [
            ("Application Context Name", "`1.2.840.10008.3.1.1.1` (DICOM Application Context)"),
            ("Implementation Class UID", f"`{pynetdicom.PYNETDICOM_IMPLEMENTATION_UID}`"),
            ("Implementation Version Name", f"`{pynetdicom.PYNETDICOM_IMPLEMENTATION_VERSION}`"),
            ("Network toolkit", f"pynetdicom {pynetdicom.__version__}"),
            ("Product software version", f"{SOFTWARE_NAME} {__version__}"),
        ],
    )


def block_overview() -> str:
    storage = len(presentation.STORAGE_SOP_CLASSES)
    return table(
        ["Service", "SOP classes", "User of service (SCU)", "Provider of service (SCP)"],
        [
            ("Verification", "Verification", "No", "Yes"),
            ("Storage", f"{storage} storage SOP classes (Table 4.2-3)", "No", "Yes"),
            ("Storage", ", ".join(name for name, *_ in RESULT_OBJECTS), "Yes", "No"),
            (
                "Query/Retrieve",
                "Study Root Q/R - FIND, GET (or MOVE: priors.retrieve)",
                "Yes",
                "No",
            ),
            ("Storage (C-GET sub-operations)", "Comprehensive 3D SR", "No", "Yes"),
        ],
    )


def block_scp_transfer_syntaxes() -> str:
    rows = [
        (index, ts.name, f"`{ts}`", _kind(ts))
        for index, ts in enumerate(presentation.ACCEPTED_TRANSFER_SYNTAXES, start=1)
    ]
    return table(["Preference", "Transfer syntax", "UID", "Kind"], rows)


def block_scp_verification() -> str:
    syntaxes = ", ".join(f"{ts.name} `{ts}`" for ts in presentation.VERIFICATION_TRANSFER_SYNTAXES)
    return table(
        ["Abstract syntax", "UID", "Transfer syntaxes", "Role", "Extended negotiation"],
        [(*_uid_row(UID(Verification)), syntaxes, "SCP", "None")],
    )


def block_scp_storage_sop_classes() -> str:
    analysable = set(ANALYSABLE_SOP_CLASSES)
    rows = [
        (*_uid_row(uid), "yes" if uid in analysable else "")
        for uid in sorted(presentation.STORAGE_SOP_CLASSES, key=lambda u: _uid_name(u).lower())
    ]
    return (
        f"{len(rows)} SOP classes; each is accepted with every transfer syntax of Table 4.2-2, "
        "role SCP, no extended negotiation.\n\n"
        + table(["SOP class", "UID", "Can be analysed"], rows)
    )


def block_scu_contexts() -> str:
    stored = {str(sop): {str(ts)} for _, sop, ts, _, _ in RESULT_OBJECTS}
    names = {str(sop): name for name, sop, *_ in RESULT_OBJECTS}
    rows = []
    for context in presentation.requested_contexts(stored):
        uid = UID(context.abstract_syntax)
        syntaxes = ", ".join(f"{UID(ts).name} `{ts}`" for ts in context.transfer_syntax)
        rows.append((names[str(uid)], *_uid_row(uid), syntaxes, "SCU"))
    return table(
        ["Object", "Abstract syntax", "UID", "Transfer syntaxes proposed (in order)", "Role"],
        rows,
    )


def block_prior_contexts() -> str:
    """What the prior lookup proposes (activity *Query prior results*)."""
    query = PriorResultsQuery(
        NodeConfig().destinations[0], calling_ae_title=NodeConfig().node.ae_title
    )
    rows = []
    for context in query.application_entity().requested_contexts:
        uid = UID(context.abstract_syntax)
        syntaxes = ", ".join(f"{UID(ts).name} `{ts}`" for ts in context.transfer_syntax)
        is_storage = uid == Comprehensive3DSRStorage
        role = "SCP (role selection: SCP role proposed)" if is_storage else "SCU"
        rows.append((*_uid_row(uid), syntaxes, role))
    return table(["Abstract syntax", "UID", "Transfer syntaxes proposed (in order)", "Role"], rows)


def block_association_limits() -> str:
    node = NodeConfig().node
    settings = sender.SenderSettings(calling_ae_title=node.ae_title)
    pdu = "unlimited" if node.max_pdu_bytes == 0 else f"{node.max_pdu_bytes:,} bytes"
    return table(
        ["Parameter", "Default", "Configuration key", "Applies to"],
        [
            (
                "Maximum concurrent associations (as acceptor)",
                node.max_associations,
                "`node.max_associations`",
                "SCP",
            ),
            ("Maximum PDU size received", pdu, "`node.max_pdu_bytes`", "SCP and SCU"),
            (
                "ACSE timeout (negotiation, release)",
                f"{node.acse_timeout_s:g} s",
                "`node.acse_timeout_s`",
                "SCP and SCU",
            ),
            (
                "DIMSE timeout (waiting for a message)",
                f"{node.dimse_timeout_s:g} s",
                "`node.dimse_timeout_s`",
                "SCP and SCU",
            ),
            (
                "Network timeout (idle association closed)",
                f"{node.network_timeout_s:g} s",
                "`node.network_timeout_s`",
                "SCP and SCU",
            ),
            (
                "TCP connection timeout (SCU)",
                f"{settings.connection_timeout_s:g} s",
                "(fixed)",
                "SCU",
            ),
            ("Concurrent associations initiated", "1 (one sender thread)", "(fixed)", "SCU"),
        ],
    )


def _reject(reason: str, rsd: tuple[int, int, int], diagnostic: str, when: str) -> tuple:
    result, source, diag = rsd
    return (
        reason,
        f"{_REJECT_RESULT[result]} (0x{result:02X})",
        f"{_REJECT_SOURCE[source]} (0x{source:02X})",
        f"{diagnostic} (0x{diag:02X})",
        when,
    )


def block_reject_reasons() -> str:
    return table(
        ["Reason", "Result", "Source", "Diagnostic", "When"],
        [
            _reject(
                "Called AE title is not the node's",
                receiver.REJECT_CALLED_AE,
                "called-AE-title-not-recognized",
                "`access.require_called_ae_title` is true (default) and the called AE title "
                "is not `node.ae_title`",
            ),
            _reject(
                "Calling AE title not allowed",
                receiver.REJECT_CALLING_AE,
                "calling-AE-title-not-recognized",
                "`access.allowed_calling_ae_titles` or `access.allowed_peers` is set and the "
                "calling AE title is in neither",
            ),
            _reject(
                "Calling AE title from a host it may not use",
                receiver.REJECT_CALLING_AE,
                "calling-AE-title-not-recognized",
                "the calling AE title is in `access.allowed_peers` with `hosts`, and the peer "
                "address is not one of them (nor what a listed host name resolves to)",
            ),
            _reject(
                "Too many associations",
                association_limit.LOCAL_LIMIT_EXCEEDED,
                "local-limit-exceeded",
                "`node.max_associations` associations are in service and none frees within "
                f"{association_limit.ADMISSION_WAIT_S:g} s; an association stops counting when "
                "the peer's A-RELEASE-RQ arrives, or when it is aborted or its connection "
                "closes. The log line names the calling AE titles holding the slots",
            ),
        ],
    )


def block_scp_statuses() -> str:
    return table(
        ["Status", "Meaning", "When the node returns it"],
        [
            (
                f"0x{receiver.STATUS_SUCCESS:04X}",
                _STATUS_MEANING[0x0000],
                "The instance was received (whether or not its series is selected for analysis)",
            ),
            (
                f"0x{receiver.STATUS_OUT_OF_RESOURCES:04X}",
                _STATUS_MEANING[0xA700],
                "Holding the instance would exceed `limits.max_series_bytes` or "
                "`limits.max_total_bytes`, or (with `spool.enabled`) its copy cannot be written "
                "to the spool; the whole series is then dropped and not analysed",
            ),
            (
                f"0x{receiver.STATUS_CANNOT_UNDERSTAND:04X}",
                _STATUS_MEANING[0xC000],
                "The data set cannot be parsed, or Study, Series or SOP Instance UID is missing",
            ),
        ],
    )


def block_scu_statuses() -> str:
    rows = [
        (f"0x{code:04X}", _STATUS_MEANING.get(code, ""), "Stored: the file leaves the outbox")
        for code in sorted(sender.STORED_STATUSES)
    ]
    rows.append(
        (
            "any other, or no response",
            "Failure",
            "Association released; the whole result set stays in the outbox and is retried",
        )
    )
    return table(["Status", "Meaning", "Behaviour"], rows)


def block_result_objects() -> str:
    rows = [
        (name, *_uid_row(sop), f"{ts.name} `{ts}`", number, f"`{description}`")
        for name, sop, ts, number, description in RESULT_OBJECTS
    ]
    return table(
        ["Object", "SOP class", "UID", "Transfer syntax", "Series Number", "Series Description"],
        rows,
    ) + (
        f"\n\nEvery object: Manufacturer `{MANUFACTURER}`, Manufacturer's Model Name "
        f"`{identity.MODEL_NAME}`, Software Versions `{SOFTWARE_NAME} <version>` and "
        "`model <model version>`, Device Serial Number "
        f"`{identity.DEVICE_SERIAL_NUMBER}`, one Contributing Equipment item (purpose "
        "*Processing Equipment*) whose description carries the algorithm name, model version "
        "and the SHA-256 of the weights."
    )


def block_codes() -> str:
    codes = [
        ("Finding / segmented property type", identity.HIPPOCAMPUS),
        ("Finding category / segmented property category", identity.ANATOMICAL_STRUCTURE),
        ("Topographical / property type modifier (label 1)", identity.ANTERIOR),
        ("Topographical / property type modifier (label 2)", identity.POSTERIOR),
    ]
    rows = [(use, c.scheme_designator, f"`{c.value}`", c.meaning) for use, c in codes]
    structures = table(
        ["Label / segment number", "Segment label", "Display colour (sRGB)"],
        [
            (s.label, s.name, str(s.rgb))
            for s in (*identity.SEGMENTED_STRUCTURES, identity.WHOLE_STRUCTURE)
        ],
    )
    return (
        table(["Used as", "Coding scheme", "Code value", "Code meaning"], rows)
        + "\n\n"
        + structures
        + "\n\nLabel 0 (whole hippocampus) exists only in the SR: its measurement group "
        "references both SEG segments."
    )


# ------------------------------------------------------------------------ configuration keys
def _config_comments(path: Path) -> dict[str, str]:
    """Map dotted keys (list items as ``[]``) to the comments written after them in the YAML."""
    comments: dict[str, str] = {}
    stack: list[tuple[int, str]] = []  # (indent, name)
    last_key: str | None = None
    last_indent = -1
    line_re = re.compile(r"^(?P<indent>\s*)(?P<dash>-\s+)?(?P<key>[A-Za-z_]\w*):(?P<rest>.*)$")
    for raw in path.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if not stripped:
            last_key = None
            continue
        if stripped.startswith("#"):
            indent = len(raw) - len(raw.lstrip())
            if last_key is not None and indent > last_indent and comments.get(last_key):
                comments[last_key] += " " + stripped.lstrip("#").strip()
            continue
        match = line_re.match(raw)
        if not match:
            last_key = None
            continue
        indent = len(match["indent"]) + (len(match["dash"]) if match["dash"] else 0)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if match["dash"] and stack:
            parent_indent, parent = stack.pop()
            stack.append((parent_indent, parent if parent.endswith("[]") else parent + "[]"))
        key = ".".join([name for _, name in stack] + [match["key"]])
        stack.append((indent, match["key"]))
        rest = match["rest"]
        comment = rest.split(" #", 1)[1].strip() if " #" in rest else ""
        if rest.strip().startswith("#"):
            comment = rest.strip().lstrip("#").strip()
        if comment and key not in comments:
            comments[key] = comment
        last_key, last_indent = key, len(raw) - len(raw.lstrip())
    return comments


def _type_name(annotation: Any, metadata: list[Any] | None = None) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0], list(args[1:]))
    if metadata and any(
        isinstance(m, AfterValidator) and getattr(m.func, "__name__", "") == "_check_ae_title"
        for m in metadata
    ):
        return "AE title"
    if origin in (typing.Union, types.UnionType):
        non_null = [a for a in args if a is not type(None)]
        text = " or ".join(_type_name(a) for a in non_null)
        return text + " or null" if len(non_null) < len(args) else text
    if origin is typing.Literal:
        return " | ".join(f"`{a}`" for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is tuple:
        return "[" + ", ".join(_type_name(a) for a in args) + "]"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    name = getattr(annotation, "__name__", str(annotation))
    base = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
        name, "path" if name in ("Path", "PosixPath") else name
    )
    bounds = []
    for m in metadata or []:
        for attr, symbol in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if isinstance(m, getattr(annotated_types, attr.capitalize())):
                bounds.append(f"{symbol} {getattr(m, attr)}")
    return base + (" " + ", ".join(bounds) if bounds else "")


#: Descriptions for keys that have neither a pydantic ``description`` nor a usable comment of
#: their own in ``ae_config.yaml`` (a ``Field(description=...)`` in hippo_scp.config wins).
_DESCRIPTIONS = {
    "access.allowed_peers": "calling AE titles bound to the source addresses they may call from "
    "(an AE listed here is allowed even when not in allowed_calling_ae_titles)",
    "access.allowed_peers[].ae_title": "calling AE title",
    "tls.enabled": "use DICOM TLS for the SCP and for destinations with `tls: true`",
    "tls.require_client_certificate": "reject TLS peers without a certificate signed by "
    "tls.ca_certificates",
    "destinations[].ae_title": "called AE title of the destination",
    "destinations[].host": "host name or address",
    "destinations[].port": "DICOM port",
    "destinations[].tls": "connect with TLS (needs the tls section)",
    "selection.rules": "ordered rules; the first whose conditions all hold decides",
    "selection.rules[].name": "shown in the log when the rule decides",
    "selection.rules[].action": "analyze or skip the series",
    "selection.rules[].conditions": "all must hold; each uses exactly one matcher",
    "selection.rules[].conditions[].attribute": "DICOM keyword of the first instance, "
    "e.g. SeriesDescription",
    "selection.rules[].conditions[].equals": "exact value (numbers compare numerically)",
    "selection.rules[].conditions[].iequals": "case-insensitive value",
    "selection.rules[].conditions[].regex": "regular expression (re.search; inline flags "
    "such as (?i) allowed)",
    "selection.rules[].conditions[].range": "[min, max], numeric, inclusive; one bound may be null",
    "selection.rules[].conditions[].one_of": "any of these exact values",
    "selection.rules[].conditions[].negate": "invert the condition",
    "selection.rules[].min_slices": "overrides selection.min_slices for this rule",
    "limits.max_series_bytes": "bytes held for one series; an instance beyond it gets 0xA700",
    "limits.max_total_bytes": "bytes held for all series in memory; an instance beyond it gets "
    "0xA700",
    "outbox.directory": "results wait here until every destination has stored them",
    "outbox.retry_max_s": "longest wait between two delivery attempts",
    "spool.enabled": "keep a durable copy of received instances of selected series, analysed "
    "on restart after a crash",
    "spool.directory": "where the spool is kept",
    "logging.format": "text, or json (one JSON object per line)",
    "logging.audit_log": "association events as JSON lines (null = off)",
}


def _default_text(value: Any) -> str:
    if isinstance(value, Path):
        return f"`{rel(value)}`"
    if isinstance(value, BaseModel):
        return ""
    if isinstance(value, list):
        if value and isinstance(value[0], BaseModel):
            shown = [
                str(item)
                if type(item).__str__ is not BaseModel.__str__
                else str(getattr(item, "name", type(item).__name__))
                for item in value
            ]
            return ", ".join(f"`{text}`" for text in shown)
        return f"`{value}`" if value else "`[]`"
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int) and value >= 1 << 20:
        return f"`{value}` ({value / (1 << 20):g} MiB)"
    return f"`{value}`"


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``annotation`` (``X``, ``list[X]``, ``X | None``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def unapplied_sections() -> list[str]:
    """Config sections that are validated but change nothing.

    A section is unapplied when no module besides ``config.py`` reads it (``.<section>`` never
    appears), or when the code only warns that it is not implemented (``"<section>.<key> is
    set but ... not implemented"``). The document says so next to each of its keys.
    """
    package = REPO_ROOT / "hippo_scp"
    sources = "\n".join(
        path.read_text(encoding="utf-8")
        for path in sorted(package.rglob("*.py"))
        if path.name != "config.py"
    )
    flat = re.sub(r"\"\s*\n\s*\"", "", sources)  # join implicitly concatenated strings
    return [
        name
        for name in NodeConfig.model_fields
        if not re.search(rf"\.{name}\b|[\"']{name}[\"']", sources)
        or re.search(rf"\b{name}\.\w+ is set but [^\"]*not implemented", flat)
    ]


def _config_rows(
    model: type[BaseModel],
    prefix: str,
    comments: dict[str, str],
    defaults: Any,
    unapplied: set[str],
) -> list[tuple[str, str, str, str]]:
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = field.annotation
        sub = _model_of(annotation)
        is_list = typing.get_origin(annotation) is list
        if field.is_required():
            default = "required"
        elif defaults is not None:
            default = _default_text(getattr(defaults, name))
        else:
            default = _default_text(field.get_default(call_default_factory=True))
        comment = comments.get(key, "")
        if field.description and field.description not in comment:
            description = field.description
        else:
            description = _DESCRIPTIONS.get(key) or comment
        parts = key.replace("[]", "").split(".")
        if (parts[0] in unapplied or parts[-1] in unapplied) and (sub is None or is_list):
            description = "**Not applied in this release** (validated only). " + description
        if sub is None or is_list or prefix:
            rows.append((f"`{key}`", _type_name(annotation, field.metadata), default, description))
        if sub is not None:
            child_defaults = None if is_list else getattr(defaults, name, None)
            rows += _config_rows(
                sub, f"{key}{'[]' if is_list else ''}.", comments, child_defaults, unapplied
            )
    return rows


def block_config_keys() -> str:
    comments = _config_comments(CONFIG_FILE)
    rows = _config_rows(NodeConfig, "", comments, NodeConfig(), set(unapplied_sections()))
    return table(["Key", "Type", "Default", "Description"], rows)


def block_security() -> str:
    if "tls" in unapplied_sections():
        return (
            "**DICOM TLS is not available in this release.** The `tls` section and "
            "`destinations[].tls` are validated at start-up but not used: the SCP listens and "
            "the SCU connects over plain TCP. Deploy the node on a trusted network segment (or "
            "behind a TLS-terminating tunnel such as stunnel) and restrict who may associate "
            "with the access keys below."
        )
    return "\n".join(
        [
            "DICOM TLS (PS3.15 Annex B.1 secure transport connection profile; TLS 1.2 or later, "
            "Python's `ssl` module):",
            "",
            "- **SCP**: with `tls.enabled`, the node's port speaks TLS only (there is no second, "
            "plain port), presenting `tls.certificate` / `tls.private_key`. Client certificates "
            "are required and verified against `tls.ca_certificates` when "
            "`tls.require_client_certificate` is true, and not requested otherwise.",
            "- **SCU**: a destination with `tls: true` is reached over TLS; the PACS certificate "
            "and host name are verified against `tls.ca_certificates` (or the system trust "
            "store), and the node presents its certificate when one is configured. Other "
            "destinations use plain TCP.",
            "- An unreadable certificate or key stops start-up with one line (exit 2).",
        ]
    )


# ------------------------------------------------------------------------------------ main
BLOCKS = {
    "implementation": block_implementation,
    "overview": block_overview,
    "scp-verification": block_scp_verification,
    "scp-transfer-syntaxes": block_scp_transfer_syntaxes,
    "scp-storage-sop-classes": block_scp_storage_sop_classes,
    "scp-statuses": block_scp_statuses,
    "scu-contexts": block_scu_contexts,
    "scu-statuses": block_scu_statuses,
    "prior-contexts": block_prior_contexts,
    "association-limits": block_association_limits,
    "reject-reasons": block_reject_reasons,
    "result-objects": block_result_objects,
    "codes": block_codes,
    "config-keys": block_config_keys,
    "security": block_security,
}


def render(text: str) -> str:
    """``text`` (the current conformance.md) with every generated block re-rendered."""
    return replace_blocks(text, {name: build() for name, build in BLOCKS.items()})


def main(argv: list[str] | None = None) -> int:
    return run(TARGET, render, argv)


if __name__ == "__main__":
    raise SystemExit(main())
