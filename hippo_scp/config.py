"""The node's whole configuration: ``ae_config.yaml`` parsed into typed, validated objects.

Why pydantic: an integrator edits a YAML file by hand on a hospital server. A typo in a key or
an AE title with 17 characters must stop start-up with one line naming the key, not surface
hours later as a rejected association. Every model here forbids unknown keys.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from hippo_scp.assembly.selection import SelectionConfig

#: Where the package lives; relative paths in the shipped config resolve against the
#: config file's folder, and the defaults against the project root.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_PATH = PROJECT_ROOT / "ae_config.yaml"
DEFAULT_WEIGHTS_PATH = PROJECT_ROOT / "model_weights" / "hippo_unet.safetensors"


class ConfigError(ValueError):
    """The configuration is invalid; the message is one line that names the offending key."""


def _check_ae_title(value: str) -> str:
    """Validate a DICOM AE title (PS3.5 AE VR): 1-16 chars, no backslash or control chars."""
    stripped = value.strip()
    if not stripped:
        raise ValueError("AE title must not be empty")
    if len(value) > 16:
        raise ValueError(f"AE title {value!r} is longer than 16 characters")
    if "\\" in value:
        raise ValueError(f"AE title {value!r} contains a backslash")
    if any(ord(ch) < 0x20 or ord(ch) > 0x7E for ch in value):
        raise ValueError(f"AE title {value!r} contains a control or non-ASCII character")
    return stripped


AETitle = Annotated[str, AfterValidator(_check_ae_title)]
Port = Annotated[int, Field(ge=1, le=65535)]


class _Strict(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class NodeSection(_Strict):
    """How the node presents itself on the network."""

    ae_title: AETitle = "HIPPOAI"
    bind_address: str = "0.0.0.0"
    port: Port = 11112
    max_pdu_bytes: int = Field(131072, ge=0, description="0 = unlimited")
    max_associations: int = Field(16, ge=1)
    acse_timeout_s: float = Field(30.0, gt=0)
    dimse_timeout_s: float = Field(60.0, gt=0)
    network_timeout_s: float = Field(120.0, gt=0)


class PeerAllowance(_Strict):
    """A calling AE title, optionally bound to the source addresses it may call from."""

    ae_title: AETitle
    hosts: list[str] = Field(default_factory=list, description="empty = any address")


class AccessSection(_Strict):
    """Who may open an association with the node."""

    require_called_ae_title: bool = True
    allowed_calling_ae_titles: list[AETitle] = Field(
        default_factory=list, description="empty = every calling AE title is accepted"
    )
    allowed_peers: list[PeerAllowance] = Field(default_factory=list)


class TLSSection(_Strict):
    """Optional DICOM TLS for the SCP and the SCU (PS3.15 Annex B)."""

    enabled: bool = False
    certificate: Path | None = None
    private_key: Path | None = None
    ca_certificates: Path | None = None
    require_client_certificate: bool = False

    @model_validator(mode="after")
    def _files_when_enabled(self) -> TLSSection:
        if self.enabled and (self.certificate is None or self.private_key is None):
            raise ValueError("tls.enabled needs tls.certificate and tls.private_key")
        if self.require_client_certificate and self.ca_certificates is None:
            raise ValueError("tls.require_client_certificate needs tls.ca_certificates")
        return self


class Destination(_Strict):
    """A PACS (or any Storage SCP) that receives the results."""

    ae_title: AETitle
    host: str
    port: Port
    tls: bool = False

    @classmethod
    def parse(cls, text: str) -> Destination:
        """Parse the command-line form ``AET@HOST:PORT``."""
        match = re.fullmatch(r"(?P<aet>[^@]+)@(?P<host>[^:@]+|\[[^\]]+\]):(?P<port>\d+)", text)
        if not match:
            raise ValueError(f"destination {text!r} is not of the form AET@HOST:PORT")
        return cls(ae_title=match["aet"], host=match["host"].strip("[]"), port=int(match["port"]))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class TriggerSection(_Strict):
    """When a received series is complete enough to analyse."""

    settle_seconds: float = Field(3.0, ge=0)
    analyze_on_release: bool = True
    reanalyze_unchanged: bool = False
    release_grace_seconds: float = Field(
        1.0,
        ge=0,
        description=(
            "After a release that carried a whole series, wait this long (capped at "
            "settle_seconds) before its results are filed: a sender that opens one "
            "association per instance shows itself within it, and its series then waits for "
            "the settle window"
        ),
    )
    analyze_during_grace: bool = Field(
        True,
        description=(
            "Start the analysis at the release instead of after the grace; its results are "
            "filed once the grace has passed and only if no other association has delivered "
            "to the series by then (else they are dropped and the series waits for the settle "
            "window). Saves up to release_grace_seconds of latency; costs a dropped analysis "
            "for senders that spread a series over associations"
        ),
    )
    whole_series_senders: list[AETitle] = Field(
        default_factory=list,
        description=(
            "Calling AE titles that always send a series whole, in one association (a PACS "
            "auto-router that forwards each *stable* series as one job, such as the Orthanc "
            "of deploy_scripts/route_dicoms.lua). Their releases skip release_grace_seconds: "
            "results are filed as soon as they are made. Never list a sender that may split "
            "a series (per-instance routing, a modality sending image by image): a part of a "
            "series would be reported on its own before the rest arrives"
        ),
    )
    retain_analysed_seconds: float = Field(
        300.0,
        ge=0,
        description=(
            "Keep an analysed series in memory this long after its last instance so late or "
            "repeated instances merge into it instead of starting a partial series"
        ),
    )


class LimitsSection(_Strict):
    """Memory bounds for series held in memory; over them a C-STORE gets 0xA700."""

    max_series_bytes: int = Field(512 * 1024**2, gt=0)
    max_total_bytes: int = Field(2 * 1024**3, gt=0)

    @model_validator(mode="after")
    def _series_within_total(self) -> LimitsSection:
        if self.max_series_bytes > self.max_total_bytes:
            raise ValueError("limits.max_series_bytes must not exceed limits.max_total_bytes")
        return self


class OutboxSection(_Strict):
    """On-disk queue of results awaiting a successful C-STORE to every destination."""

    directory: Path = Path("run/outbox")
    retry_initial_s: float = Field(2.0, gt=0)
    retry_max_s: float = Field(60.0, gt=0)


class SpoolSection(_Strict):
    """Optional durable spool of received instances, so a crash loses no unanalysed series.

    See docs/crash_recovery.md: instances of selected series are written here as received,
    committed when their association is released, and deleted once the series' results are
    in the outbox; a restarted node analyses the committed series it finds.
    """

    enabled: bool = False
    directory: Path = Path("run/spool")
    fsync: bool = Field(
        True,
        description=(
            "fsync an association's instances when it is released (not per instance): a "
            "released series survives a power loss. false: survives a process crash only"
        ),
    )


class ModelSection(_Strict):
    """The segmentation model."""

    weights: Path = DEFAULT_WEIGHTS_PATH
    threads: int = Field(2, ge=1)
    warm_up: bool = Field(
        True,
        description=(
            "Analyse a synthetic series once at start-up, before accepting associations, so "
            "the first real series does not pay for lazy loading (~0.6 s)"
        ),
    )


class PriorsSection(_Strict):
    """Comparison with the patient's earlier examination (docs/operations.md, "Prior
    comparison"): before the report is made, the PACS is asked (C-FIND + C-GET, Study Root) for
    this node's earlier SRs of the same PatientID, and the report prints the change since the
    most recent earlier examination. Off by default: the PACS must grant the node query and
    retrieve rights first."""

    enabled: bool = False
    source: Destination | None = Field(
        None, description="the PACS to ask; null = the first entry of destinations"
    )
    retrieve: Literal["get", "move"] = Field(
        "get",
        description="get: C-GET on the query association; move: C-MOVE to this node's own AE "
        "title (for a PACS without C-GET; it must know the node as a move destination)",
    )
    timeout_s: float = Field(
        10.0,
        gt=0,
        description="per network step; no new step after 3x this (one under way may finish)",
    )
    retry_after_s: float = Field(
        60.0,
        ge=0,
        description="after a failed lookup, series are reported without comparison this long "
        "before the PACS is asked again (an outage must not cost every series a timeout)",
    )
    max_plausible_change_pct: float = Field(
        20.0, gt=0, description="a larger change of the total volume raises a QC flag"
    )


class LoggingSection(_Strict):
    """Log level and format; the audit log records association events as JSON lines."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"
    audit_log: Path | None = Path("run/audit.jsonl")


class NodeConfig(_Strict):
    """Everything ``hippo-scp serve`` needs; one instance per process."""

    node: NodeSection = Field(default_factory=NodeSection)
    access: AccessSection = Field(default_factory=AccessSection)
    tls: TLSSection = Field(default_factory=TLSSection)
    destinations: list[Destination] = Field(
        default_factory=lambda: [Destination(ae_title="ORTHANC", host="127.0.0.1", port=4242)]
    )
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    triggers: TriggerSection = Field(default_factory=TriggerSection)
    limits: LimitsSection = Field(default_factory=LimitsSection)
    outbox: OutboxSection = Field(default_factory=OutboxSection)
    spool: SpoolSection = Field(default_factory=SpoolSection)
    model: ModelSection = Field(default_factory=ModelSection)
    priors: PriorsSection = Field(default_factory=PriorsSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)

    @model_validator(mode="after")
    def _priors_have_a_source(self) -> NodeConfig:
        if self.priors.enabled and self.priors.source is None and not self.destinations:
            raise ValueError("priors.enabled needs priors.source when there are no destinations")
        return self

    @property
    def prior_source(self) -> Destination | None:
        """The PACS asked for earlier results (None: comparison off)."""
        if not self.priors.enabled:
            return None
        return self.priors.source or (self.destinations[0] if self.destinations else None)

    def resolve_paths(self, base: Path) -> NodeConfig:
        """Return a copy whose relative file paths are anchored at ``base``.

        Relative paths in a config file mean "relative to that file", so the node behaves the
        same whatever directory it is started from (systemd, Docker, a test).
        """

        def anchor(path: Path | None) -> Path | None:
            if path is None or path.is_absolute():
                return path
            return (base / path).resolve()

        data = self.model_copy(deep=True)
        data.outbox.directory = anchor(data.outbox.directory)  # type: ignore[assignment]
        data.spool.directory = anchor(data.spool.directory)  # type: ignore[assignment]
        data.model.weights = anchor(data.model.weights)  # type: ignore[assignment]
        data.logging.audit_log = anchor(data.logging.audit_log)
        data.tls.certificate = anchor(data.tls.certificate)
        data.tls.private_key = anchor(data.tls.private_key)
        data.tls.ca_certificates = anchor(data.tls.ca_certificates)
        return data


def _format_validation_error(error: ValidationError, source: str) -> str:
    """Turn pydantic's multi-line report into one line that names the first offending key."""
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    else:
        message = first["msg"].removeprefix("Value error, ")
    extra = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{source}: invalid configuration at '{key}': {message}{extra}"


def config_from_mapping(data: dict[str, Any], *, source: str = "configuration") -> NodeConfig:
    """Validate an already-parsed mapping; raise :class:`ConfigError` with a one-line message."""
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error, source)) from None


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> NodeConfig:
    """Load ``ae_config.yaml`` (or defaults when ``path`` is None), apply overrides, validate.

    ``overrides`` is a nested mapping merged over the file (command-line flags win over the
    file); it is validated together with the file so a bad flag reports the same way.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    base = PROJECT_ROOT
    if path is not None:
        source = str(path)
        base = path.resolve().parent
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError(f"{path}: cannot read configuration: {error.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}: not valid YAML{where}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        data = loaded
    if overrides:
        data = _deep_merge(data, overrides)
    return config_from_mapping(data, source=source).resolve_paths(base)


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
