"""One typed settings object, declared once, loaded from TOML.

Each key is declared here with its default and a help text; `etc/vna.example.toml`
documents every key (a test keeps the two in step). Environment variables of the
form ``VNA_<SECTION>__<KEY>`` override scalar keys of a table section, e.g.
``VNA_INDEX__URL=postgresql+psycopg://...``. Nothing here is module-level
mutable state: a loaded `Settings` is passed explicitly to whatever needs it.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vna.errors import SettingsError
from vna.layout import is_valid_source_name

WatchMode = Literal["events", "poll"]
DuplicatePolicy = Literal["quarantine", "replace"]
AfterIngest = Literal["delete", "move"]
VerifyMode = Literal["read-back", "metadata"]
Role = Literal["read", "admin"]
TARGET_SCHEMES = ("file", "az", "abfs", "oci", "s3")


def _key(default: Any, help: str, **kw: Any) -> Any:
    """Declare a settings key: its default and the help text shown in the example file."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class ArchiveSettings:
    root: Path = _key(Path("var/archive"), "Tier 0: the standard layout (studies/...).")
    quarantine: Path = _key(Path("var/quarantine"), "Where bad input is kept, with a reason.")
    fsync: bool = _key(
        True, "fsync files and folders before indexing; off only for throwaway demos."
    )


@dataclass(frozen=True)
class IndexSettings:
    url: str = _key(
        "sqlite:///var/index.db", "SQLAlchemy URL: sqlite:///PATH or postgresql+psycopg://..."
    )


@dataclass(frozen=True)
class IngestSettings:
    settle_seconds: float = _key(5.0, "A drop file is taken once unchanged for this long.")
    rescan_seconds: float = _key(60.0, "Full rescan of every drop folder, to catch missed events.")
    workers: int = _key(2, "Worker processes that parse, coerce, hash and write; 0 = in-process.")
    batch_size: int = _key(64, "Files committed to the index in one transaction.")
    after: AfterIngest = _key(
        "delete", "What to do with a drop file once archived: delete or move."
    )
    processed: Path | None = _key(
        None, "With after = 'move': the folder archived drop files go to."
    )
    ignore: list[str] = _key(
        [".*", "*.tmp", "*.part", "*.partial"],
        "Glob patterns of names never taken (partial transfers, hidden files).",
    )
    duplicate_policy: DuplicatePolicy = _key(
        "quarantine",
        "Same SOP Instance UID, different content: quarantine the newcomer, or replace "
        "(the older version then goes to quarantine, never deleted).",
    )
    max_pending: int = _key(
        20000, "Most drop files tracked at once; once half are done, a scan takes the next ones."
    )


@dataclass(frozen=True)
class CoercionSettings:
    set: dict[str, str] = _key({}, "Attributes set to a value on every file (keyword = value).")
    replace: dict[str, dict[str, str]] = _key(
        {}, "Per keyword, a map of old value to new value; other values are left alone."
    )
    remove: list[str] = _key([], "Keywords removed from every file.")


@dataclass(frozen=True)
class SourceSettings:
    name: str = _key("", "Short name of the PACS this share belongs to.", required=True)
    drop: Path = _key(Path(), "The folder the PACS exports into.", required=True)
    issuer_of_patient_id: str = _key(
        "", "Issuer of Patient ID filled in when a file has none, so IDs never merge across PACS."
    )
    override_issuer: bool = _key(False, "Replace an Issuer of Patient ID the file already carries.")
    watch: WatchMode = _key("events", "events (inotify) or poll (network shares: NFS/SMB).")
    poll_seconds: float = _key(10.0, "With watch = 'poll': how often the folder is polled.")
    duplicate_policy: DuplicatePolicy | None = _key(
        None, "Overrides ingest.duplicate_policy for this source."
    )
    coerce: CoercionSettings = _key(CoercionSettings(), "Header coercion rules for this source.")


@dataclass(frozen=True)
class ReplicatorSettings:
    poll_seconds: float = _key(
        1.0, "How often the change feed is read while there is nothing to do."
    )
    lease_seconds: float = _key(
        300.0, "A copy claimed by a worker that died is taken over after this long."
    )
    batch_size: int = _key(64, "Copies claimed from the index at a time, per target.")
    backoff_max_seconds: float = _key(300.0, "Longest wait between retries of a failing copy.")


@dataclass(frozen=True)
class TargetSettings:
    name: str = _key("", "Short name of the target, used in status and the index.", required=True)
    url: str = _key(
        "",
        "Where the replica lives: file:///mnt/nfs/vna, az://container/prefix, "
        "oci://bucket@namespace/prefix, s3://bucket/prefix.",
        required=True,
    )
    storage_options: dict[str, Any] = _key(
        {}, "Passed to the fsspec filesystem (credentials, endpoint_url, connection_string...)."
    )
    concurrency: int = _key(8, "Copies in flight at once to this target.")
    bandwidth: str = _key("", "Upload cap, e.g. '50MB/s' or '200Mbit/s'; empty for none.")
    window: str = _key(
        "", "Cron expression of when copying may run, e.g. '* 20-6 * * *'; empty for always."
    )
    verify: VerifyMode = _key(
        "metadata",
        "metadata: the store's answer to each upload proves it (its MD5 of what it kept), "
        "else it is read back; read-back: every upload is read back and hashed.",
    )
    delete: bool = _key(False, "Propagate deletions and remove extra objects on reconciliation.")
    reconcile: str = _key(
        "", "When this target is reconciled (cron); empty: the [scheduler] reconcile time."
    )
    max_delete_share: float = _key(
        0.01,
        "With delete = true: a run that would delete more than this share of the target stops.",
    )


@dataclass(frozen=True)
class SchedulerSettings:
    enabled: bool = _key(
        True, "`vna run` starts the scheduler (a dedicated `vna scheduler` process may instead)."
    )
    timezone: str = _key(
        "", "Time zone of the job times, e.g. 'Europe/Zurich'; empty for the machine's own."
    )
    verify: str = _key(
        "0 2 * * *", "When a share of tier 0 is re-hashed against the index (cron); empty: off."
    )
    verify_days: int = _key(
        30, "Tier 0 is re-hashed in this many verification runs: a 1/N share per run."
    )
    reconcile: str = _key(
        "0 3 * * sun",
        "When each target is reconciled with the index (cron; a target may set its own); "
        "empty: off.",
    )
    report: str = _key("0 6 * * *", "When the capacity report is written (cron); empty: off.")
    reports: Path = _key(
        Path("var/reports"), "Folder of the scheduled reports; the status page links the latest."
    )
    keep_reports: int = _key(90, "Dated reports kept per format; older ones are removed.")
    misfire_grace_seconds: float = _key(
        6 * 3600.0, "A run missed while the scheduler was down still happens if this late at most."
    )


@dataclass(frozen=True)
class ApiKeySettings:
    name: str = _key("", "Who holds the key (shown in the audit log).", required=True)
    sha256: str = _key(
        "", "SHA-256 (hex) of the key; the key itself is never stored.", required=True
    )
    role: Role = _key("read", "read (DICOMweb) or admin (also the status page).")


@dataclass(frozen=True)
class GatewaySettings:
    host: str = _key("127.0.0.1", "Address the DICOMweb service listens on.")
    port: int = _key(8042, "Port the DICOMweb service listens on.")
    public_url: str = _key(
        "", "Base URL clients see (behind a proxy), e.g. https://pacs.example.org/dicomweb."
    )
    allow_anonymous: bool = _key(False, "Allow reads without credentials.")
    cors_origins: list[str] = _key([], "Viewer origins allowed to call the service from a browser.")
    keys: list[ApiKeySettings] = _key([], "API keys (Authorization: Bearer <key> or ApiKey <key>).")
    audit_log: Path | None = _key(None, "File for the audit trail of patient-data access.")
    restore_local: bool = _key(
        False, "When a read falls back to a replica, write the verified bytes back to tier 0."
    )
    max_limit: int = _key(1000, "Largest QIDO-RS `limit` accepted.")
    viewer: Path | None = _key(
        None,
        "Folder of a built OHIF viewer (npm @ohif/app's dist/) to serve at /.",
    )


@dataclass(frozen=True)
class Settings:
    archive: ArchiveSettings = _key(ArchiveSettings(), "The on-disk archive.")
    index: IndexSettings = _key(IndexSettings(), "The metadata index.")
    ingest: IngestSettings = _key(IngestSettings(), "The ingest daemon.")
    sources: list[SourceSettings] = _key([], "One entry per PACS drop share.")
    replicator: ReplicatorSettings = _key(ReplicatorSettings(), "The replicator.")
    targets: list[TargetSettings] = _key([], "One entry per replication target.")
    gateway: GatewaySettings = _key(GatewaySettings(), "The DICOMweb service.")
    scheduler: SchedulerSettings = _key(SchedulerSettings(), "Scheduled jobs and reports.")
    base_dir: Path = field(default=Path("."), metadata={"internal": True})

    def source(self, name: str) -> SourceSettings:
        """The source called `name`; SettingsError if none is configured."""
        for src in self.sources:
            if src.name == name:
                return src
        raise SettingsError(f"sources: no source named {name!r} is configured")

    def target(self, name: str) -> TargetSettings:
        """The target called `name`; SettingsError if none is configured."""
        for t in self.targets:
            if t.name == name:
                return t
        raise SettingsError(f"targets: no target named {name!r} is configured")


def load(path: Path | str | None, environ: typing.Mapping[str, str] | None = None) -> Settings:
    """Load and validate a settings file; relative paths resolve against the file's folder."""
    env = os.environ if environ is None else environ
    if path is None:
        data: dict[str, Any] = {}
        base = Path.cwd()
    else:
        p = Path(path)
        try:
            with p.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise SettingsError(f"{p}: configuration file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{p}: not valid TOML: {exc}") from None
        base = p.resolve().parent
    _apply_environment(data, env)
    settings = _build(Settings, data, "")
    settings = dataclasses.replace(settings, base_dir=base)
    return _resolve_paths(settings, base)


def from_dict(data: dict[str, Any], base: Path) -> Settings:
    """Build settings from an already-parsed mapping (tests, generated configurations)."""
    settings = dataclasses.replace(_build(Settings, data, ""), base_dir=base)
    return _resolve_paths(settings, base)


def _apply_environment(data: dict[str, Any], env: typing.Mapping[str, str]) -> None:
    for name, value in env.items():
        if not name.startswith("VNA_") or "__" not in name:
            continue
        section, _, key = name[4:].lower().partition("__")
        table = data.setdefault(section, {})
        if not isinstance(table, dict):
            raise SettingsError(f"{name}: [{section}] is not a table section")
        table[key] = _parse_env_value(value)


def _parse_env_value(value: str) -> Any:
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value


def _build(cls: type[Any], data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise SettingsError(f"{where or 'settings'}: expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SettingsError(f"{_join(where, unknown[0])}: unknown key")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        key = _join(where, name)
        if name not in data:
            if f.metadata.get("required"):
                raise SettingsError(f"{key}: required key is missing")
            continue
        values[name] = _convert(hints[name], data[name], key)
    return cls(**values)


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, key)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise SettingsError(f"{key}: {value!r} is not one of {allowed}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise SettingsError(f"{key}: expected a list, got {type(value).__name__}")
        return [_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise SettingsError(f"{key}: expected a table, got {type(value).__name__}")
        return {str(k): _convert(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise SettingsError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SettingsError(f"{key}: expected a whole number >= 0, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise SettingsError(f"{key}: expected a number >= 0, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise SettingsError(f"{key}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise SettingsError(f"{key}: expected a path, got {value!r}")
        return Path(value)
    raise SettingsError(f"{key}: unsupported type {tp!r}")  # pragma: no cover


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _resolve_paths(settings: Settings, base: Path) -> Settings:
    def absolute(p: Path) -> Path:
        return Path(os.path.normpath(p if p.is_absolute() else (base / p)))

    archive = dataclasses.replace(
        settings.archive,
        root=absolute(settings.archive.root),
        quarantine=absolute(settings.archive.quarantine),
    )
    ingest = settings.ingest
    if ingest.after == "move" and ingest.processed is None:
        raise SettingsError("ingest.processed: required when ingest.after = 'move'")
    if ingest.processed is not None:
        ingest = dataclasses.replace(ingest, processed=absolute(ingest.processed))
    if ingest.batch_size < 1:
        raise SettingsError("ingest.batch_size: must be at least 1")
    _check_replicator(settings.replicator)
    names: set[str] = set()
    sources = []
    for i, src in enumerate(settings.sources):
        if not is_valid_source_name(src.name):
            raise SettingsError(
                f"sources[{i}].name: {src.name!r} must be 1-64 letters, digits, '-', '_' or '.'"
            )
        if src.name in names:
            raise SettingsError(f"sources[{i}].name: {src.name!r} is configured twice")
        names.add(src.name)
        _check_keywords(src.coerce, f"sources[{i}].coerce")
        sources.append(dataclasses.replace(src, drop=absolute(src.drop)))
    _check_targets(settings.targets)
    gateway = settings.gateway
    if gateway.audit_log is not None:
        gateway = dataclasses.replace(gateway, audit_log=absolute(gateway.audit_log))
    if gateway.viewer is not None:
        gateway = dataclasses.replace(gateway, viewer=absolute(gateway.viewer))
    for i, key in enumerate(gateway.keys):
        if len(key.sha256) != 64 or any(c not in "0123456789abcdef" for c in key.sha256.lower()):
            raise SettingsError(
                f"gateway.keys[{i}].sha256: expected the key's sha256, 64 hex digits"
            )
    scheduler = _check_scheduler(settings.scheduler, settings.targets)
    scheduler = dataclasses.replace(scheduler, reports=absolute(scheduler.reports))
    targets = []
    for t in settings.targets:
        if t.url.startswith("file://") and not t.url.startswith("file:///"):
            t = dataclasses.replace(t, url="file://" + str(absolute(Path(t.url[len("file://") :]))))
        targets.append(t)
    url = settings.index.url
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        rel = url[len("sqlite:///") :]
        if rel and rel != ":memory:":
            url = "sqlite:///" + str(absolute(Path(rel)))
    return dataclasses.replace(
        settings,
        archive=archive,
        ingest=ingest,
        sources=sources,
        targets=targets,
        gateway=gateway,
        scheduler=scheduler,
        index=IndexSettings(url=url),
    )


def _check_replicator(replicator: ReplicatorSettings) -> None:
    """A zero back-off would retry a failing copy in a tight loop; a zero poll, spin."""
    if replicator.batch_size < 1:
        raise SettingsError("replicator.batch_size: must be at least 1")
    for key in ("poll_seconds", "lease_seconds", "backoff_max_seconds"):
        if not getattr(replicator, key) > 0:
            raise SettingsError(f"replicator.{key}: must be more than 0")


def _check_targets(targets: list[TargetSettings]) -> None:
    from vna.cron import CronWindow
    from vna.rates import parse_rate

    names: set[str] = set()
    for i, t in enumerate(targets):
        where = f"targets[{i}]"
        if not is_valid_source_name(t.name):
            raise SettingsError(
                f"{where}.name: {t.name!r} must be 1-64 letters, digits, '-', '_' or '.'"
            )
        if t.name in names:
            raise SettingsError(f"{where}.name: {t.name!r} is configured twice")
        names.add(t.name)
        scheme, sep, rest = t.url.partition("://")
        if not sep or scheme not in TARGET_SCHEMES or not rest.strip("/"):
            raise SettingsError(
                f"{where}.url: {t.url!r} must start with one of "
                + ", ".join(s + "://" for s in TARGET_SCHEMES)
            )
        if t.concurrency < 1:
            raise SettingsError(f"{where}.concurrency: must be at least 1")
        if t.bandwidth:
            try:
                parse_rate(t.bandwidth)
            except ValueError as exc:
                raise SettingsError(f"{where}.bandwidth: {exc}") from None
        if t.window:
            try:
                CronWindow(t.window)
            except ValueError as exc:
                raise SettingsError(f"{where}.window: {exc}") from None
        if not 0 <= t.max_delete_share <= 1:
            raise SettingsError(f"{where}.max_delete_share: must be between 0 and 1")


def _check_scheduler(
    scheduler: SchedulerSettings, targets: list[TargetSettings]
) -> SchedulerSettings:
    from vna.cron import cron_trigger

    zone = None
    if scheduler.timezone:
        try:
            zone = zoneinfo.ZoneInfo(scheduler.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise SettingsError(
                f"scheduler.timezone: {scheduler.timezone!r} is not a known time zone"
            ) from None
    times = [(f"scheduler.{k}", getattr(scheduler, k)) for k in ("verify", "reconcile", "report")]
    times += [(f"targets[{i}].reconcile", t.reconcile) for i, t in enumerate(targets)]
    for where, expression in times:
        if expression:
            try:
                cron_trigger(expression, zone)
            except ValueError as exc:
                raise SettingsError(f"{where}: {exc}") from None
    if scheduler.verify_days < 1:
        raise SettingsError("scheduler.verify_days: must be at least 1")
    if scheduler.keep_reports < 1:
        raise SettingsError("scheduler.keep_reports: must be at least 1")
    if scheduler.misfire_grace_seconds < 1:
        raise SettingsError("scheduler.misfire_grace_seconds: must be at least 1")
    return scheduler


def _check_keywords(rules: CoercionSettings, where: str) -> None:
    if not (rules.set or rules.replace or rules.remove):
        return  # and pydicom's data dictionary need not be loaded
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    for kind, keywords in (
        ("set", rules.set),
        ("replace", rules.replace),
        ("remove", rules.remove),
    ):
        for kw in keywords:
            tag = tag_for_keyword(kw)
            if tag is None:
                raise SettingsError(f"{where}.{kind}.{kw}: not a DICOM keyword")
            if dictionary_VR(tag) == "SQ" and kind != "remove":
                raise SettingsError(f"{where}.{kind}.{kw}: sequences can only be removed")
            if (tag >> 16) in (0x0002, 0x7FE0) or kw in _PROTECTED:
                raise SettingsError(f"{where}.{kind}.{kw}: this attribute may not be coerced")


# Attributes that form the layout path or describe the encoding: changing them
# would break the bond between a file, its path and its pixel data.
_PROTECTED = frozenset(
    {
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "SOPClassUID",
        "SpecificCharacterSet",
        "TransferSyntaxUID",
    }
)


def describe() -> list[tuple[str, Any, str]]:
    """Every declared key as (dotted name, default, help), for docs and the example check."""
    out: list[tuple[str, Any, str]] = []

    def walk(cls: type[Any], prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal"):
                continue
            name = _join(prefix, f.name)
            tp = hints[f.name]
            inner = typing.get_args(tp)[0] if typing.get_origin(tp) is list else tp
            if dataclasses.is_dataclass(inner):
                walk(inner, name)  # type: ignore[arg-type]
            else:
                default = (
                    f.default_factory()
                    if f.default_factory is not dataclasses.MISSING
                    else f.default
                )
                out.append((name, default, f.metadata.get("help", "")))

    walk(Settings, "")
    return out
