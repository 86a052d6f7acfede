"""The settings object: built once in the entry point from STREAMQUANT_* variables and an optional file.

Sections are frozen sub-models passed inward (`settings.kafka` to the Kafka layer, and so on).
Variables are `STREAMQUANT_<SECTION>_<FIELD>`, e.g. `STREAMQUANT_KAFKA_BOOTSTRAP` or
`STREAMQUANT_KAFKA_SASL_PASSWORD`; a file (TOML or YAML, `--config F` or `STREAMQUANT_CONFIG`) has one
table per section. Precedence: explicit arguments, then variables, then the file, then defaults.
Unknown keys anywhere are errors.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gpu_kernels.features import DEFAULT_FEATURES
from streams.config import KafkaConfig
from streams.topics import CatalogOptions

ENV_PREFIX = "STREAMQUANT_"
CONFIG_ENV = "STREAMQUANT_CONFIG"


class SettingsError(Exception):
    """Settings that cannot be loaded: a bad file, an unknown key, an invalid value."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RedisSettings(_Section):
    url: str = "redis://127.0.0.1:6379/0"
    password: SecretStr | None = None


class TopicSettings(_Section):
    prefix: str = Field(default="", pattern=r"^[A-Za-z0-9._-]*$")
    data_partitions: int = Field(default=8, ge=1, le=1024)
    command_partitions: int = Field(default=3, ge=1, le=256)
    replication_factor: int = Field(default=1, ge=1, le=7)
    retention_hours: float = Field(default=168.0, gt=0)

    def catalog_options(self) -> CatalogOptions:
        return CatalogOptions(
            prefix=self.prefix,
            data_partitions=self.data_partitions,
            command_partitions=self.command_partitions,
            replication_factor=self.replication_factor,
            data_retention_ms=int(self.retention_hours * 3_600_000),
        )


class IngestSettings(_Section):
    """Micro-batch bounds of the processors, and the tick wire format and size limit."""

    max_batch: int = Field(default=25_000, ge=1, le=1_000_000)
    max_wait_ms: int = Field(
        default=10, ge=0, le=60_000,
        description="a consume returns after this long, or at max_batch messages; a micro-batch holds what arrived "
                    "meanwhile (the features processor: features.max_wait_ms)")
    max_tick_bytes: int = Field(default=4096, ge=64, le=1_048_576)
    wire_format: Literal["json", "avro"] = "json"


class DevSettings(_Section):
    home: Path = Path(".devstack")
    cache: Path = Path(".cache/kafka")
    kafka_port: int = 9092
    controller_port: int = 9093
    redis_port: int = 6379
    secure_kafka_port: int = Field(default=9094, description="SASL_SSL listener of `dev up --secure`'s broker")
    secure_controller_port: int = 9095
    heap: str = Field(default="1g", pattern=r"^[0-9]+[mMgG]$")
    start_timeout_s: float = Field(default=90.0, gt=0)


class MetricsSettings(_Section):
    port: int = Field(default=9464, ge=0, le=65535, description="Prometheus /metrics port (0: off)")


class FeaturesSettings(_Section):
    """The feature processor."""

    group: str = "streamquant-features"
    instance_id: str | None = Field(default=None, description="stable per instance; default: the host name")
    intervals: tuple[str, ...] = ("1s", "1m")
    lateness_ms: int = Field(default=0, ge=0)
    features: tuple[str, ...] = DEFAULT_FEATURES
    transaction_timeout_ms: int = Field(
        default=10_000, ge=1_000,
        description="how long the broker keeps a dead instance's open transaction (it holds back the offsets and "
                    "changelog a successor needs); Kafka Streams' default under exactly-once")
    online_store: bool = Field(default=True, description="keep each symbol's latest feature vector in Redis")
    checkpoint_interval_ms: int = Field(
        default=1_000, ge=0, le=3_600_000,
        description="how often each partition's state is checkpointed to the changelog (in a batch's transaction); "
                    "a restore replays the ticks since. 0: every batch, for every symbol it touched")
    max_wait_ms: int = Field(
        default=1, ge=0, le=60_000,
        description="ingest.max_wait_ms for the features processor: short, as its batches that close no bar skip "
                    "the broker (commit_interval_ms)")
    commit_interval_ms: int = Field(
        default=1_000, ge=0, le=3_600_000,
        description="the longest a batch that publishes nothing (closes no bar) waits for its offsets to be "
                    "committed, with the next transaction or on their own; such batches skip the broker. 0: every "
                    "batch commits")
    close_gather_ms: int = Field(
        default=5, ge=0, le=1_000,
        description="a batch that closes bars on some partitions takes what arrives in up to this long more for "
                    "partitions one bar boundary short, so that all close in one transaction. 0: off")
    backend: Literal["auto", "cpu", "gpu"] = Field(
        default="auto", description="where the indicator kernels run; auto: the GPU when CuPy sees one. A batch the "
                                    "GPU fails is recomputed on the CPU (streamquant_gpu_fallbacks_total)")
    gpu_min_bars: int = Field(
        default=30_000, ge=0, description="under backend auto, batches of fewer bars run on the CPU, which is faster "
                                          "for them than copies and launches (measured: bench/RESULTS.md)")


class JobsSettings(_Section):
    """The job control plane (`streamquant run jobs`) and the clients that submit jobs."""

    app_id: str = Field(default="streamquant-jobs", description="Faust app id: consumer group and table topics")
    max_concurrent: int = Field(default=16, ge=1, le=256, description="jobs running at once (worker processes)")
    gpu_slots: int = Field(default=1, ge=0, description="jobs on the GPU at once (0: never use it)")
    gpu_wait_s: float = Field(default=30.0, ge=0, description="a GPU-preferring job waits this long, then runs on CPU")
    artifact_root: str = Field(default="artifacts", description="where large results go: a path or fsspec URL")
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=6066, ge=1, le=65535, description="HTTP views GET /jobs/{id}[/result]")
    cache_dir: str = Field(default=".cache/results", description="L2 (local disk) result cache")
    cache_l1_ttl_s: float = Field(default=60.0, ge=0)
    cache_l2_ttl_s: float = Field(default=300.0, ge=0)
    cache_l3_ttl_s: int = Field(default=7 * 24 * 3600, ge=1, description="L3 (Redis) result cache")


class PredictionsSettings(_Section):
    """The prediction processor and request-reply Predict."""

    group: str = "streamquant-predictions"
    instance_id: str | None = Field(default=None, description="stable per instance; default: the host name")
    model: str = Field(default="direction_rf", min_length=1, description="registry name; its active version serves")
    interval: str = Field(default="1m", description="the feature vectors' interval to score")
    long_threshold: float = Field(default=0.55, ge=0, le=1, description="signal 1 when P(up) is at least this")
    short_threshold: float = Field(default=0.45, ge=0, le=1, description="signal -1 when P(up) is at most this")
    transaction_timeout_ms: int = Field(default=10_000, ge=1_000)
    online_ttl_s: int = Field(default=86_400, ge=1, description="how long the online store keeps a feature vector")
    backend: Literal["auto", "cpu", "gpu"] = Field(
        default="auto", description="where the forest is scored; auto: the GPU when CuPy sees one. A batch the GPU "
                                    "fails is scored on the CPU (streamquant_gpu_fallbacks_total)")
    gpu_min_rows: int = Field(
        default=256, ge=0, description="under backend auto, batches of fewer rows are scored on the CPU, which is "
                                       "faster for them (measured: bench/RESULTS.md)")


SECTIONS = ("kafka", "redis", "topics", "ingest", "dev", "metrics", "features", "jobs", "predictions")


class Settings(BaseSettings):
    """Every setting of a StreamQuant process."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    kafka: KafkaConfig = KafkaConfig()
    redis: RedisSettings = RedisSettings()
    topics: TopicSettings = TopicSettings()
    ingest: IngestSettings = IngestSettings()
    dev: DevSettings = DevSettings()
    metrics: MetricsSettings = MetricsSettings()
    features: FeaturesSettings = FeaturesSettings()
    jobs: JobsSettings = JobsSettings()
    predictions: PredictionsSettings = PredictionsSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _FileSource(settings_cls, _FILE_DATA.get("data", {}))


class _FileSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


# The file's contents for the one load in progress (sources are built by pydantic-settings itself).
_FILE_DATA: dict[str, dict[str, Any]] = {}


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as err:
        raise SettingsError(f"cannot read config file {path}: {err.strerror}") from None
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            raise SettingsError(f"config file {path} must end in .toml, .yaml or .yml")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as err:
        raise SettingsError(f"config file {path} is not valid: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path} must hold a table per section")
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise SettingsError(f"config file {path}: unknown section(s) {sorted(unknown)}; known: {list(SECTIONS)}")
    return data


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Reads variables and the optional file once; unknown STREAMQUANT_* variables are errors."""
    env = os.environ
    for name in env:
        upper = name.upper()
        if upper.startswith(ENV_PREFIX) and upper != CONFIG_ENV:
            section, _, field = upper[len(ENV_PREFIX):].partition("_")
            if section.lower() not in SECTIONS or not field:
                raise SettingsError(f"unknown setting {name}; sections are {', '.join(SECTIONS)}")
    if config_file is None and env.get(CONFIG_ENV):
        config_file = Path(env[CONFIG_ENV])
    _FILE_DATA["data"] = read_config_file(config_file) if config_file else {}
    try:
        return Settings(**overrides)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SettingsError(f"invalid setting {where}: {first['msg']}") from None
    finally:
        _FILE_DATA.clear()
