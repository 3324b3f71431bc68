"""Configuration: frozen pydantic models, loaded from YAML with ``DETECTOR_*`` env overrides.

Every key has a default, so a file that sets only some keys is valid (CONTRACT.md §6). Unknown keys
and wrong values are errors that name the key, the value received and what is allowed.
Env overrides use ``__`` for nesting: ``DETECTOR_REDIS__PASSWORD=...`` sets ``redis.password``.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from detector.errors import ConfigError

Severity = Literal["page", "ticket", "info"]
CampaignKind = Literal["personal", "public"]
WindowName = Literal["recent", "short", "long", "memory"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaTopics(_Frozen):
    events: str = "orders"
    dead_letters: str = "orders.dlq"
    alerts: str = "promo-alerts"


class KafkaConfig(_Frozen):
    bootstrap_servers: str = "127.0.0.1:29092"
    group_id: str = "promo-detector"
    client_id: str = "promo-detector"
    topics: KafkaTopics = KafkaTopics()
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True
    max_poll_records: int = Field(default=2000, ge=1, le=100_000)
    fetch_max_bytes: int = Field(default=52_428_800, ge=1024)
    # Kafka's default; smaller fetches interleave partitions more finely (less to align).
    max_partition_fetch_bytes: int = Field(default=1_048_576, ge=1024)
    poll_timeout_ms: int = Field(default=500, ge=1)
    session_timeout_ms: int = Field(default=10_000, ge=1000)
    heartbeat_interval_ms: int = Field(default=3000, ge=100)
    max_poll_interval_ms: int = Field(default=300_000, ge=1000)
    request_timeout_ms: int = Field(default=30_000, ge=1000)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"


class RedisConfig(_Frozen):
    url: str = "redis://127.0.0.1:26379/0"
    username: str | None = None
    password: SecretStr | None = None
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    key_prefix: str = "pd:"
    socket_timeout_s: float = Field(default=5.0, gt=0)
    # Longest pause between retries while Redis is unreachable; `run` never drops events
    # meanwhile: it stops consuming, reports detector_store_up 0, and resumes on its own.
    retry_backoff_max_s: float = Field(default=5.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _password_out_of_url(cls, data: Any) -> Any:
        """A password written into ``url`` moves to ``password`` (an explicit ``password`` or
        DETECTOR_REDIS__PASSWORD wins), so that it is masked like any secret and never printed
        with the URL (check-config, repr, logs)."""
        if not isinstance(data, dict) or not isinstance(data.get("url"), str):
            return data
        parts = urlsplit(data["url"])
        if parts.password is None:
            return data
        user = f"{parts.username}@" if parts.username else ""
        netloc = user + parts.netloc.rpartition("@")[2]
        out = {**data, "url": urlunsplit(parts._replace(netloc=netloc))}
        if out.get("password") is None:
            out["password"] = unquote(parts.password)
        return out


class EventsConfig(_Frozen):
    max_message_bytes: int = Field(default=65_536, ge=256)
    max_future_skew_s: float = Field(default=300.0, ge=0)
    allowed_lateness_s: float = Field(default=120.0, ge=0)
    # None: the longest window plus the allowed lateness.
    dedupe_horizon_s: float | None = Field(default=None, gt=0)
    # A partition with no data for this long does not hold the watermark back (run only).
    idle_partition_s: float = Field(default=30.0, gt=0)
    # Records held to merge partitions in event-time order (run only); past this many they are
    # released anyway, so memory stays bounded when one partition lags far behind.
    align_buffer_records: int = Field(default=50_000, ge=1000)
    # Wall-clock idleness after which `run` advances the watermark with the wall clock.
    idle_advance_s: float = Field(default=10.0, gt=0)


class WindowsConfig(_Frozen):
    bucket_s: int = Field(default=60, ge=1, le=3600)
    # The last couple of buckets: fast reactions on sums (e.g. discount ratios).
    recent_s: int = Field(default=120, ge=1)
    short_s: int = Field(default=600, ge=1)
    long_s: int = Field(default=3600, ge=1)
    # How far back codes' redeemers are remembered: a personal code's owner who used it hours
    # ago still counts when a stranger uses it now. Only capped sets live this long.
    memory_s: int = Field(default=6 * 3600, ge=60)
    # How far back campaigns' codes are remembered to learn whether a campaign is personal: a
    # small personal campaign may see a code an hour, and a night must not make it unknown.
    # One capped set per campaign lives this long.
    campaign_memory_s: int = Field(default=48 * 3600, ge=60)
    # How long a code's (account, device, IP) triples link accounts into households: a family
    # member on the owner's home IP is the owner's household even when the owner's use from
    # home was longer ago than memory_s. Counts still cover memory_s only.
    household_s: int = Field(default=24 * 3600, ge=60)
    # Distinct counts are exact up to this many members per key and window; beyond, they are a
    # lower bound that is already past every threshold (validated below).
    distinct_exact_cap: int = Field(default=100, ge=10, le=100_000)
    new_account_age_s: float = Field(default=86_400.0, ge=0)
    # A fresh account was registered this shortly before its order (a subset of new accounts):
    # legitimate newcomers register over the whole day, a farm registers its accounts in bulk.
    fresh_account_age_s: float = Field(default=1800.0, ge=0)
    time_zone: str = "UTC"

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as e:
            raise ValueError(
                f"unknown IANA time zone {v!r}; use e.g. 'UTC' or 'Europe/Moscow'"
            ) from e
        return v

    def seconds(self, name: WindowName) -> int:
        windows = {"recent": self.recent_s, "short": self.short_s, "long": self.long_s}
        return windows.get(name, self.memory_s)


class _Rule(_Frozen):
    enabled: bool = True
    severity: Severity = "page"


class CodeSharedRule(_Rule):
    """A personal code redeemed by several distinct accounts: a leak.

    Fires at ``min_accounts`` accounts, or already at a second account from another household
    (not linked by a device or an IP: a spouse on the same wifi is not a leak).
    """

    window: WindowName = "memory"
    min_accounts: int = Field(default=3, ge=2)
    second_household: bool = True
    # An undeclared campaign is learned as personal once it has this many codes (besides the
    # one judged) within windows.campaign_memory_s and at most this share of them has more
    # than one account.
    learn_min_codes: int = Field(default=5, ge=2)
    learn_max_shared_fraction: float = Field(default=0.2, ge=0, le=1)


class CampaignRateRule(_Rule):
    """A campaign's redemption share of all orders far above its learned baseline."""

    severity: Severity = "ticket"
    # The model's score (its likelihood scale: 0.5 is already rare) of the short-window share.
    score_threshold: float = Field(default=0.5, ge=0, le=1)
    min_ratio: float = Field(default=3.0, ge=1)
    min_redemptions: int = Field(default=20, ge=1)
    # Redemptions above the baseline's expectation, in Poisson standard deviations.
    min_sigmas: float = Field(default=5.0, ge=0)
    # Ratio to baseline at which the alert is raised as a page instead of `severity`.
    page_ratio: float | None = Field(default=10.0, ge=1)


class BotFarmRule(_Rule):
    """Many new accounts redeeming one code from few devices, or a burst of fresh ones.

    Looks only at new accounts (younger than ``windows.new_account_age_s``), so a farm is not
    diluted by the legitimate crowd on a busy public code. Devices, not IPs, unless devices are
    unknown: carrier NAT puts unrelated customers behind one IP. A slow farm has not yet reused
    a device in its first minutes, but its accounts are already fresh (younger than
    ``windows.fresh_account_age_s``) where legitimate new accounts are spread over the day, and
    they are more of the code's redeemers than newcomers were before.
    """

    window: WindowName = "short"
    min_new_accounts: int = Field(default=6, ge=2)
    # New accounts beyond one per device (accounts - devices): 4 means e.g. 9 accounts on 5.
    min_extra_accounts: int = Field(default=4, ge=1)
    # Fresh accounts on the code within ``window``, and their least share of its new accounts.
    min_fresh_accounts: int = Field(default=3, ge=2)
    min_fresh_share: float = Field(default=0.3, ge=0, le=1)
    # How unlikely that many fresh accounts must be among the code's new ones, were each new
    # account fresh with probability ``expected_fresh_share`` (binomial tail), together with that
    # many new accounts among its redeemers, were newcomers as common as in the ``long`` window
    # before (beta-binomial tail; Fisher's method combines the two). The default share, None,
    # is fresh_account_age_s / new_account_age_s: registrations spread over the day.
    max_fresh_pvalue: float = Field(default=1e-5, gt=0, le=1)
    # Already at this p when at least ``min_shared_accounts`` of the new accounts share a device
    # or an IP with another: each alone is common enough on a busy code, both together are not.
    max_fresh_pvalue_shared: float = Field(default=1e-3, gt=0, le=1)
    min_shared_accounts: int = Field(default=2, ge=1)
    expected_fresh_share: float | None = Field(default=None, gt=0, lt=1)


class DiscountAnomalyRule(_Rule):
    """A campaign's discount-to-total ratio far above its norm (a misconfigured discount).

    Looks at the campaign's last redemptions (newest first): the mean ratio of the last ``j`` of
    them (for every ``j >= min_redemptions``) must clear the campaign's learned norm by
    ``min_factor`` times, by ``min_sigmas`` standard errors and by ``min_ratio``. A campaign with a
    fixed percentage is caught at the second broken order; one with naturally varied ratios needs
    more evidence, automatically. A campaign giving the same amount off every order is judged by
    amount instead: the mean amount of the last ``j`` orders must be ``min_factor`` times its usual
    amount (a small order's high ratio is not a changed setting).
    """

    min_redemptions: int = Field(default=2, ge=1)
    min_factor: float = Field(default=2.5, ge=1)
    # Ratios are skewed and bounded (a fixed discount is a large share of a small order):
    # the Gaussian bound needs a wide margin.
    min_sigmas: float = Field(default=8.0, ge=0)
    min_ratio: float = Field(default=0.3, ge=0, le=1)
    # Before the norm is learned: the last ``min_redemptions + 1`` orders all at least this.
    absolute_ratio: float = Field(default=0.9, ge=0, le=1)
    # A campaign whose learned discount amounts vary by at most this share of their mean gives
    # a fixed amount: judged by amount (``min_factor`` times its usual amount), not by ratio.
    # 0 judges every campaign by ratio.
    fixed_amount_cv: float = Field(default=0.05, ge=0, le=1)
    # A campaign whose judged discount (ratio, or amount) varies by at most this share of its
    # mean gives exactly its setting: one order far above it is already a changed setting, so
    # ``min_redemptions`` is 1 there (a misconfiguration at night may see a single order).
    # 0 keeps ``min_redemptions`` everywhere.
    exact_cv: float = Field(default=0.01, ge=0, le=1)


class AccountStackingRule(_Rule):
    """One account redeeming many distinct codes of one campaign: harvested personal codes.

    Counted per campaign, so a heavy buyer using every public campaign's code is not a harvester.
    """

    window: WindowName = "long"
    min_codes: int = Field(default=5, ge=2)


class RulesConfig(_Frozen):
    code_shared: CodeSharedRule = CodeSharedRule()
    campaign_rate: CampaignRateRule = CampaignRateRule()
    bot_farm: BotFarmRule = BotFarmRule()
    discount_anomaly: DiscountAnomalyRule = DiscountAnomalyRule()
    account_stacking: AccountStackingRule = AccountStackingRule()


class RuleOverrides(_Frozen):
    """Per-campaign overrides: any subset of a rule's keys."""

    code_shared: dict[str, Any] = {}
    campaign_rate: dict[str, Any] = {}
    bot_farm: dict[str, Any] = {}
    discount_anomaly: dict[str, Any] = {}


class CampaignConfig(_Frozen):
    kind: CampaignKind | None = None
    rules: RuleOverrides = RuleOverrides()


class Silence(_Frozen):
    key: str
    until: datetime
    reason: str
    rule: str | None = None

    @field_validator("until")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("'until' needs a time-zone offset, e.g. 2026-12-01T00:00:00Z")
        return v


class AlertsConfig(_Frozen):
    resolve_after_s: float = Field(default=600.0, ge=0)
    cooldown_s: float = Field(default=1800.0, ge=0)
    max_firing: int = Field(default=100, ge=1)
    jsonl_path: str | None = None
    kafka: bool = True


class MetricsConfig(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(default=29100, ge=0, le=65535)
    # The firing-alerts gauge carries a promo code as a label only for this many alerts.
    max_firing_labels: int = Field(default=50, ge=1, le=1000)
    top_campaigns: int = Field(default=20, ge=1, le=200)


class ModelsConfig(_Frozen):
    # Persist the models (and the bucket they reached) every this many closed buckets; within
    # the windows' retention, a restart re-learns the buckets since from the shared counters.
    snapshot_every_buckets: int = Field(default=10, ge=1, le=30)
    # The instance holding this lease is the models' single writer; another takes over when
    # it stops renewing.
    lease_ttl_s: float = Field(default=15.0, gt=0)


class LoggingConfig(_Frozen):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "console"


class Config(BaseSettings):
    """The detector's whole configuration; see docs/configuration.md for every key."""

    model_config = SettingsConfigDict(
        frozen=True, extra="forbid", env_prefix="DETECTOR_", env_nested_delimiter="__"
    )

    state: Literal["memory", "redis"] = "redis"
    kafka: KafkaConfig = KafkaConfig()
    redis: RedisConfig = RedisConfig()
    events: EventsConfig = EventsConfig()
    windows: WindowsConfig = WindowsConfig()
    rules: RulesConfig = RulesConfig()
    campaigns: dict[str, CampaignConfig] = {}
    allow_list: list[str] = []
    silences: list[Silence] = []
    alerts: AlertsConfig = AlertsConfig()
    metrics: MetricsConfig = MetricsConfig()
    models: ModelsConfig = ModelsConfig()
    logging: LoggingConfig = LoggingConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Env beats the file: an operator's override (a secret, a host) wins over the YAML.
        return (env_settings, init_settings)

    @property
    def dedupe_horizon_s(self) -> float:
        h = self.events.dedupe_horizon_s
        return h if h is not None else self.windows.long_s + self.events.allowed_lateness_s

    @property
    def memory_retention_s(self) -> float:
        return max(self.retention_s, float(self.windows.memory_s))

    @property
    def campaign_retention_s(self) -> float:
        return max(self.retention_s, float(self.windows.campaign_memory_s))

    @property
    def household_retention_s(self) -> float:
        return max(self.memory_retention_s, float(self.windows.household_s))

    @property
    def retention_s(self) -> float:
        """How long windowed state must be kept: the longest window, lateness and a bucket."""
        return self.windows.long_s + self.events.allowed_lateness_s + 2 * self.windows.bucket_s

    def config_hash(self) -> str:
        return hashlib.sha256(self.effective_json().encode()).hexdigest()[:12]

    def effective_json(self) -> str:
        """Every effective value, defaults filled in, secrets masked."""
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)

    def rule_for(self, rule: str, campaign_id: str | None) -> Any:
        """The rule's config with the campaign's overrides applied (validated at load)."""
        base = getattr(self.rules, rule)
        if campaign_id is None or campaign_id not in self.campaigns:
            return base
        over: dict[str, Any] = getattr(self.campaigns[campaign_id].rules, rule, {})
        return base.model_copy(update=over) if over else base


# Keys whose change needs a restart: they shape state layout or connections.
RESTART_KEYS = ("state", "kafka", "redis", "windows", "events", "metrics", "models", "logging")


def _check_semantics(cfg: Config) -> None:
    w = cfg.windows
    for name in ("recent_s", "short_s", "long_s"):
        if getattr(w, name) % w.bucket_s:
            raise ConfigError(
                f"config key 'windows.{name}'={getattr(w, name)} must be a multiple of "
                f"'windows.bucket_s'={w.bucket_s}"
            )
    if w.fresh_account_age_s > w.new_account_age_s:
        raise ConfigError(
            f"config key 'windows.fresh_account_age_s'={w.fresh_account_age_s} must be <= "
            f"'windows.new_account_age_s'={w.new_account_age_s}: fresh accounts are new ones"
        )
    if w.household_s < w.memory_s:
        raise ConfigError(
            f"config key 'windows.household_s'={w.household_s} must be >= "
            f"'windows.memory_s'={w.memory_s}: households link the redeemers memory_s counts"
        )
    if not w.recent_s <= w.short_s <= w.long_s:
        raise ConfigError(
            f"config keys must satisfy windows.recent_s ({w.recent_s}) <= windows.short_s "
            f"({w.short_s}) <= windows.long_s ({w.long_s})"
        )
    thresholds = {
        "rules.code_shared.min_accounts": cfg.rules.code_shared.min_accounts,
        "rules.account_stacking.min_codes": cfg.rules.account_stacking.min_codes,
        "rules.bot_farm.min_new_accounts": cfg.rules.bot_farm.min_new_accounts,
        "rules.bot_farm.min_fresh_accounts": cfg.rules.bot_farm.min_fresh_accounts,
    }
    for name, value in thresholds.items():
        if value > w.distinct_exact_cap:
            raise ConfigError(
                f"config key '{name}'={value} exceeds 'windows.distinct_exact_cap'="
                f"{w.distinct_exact_cap}; distinct counts are exact only up to the cap: raise it"
            )
    for cid, camp in cfg.campaigns.items():
        for rule in ("code_shared", "campaign_rate", "bot_farm", "discount_anomaly"):
            over = getattr(camp.rules, rule)
            if not over:
                continue
            base = getattr(cfg.rules, rule)
            try:
                type(base).model_validate({**base.model_dump(), **over})
            except ValidationError as e:
                raise ConfigError(_format(e, prefix=f"campaigns.{cid}.rules.{rule}")) from None


def _allowed_at(loc: tuple[str | int, ...]) -> str:
    model: Any = Config
    for part in loc[:-1]:
        fields = getattr(model, "model_fields", None)
        if fields is None or not isinstance(part, str) or part not in fields:
            return ""
        ann = fields[part].annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    fields = getattr(model, "model_fields", None)
    return ", ".join(sorted(fields)) if fields else ""


def _format(e: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in e.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc)
        key = f"{prefix}.{key}" if prefix else key
        received = err.get("input")
        if loc and str(loc[-1]).endswith("password"):
            received = "**********"  # never echo a secret, not even an invalid one
        if err["type"] == "extra_forbidden":
            allowed = _allowed_at(loc)
            lines.append(f"config key '{key}' is unknown; allowed keys here: {allowed}")
        else:
            lines.append(f"config key '{key}': received {received!r}; {err['msg']}")
    return "invalid config:\n  " + "\n  ".join(lines)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load and validate a config file (or only defaults + env when ``path`` is None)."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read config file {str(p)!r}: {e.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {str(p)!r} must hold a mapping of keys; received a "
                f"{type(loaded).__name__}"
            )
        data = loaded
    if overrides:
        data = _deep_merge(data, overrides)
    try:
        cfg = Config(**data)
    except ValidationError as e:
        raise ConfigError(_format(e)) from None
    _check_semantics(cfg)
    return cfg


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def restart_needed(old: Config, new: Config) -> list[str]:
    """Keys that differ between two configs and cannot be applied live."""
    keys = [k for k in RESTART_KEYS if getattr(old, k) != getattr(new, k)]
    # The alert sinks are built at start; the lifecycle's numbers are live.
    for k in ("jsonl_path", "kafka"):
        if getattr(old.alerts, k) != getattr(new.alerts, k):
            keys.append(f"alerts.{k}")
    return keys
