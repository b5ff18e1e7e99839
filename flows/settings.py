"""Run settings: one dataclass per section, defaults that work on a laptop, YAML/TOML files.

Precedence: the dataclass defaults, then a config file (`--config run.yaml`), then options
given on the command line. `configs/example.yaml` shows every key with a comment.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

# Default featurize throughput of one GPU, used only by `wintok run --dry-run` for its
# GPU-hours estimate: WinTok so400m/16 encode + a SigLIP2-so400m teacher at 256 px in bf16 on
# one H100, about 0.4 TFLOP per image at ~40% of peak. An estimate, not a measurement here;
# measure yours with bench/featurize.py on the GPU and pass --gpu-images-per-s.
DEFAULT_GPU_IMAGES_PER_S = 400.0


@dataclass(frozen=True)
class IngestSettings:
    """Download and resize (pipelines.ingest.ingest keyword arguments)."""

    url_col: str = "url"  # URL column of the list
    caption_col: str | None = None  # caption column (stored as <key>.txt), none by default
    uid_col: str | None = None  # your own id column, kept in the status table
    image_size: int = 256  # stored side; match the tokenizer's input size
    resize_mode: str = "center-crop"  # center-crop | pad | squash
    shard_size: int = 1000  # input rows per shard (the unit of work and of resume)
    processes: int = 1  # img2dataset processes
    threads: int = 16  # download threads per process
    timeout: float = 10.0  # seconds per download
    retries: int = 0  # img2dataset's own per-URL retries
    min_image_size: int = 32  # smaller images fail as too_small
    max_pixels: int = 40_000_000  # larger decoded areas fail as too_large
    max_aspect_ratio: float = 10.0  # wider/taller images fail as aspect_ratio
    encode_quality: int = 95  # JPEG quality of stored images
    allow_private_network: bool = False  # allow 127.0.0.1 / 10.x URLs (local test servers)


@dataclass(frozen=True)
class FeaturizeSettings:
    """Tokenizer and teachers (pipelines.featurize.FeaturizeSpec + executor options)."""

    tokenizer: str | None = None  # tokenizer checkpoint; None: teacher features only
    teachers: tuple[str, ...] = ("efficientnet-lite0",)  # teacher specs, see `wintok run --help`
    semantic_dtype: str = "float16"  # float16 | bfloat16 | int8
    teacher_patches: bool = False  # also store teacher patch embeddings
    hflip: bool = False  # also store the pixel ids of the mirrored image (augmentation variant)
    batch_size: int = 32  # images per model call
    precision: str = "auto"  # fp32 | bf16 | auto (bf16 on GPU)
    resize: str = "center-crop"  # only for stored images not already at the input size
    decode_threads: int = 2  # decoding threads per worker
    workers: int | None = None  # Ray actors (default: one per GPU, else 1)
    threads_per_worker: int | None = None  # torch threads per CPU actor (fix it for bit-equal reruns)
    max_retries: int = 2  # re-dispatches of a shard whose worker died


@dataclass(frozen=True)
class PublishSettings:
    """Training-ready views (pipelines.publish, when available)."""

    enabled: bool = True  # run the publish stage in `wintok run`
    token_stage: str | None = None  # tokens/<lineage> to publish; default: every token stage
    format: str = "packed"  # packed (12-bit ids) | npy
    label_column: str | None = None  # ingest status column to store as <key>.cls labels


@dataclass(frozen=True)
class RuntimeSettings:
    """Where and how the stages run."""

    ray_address: str | None = None  # Ray cluster address; None: a local Ray started in-process
    prefect_api_url: str | None = None  # Prefect server; None: Prefect's ephemeral local API
    take_over_lock: bool = False  # take over the store lock of a dead run
    stage_retries: int = 2  # Prefect retries of a stage after a transient failure
    retry_delay_s: float = 10.0  # first retry delay; doubles each retry (with jitter)
    progress: bool = True  # progress bars on stderr
    gpu_images_per_s: float = DEFAULT_GPU_IMAGES_PER_S  # --dry-run GPU-hours estimate


@dataclass(frozen=True)
class RunSettings:
    """Everything a `wintok run` needs besides the URL list and the store."""

    ingest: IngestSettings = field(default_factory=IngestSettings)
    featurize: FeaturizeSettings = field(default_factory=FeaturizeSettings)
    publish: PublishSettings = field(default_factory=PublishSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    urls: str | None = None  # URL list (the command's URLS argument wins)
    store: str | None = None  # store root (--store wins)

    def to_dict(self) -> dict:
        """Plain data (Prefect flow parameters, manifest, artifacts)."""
        d = asdict(self)
        d["featurize"]["teachers"] = list(self.featurize.teachers)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "settings") -> "RunSettings":
        """Build from nested plain data, refusing unknown keys with the accepted ones."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a mapping of sections, got {type(data).__name__}")
        sections = {"ingest": IngestSettings, "featurize": FeaturizeSettings,
                    "publish": PublishSettings, "runtime": RuntimeSettings}
        top = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - top)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; accepted: {sorted(top)}")
        kwargs: dict[str, Any] = {k: data[k] for k in ("urls", "store") if data.get(k) is not None}
        for name, kind in sections.items():
            kwargs[name] = _section(kind, data.get(name) or {}, f"{where}: [{name}]")
        return cls(**kwargs)

    def merged(self, overrides: dict[str, dict[str, Any]]) -> "RunSettings":
        """A copy with `{section: {key: value}}` applied (command-line options)."""
        out = self
        for section, values in overrides.items():
            if values:
                cur = getattr(out, section)
                new = _section(type(cur), {**_plain(cur), **values}, f"option for [{section}]")
                out = replace(out, **{section: new})
        return out


def _plain(obj) -> dict:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def _section(kind, values: dict, where: str):
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {values!r}")
    known = {f.name: f for f in fields(kind)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; accepted: {sorted(known)}")
    clean = dict(values)
    if "teachers" in clean:
        t = clean["teachers"]
        if isinstance(t, str):
            t = [t]
        if not isinstance(t, (list, tuple)) or not all(isinstance(x, str) for x in t):
            raise ValueError(f"{where}: teachers must be a list of teacher specs, got {t!r}")
        clean["teachers"] = tuple(t)
    for name, value in clean.items():
        default = known[name].default
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ValueError(f"{where}: {name} must be true or false, got {value!r}")
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            clean[name] = float(value)
    return kind(**clean)


def load_settings(path: str | os.PathLike) -> RunSettings:
    """Read a YAML (.yaml/.yml) or TOML (.toml) settings file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {p} does not exist")
    text = p.read_text()
    if p.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"config file {p} is not valid YAML: {e}") from None
    elif p.suffix == ".toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"config file {p} is not valid TOML: {e}") from None
    else:
        raise ValueError(f"config file {p}: unknown format {p.suffix!r}; use .yaml, .yml or .toml")
    return RunSettings.from_dict(data, where=str(p))


def configure_prefect_env(settings: RuntimeSettings | None = None, *, verbose: bool = False) -> None:
    """Environment Prefect reads at import: no telemetry, quiet logs, a patient ephemeral start.

    Call before importing prefect. Values the user already set are kept.
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    if settings is not None and settings.prefect_api_url:
        os.environ["PREFECT_API_URL"] = settings.prefect_api_url
