"""Server configuration: built once from the environment, validated eagerly.

Nothing else in the project reads `os.environ`.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from routing import MAX_WORKERS

__all__ = [
    "DEFAULT_DETECT_CHANGE",
    "DEFAULT_DETECT_MAX_INTERVAL_S",
    "DEFAULT_DEVICE_LABELS",
    "DEFAULT_END_OF_TURN_S",
    "DEFAULT_TURN_CEILING_S",
    "DEFAULT_TURN_THRESHOLD",
    "DEFAULT_GEMINI_MODEL",
    "DEFAULT_INTERVIEWER_NAME",
    "DEFAULT_INTERVIEW_MINUTES",
    "DEFAULT_LLM_TIMEOUT_S",
    "DEFAULT_NUDGE_S",
    "Config",
    "ConfigError",
    "is_loopback",
]

# Defaults that the engine and the adapters share with the configuration:
# defined here once, referred to there (`engine.anomaly.AnomalySettings`,
# `engine.interviewer.InterviewPlan`, `engine.conversation.TurnSettings`,
# `adapters.gemini.GeminiLlm`). This module imports nothing of the project
# but `routing` (plain standard library), so anything may import it.
DEFAULT_DEVICE_LABELS: tuple[str, ...] = (
    "laptop", "cell phone", "tv", "keyboard", "mouse", "remote",
)
# The video change gate (`media.video_track.ChangeGate`): the detector runs on a
# sampled frame when this fraction of its 64x48 grey thumbnail changed since
# the last analysed frame (0.003: about 8 pixels of the thumbnail's 60x44
# inside, a 30x30 px object at 640x480), and at least every
# DEFAULT_DETECT_MAX_INTERVAL_S seconds anyway.
DEFAULT_DETECT_CHANGE = 0.003
DEFAULT_DETECT_MAX_INTERVAL_S = 3.0
DEFAULT_INTERVIEWER_NAME = "Serin"
DEFAULT_INTERVIEW_MINUTES = 20.0
DEFAULT_END_OF_TURN_S = 1.2
# The learned end of turn (engine/turns.py): Smart Turn's P(complete) that
# ends an answer whose text reads as finished, and the silence that ends any.
DEFAULT_TURN_THRESHOLD = 0.8
DEFAULT_TURN_CEILING_S = 3.0
DEFAULT_NUDGE_S = 20.0
DEFAULT_GEMINI_MODEL = "gemini-2.5-flash"
# How long the interviewer waits for the model's first words before it
# falls back to its own wording.
DEFAULT_LLM_TIMEOUT_S = 5.0


class ConfigError(ValueError):
    """A setting in the environment is missing or malformed."""


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    # Local mode (no API_KEY) on a non-loopback HOST, knowingly.
    allow_unauthenticated: bool = False
    port: int = 8080
    database_url: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)
    data_dir: Path = Path("./data")
    media_dir: Path | None = None  # resumes, recordings, evidence (default: under data_dir)
    public_url: str | None = None
    checkpoint_s: float = 5.0
    # Rows another instance left `in_progress` are only declared interrupted
    # once their last checkpoint is this old: that instance may still be alive.
    stale_after_s: float = 60.0
    # STUN/TURN urls only: TURN passwords are made per client from `turn_secret`.
    ice_servers: tuple[dict[str, Any], ...] = ()
    turn_secret: str | None = field(default=None, repr=False)
    turn_ttl_s: int = 3600
    ice_loopback_only: bool = False
    cors_origins: tuple[str, ...] = ()
    detect_fps: float = 2.0
    # 0 turns the change gate off: every sampled frame gets a detector run.
    detect_max_interval_s: float = DEFAULT_DETECT_MAX_INTERVAL_S
    detect_change: float = DEFAULT_DETECT_CHANGE
    keepalive_timeout_s: float = 8.0
    detector_kind: str = "nanodet"
    detector_model: str | None = None
    asr_model: str | None = None
    asr_cache_dir: Path | None = None  # ASR_CACHE_DIR; None: user_cache_dir
    # Models joined from packages, one copy per machine user, where Hugging
    # Face keeps its downloads: $XDG_CACHE_HOME (~/.cache)/interview-media-server;
    # None (a user without a home): DATA_DIR/models.
    user_cache_dir: Path | None = field(default_factory=lambda: _user_cache_dir({}))
    asr_threads: int = 1
    asr_workers: int = 1
    # "fit": the Whisper encoder sees the piece plus a margin (3-6x less ASR
    # CPU than "pad30", every piece at 30 s; with base it reads better than
    # tiny.en at 30 s: BENCHMARKS.md).
    asr_encoder: Literal["fit", "pad30"] = "fit"
    # 3 s: on AVX2-only CPUs base loops on short pieces at 1-2 s (BENCHMARKS.md,
    # "Fitted decodes that loop").
    asr_fit_margin_s: float = 3.0
    asr_max_pending: int = 64  # transcriptions waiting across sessions; more are dropped
    asr_max_wait_s: float = 5.0  # a piece waiting this long goes before shorter ones
    asr_max_batch: int = 4  # pieces from different sessions decoded in one pass (1: never)
    detect_workers: int = 1
    device_labels: tuple[str, ...] = DEFAULT_DEVICE_LABELS
    max_framerate: int = 10
    workers: int = 1
    worker_index: int | None = None  # this process mints ids that worker owns (routing.py)
    recording: bool = True
    record_fps: float = 5.0
    # Free space under DATA_DIR kept for rows and the database: below it no
    # new recording starts (0: no reserve).
    disk_reserve_mb: int = 512
    # Finished recordings and evidence older than this are deleted; None keeps them.
    recording_retention_days: float | None = None
    rejoin_grace_s: float = 30.0
    invite_ttl_s: float = 7 * 24 * 3600.0  # an invitation nobody used is closed after this
    admit_load: float = 0.7  # new connections only below this load (engine/admission.py)
    max_sessions: int | None = None  # and below this many calls, when set
    interviewer: bool = True
    interviewer_name: str = DEFAULT_INTERVIEWER_NAME
    interviewer_greeting: str | None = None
    interview_max_minutes: float = DEFAULT_INTERVIEW_MINUTES
    nudge_s: float = DEFAULT_NUDGE_S
    end_of_turn_s: float = DEFAULT_END_OF_TURN_S
    # "smart-turn": the learned end of turn (engine/turns.py); "silence": the
    # fixed END_OF_TURN_S rule.
    turn_detection: Literal["smart-turn", "silence"] = "smart-turn"
    turn_threshold: float = DEFAULT_TURN_THRESHOLD
    turn_ceiling_s: float = DEFAULT_TURN_CEILING_S
    tts: str = "auto"
    tts_processes: int = 1  # Piper worker programs per server process
    tts_cache_entries: int = 256  # sentences remembered per process; 0: none
    gemini_api_key: str | None = field(default=None, repr=False)
    gemini_model: str = DEFAULT_GEMINI_MODEL
    gemini_base_url: str | None = None
    llm_timeout_s: float = DEFAULT_LLM_TIMEOUT_S
    resume_parse_timeout_s: float = 10.0
    resume_parse_memory_mb: int = 512
    # Where `interview.ended` and `review.decided` events are POSTed, signed
    # with `webhook_secret` (storage/webhooks.py); None sends none.
    webhook_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)
    webhook_retry_max_s: float = 300.0  # the longest wait between two attempts
    # How long a review token minted without `ttl_s` (the `review_url` of a
    # new session included) stays valid.
    review_token_ttl_s: float = 30 * 24 * 3600.0
    # Several nodes on one database (storage/nodes.py): the URL other nodes
    # reach this one at (None: http://HOST:PORT), how often it writes its
    # heartbeat, and how old another node's heartbeat must be for it to count
    # as dead (its open interviews then become `interrupted`).
    node_url: str | None = None
    node_heartbeat_s: float = 5.0
    node_dead_s: float = 20.0
    # SIGTERM drains first: no new sessions, live interviews may finish for
    # up to this long, then they are saved and closed (0: at once).
    drain_timeout_s: float = 0.0

    @property
    def disk_reserve_bytes(self) -> int:
        return self.disk_reserve_mb << 20

    @property
    def recording_retention_s(self) -> float | None:
        days = self.recording_retention_days
        return None if days is None else days * 86400.0

    @property
    def model_cache_dir(self) -> Path:
        """Where the ASR model is joined: `ASR_CACHE_DIR`, else the user's
        cache, else (no home directory) `DATA_DIR/models`."""
        return self.asr_cache_dir or self.user_cache_dir or self.data_dir / "models"

    @property
    def local_mode(self) -> bool:
        """No API key: nothing is authenticated, so only loopback is safe."""
        return self.api_key is None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """Build and validate the configuration; raise `ConfigError` on bad input."""
        env = os.environ if env is None else env
        api_key = _optional(env, "API_KEY")
        host = _optional(env, "HOST") or cls.host
        allow_unauthenticated = _flag(env, "ALLOW_UNAUTHENTICATED")
        if api_key is None and not is_loopback(host) and not allow_unauthenticated:
            raise ConfigError(
                f"API_KEY is not set and HOST={host} is not a loopback address: anyone who "
                "can reach it could create, read and delete interviews. Set API_KEY, keep "
                "HOST on 127.0.0.1, or set ALLOW_UNAUTHENTICATED=1 to serve without "
                "authentication anyway"
            )
        checkpoint_s = _positive_float(env, "CHECKPOINT_S", cls.checkpoint_s)
        turn_secret = _optional(env, "TURN_SECRET")
        webhook_url, webhook_secret = _webhook(env)
        heartbeat_s = _positive_float(env, "NODE_HEARTBEAT_S", cls.node_heartbeat_s)
        return cls(
            host=host,
            allow_unauthenticated=allow_unauthenticated,
            port=_port(env, cls.port),
            database_url=_database_url(env),
            api_key=api_key,
            data_dir=Path(_optional(env, "DATA_DIR") or cls.data_dir).resolve(),
            media_dir=_media_dir(env),
            public_url=_public_url(env),
            checkpoint_s=checkpoint_s,
            stale_after_s=max(60.0, 6 * checkpoint_s),
            ice_servers=_ice_servers(env, turn_secret),
            turn_secret=turn_secret,
            turn_ttl_s=_turn_ttl(env),
            ice_loopback_only=_flag(env, "ICE_LOOPBACK_ONLY"),
            cors_origins=_csv(env, "CORS_ORIGINS"),
            detect_fps=_positive_float(env, "DETECT_FPS", cls.detect_fps),
            detect_max_interval_s=_non_negative_float(
                env, "DETECT_MAX_INTERVAL_S", cls.detect_max_interval_s),
            detect_change=_fraction(env, "DETECT_CHANGE", cls.detect_change),
            keepalive_timeout_s=_positive_float(env, "KEEPALIVE_TIMEOUT_S", cls.keepalive_timeout_s),
            detector_kind=_choice(env, "DETECTOR", ("nanodet", "yolo"), cls.detector_kind),
            detector_model=_existing_file(env, "DETECTOR_MODEL"),
            asr_model=_optional(env, "ASR_MODEL"),
            asr_cache_dir=_optional_path(env, "ASR_CACHE_DIR"),
            user_cache_dir=_user_cache_dir(env),
            asr_threads=_positive_int(env, "ASR_THREADS", cls.asr_threads),
            asr_workers=_positive_int(env, "ASR_WORKERS", cls.asr_workers),
            asr_encoder=cast(
                Literal["fit", "pad30"],
                _choice(env, "ASR_ENCODER", ("fit", "pad30"), cls.asr_encoder),
            ),
            asr_fit_margin_s=_non_negative_float(env, "ASR_FIT_MARGIN_S", cls.asr_fit_margin_s),
            asr_max_pending=_positive_int(env, "ASR_MAX_PENDING", cls.asr_max_pending),
            asr_max_wait_s=_positive_float(env, "ASR_MAX_WAIT_S", cls.asr_max_wait_s),
            asr_max_batch=_positive_int(env, "ASR_MAX_BATCH", cls.asr_max_batch),
            detect_workers=_positive_int(env, "DETECT_WORKERS", cls.detect_workers),
            device_labels=_csv(env, "DEVICE_LABELS") or cls.device_labels,
            max_framerate=_positive_int(env, "MAX_FRAMERATE", cls.max_framerate),
            workers=_workers(env),
            worker_index=_worker_index(env),
            recording=_flag(env, "RECORDING", default=cls.recording),
            record_fps=_positive_float(env, "RECORD_FPS", cls.record_fps),
            disk_reserve_mb=_non_negative_int(env, "DISK_RESERVE_MB", cls.disk_reserve_mb),
            recording_retention_days=_retention_days(env),
            rejoin_grace_s=_non_negative_float(env, "REJOIN_GRACE_S", cls.rejoin_grace_s),
            invite_ttl_s=_positive_float(env, "INVITE_TTL_S", cls.invite_ttl_s),
            admit_load=_load_fraction(env, "ADMIT_LOAD", cls.admit_load),
            max_sessions=_optional_positive_int(env, "MAX_SESSIONS"),
            interviewer=_flag(env, "INTERVIEWER", default=cls.interviewer),
            interviewer_name=_optional(env, "INTERVIEWER_NAME") or cls.interviewer_name,
            interviewer_greeting=_optional(env, "INTERVIEWER_GREETING"),
            interview_max_minutes=_positive_float(
                env, "INTERVIEW_MAX_MINUTES", cls.interview_max_minutes
            ),
            nudge_s=_positive_float(env, "NUDGE_S", cls.nudge_s),
            end_of_turn_s=_positive_float(env, "END_OF_TURN_S", cls.end_of_turn_s),
            turn_detection=cast(
                Literal["smart-turn", "silence"],
                _choice(env, "TURN_DETECTION", ("smart-turn", "silence"), cls.turn_detection),
            ),
            turn_threshold=_probability(env, "TURN_THRESHOLD", cls.turn_threshold),
            turn_ceiling_s=_positive_float(env, "TURN_CEILING_S", cls.turn_ceiling_s),
            tts=_choice(env, "TTS", ("auto", "piper", "espeak"), cls.tts),
            tts_processes=_positive_int(env, "TTS_PROCESSES", cls.tts_processes),
            tts_cache_entries=_non_negative_int(env, "TTS_CACHE_ENTRIES", cls.tts_cache_entries),
            gemini_api_key=_optional(env, "GEMINI_API_KEY") or _optional(env, "GOOGLE_API_KEY"),
            gemini_model=_optional(env, "GEMINI_MODEL") or cls.gemini_model,
            gemini_base_url=_optional(env, "GEMINI_BASE_URL"),
            llm_timeout_s=_positive_float(env, "LLM_TIMEOUT_S", cls.llm_timeout_s),
            resume_parse_timeout_s=_positive_float(
                env, "RESUME_PARSE_TIMEOUT_S", cls.resume_parse_timeout_s),
            resume_parse_memory_mb=_positive_int(
                env, "RESUME_PARSE_MEMORY_MB", cls.resume_parse_memory_mb),
            webhook_url=webhook_url,
            webhook_secret=webhook_secret,
            webhook_retry_max_s=_positive_float(
                env, "WEBHOOK_RETRY_MAX_S", cls.webhook_retry_max_s),
            review_token_ttl_s=_positive_float(
                env, "REVIEW_TOKEN_TTL_S", cls.review_token_ttl_s),
            node_url=_node_url(env),
            node_heartbeat_s=heartbeat_s,
            node_dead_s=_node_dead_s(env, heartbeat_s),
            drain_timeout_s=_non_negative_float(env, "DRAIN_TIMEOUT_S", cls.drain_timeout_s),
        )


def _media_dir(env: Mapping[str, str]) -> Path | None:
    raw = _optional(env, "MEDIA_DIR")
    return None if raw is None else Path(raw).resolve()


def _node_url(env: Mapping[str, str]) -> str | None:
    raw = _optional(env, "NODE_URL")
    if raw is None:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ConfigError(f"NODE_URL must be http(s)://host[:port], got {raw!r}")
    return raw.rstrip("/")


def _node_dead_s(env: Mapping[str, str], heartbeat_s: float) -> float:
    dead = _positive_float(env, "NODE_DEAD_S", 20.0)
    if dead < 2 * heartbeat_s:
        raise ConfigError(f"NODE_DEAD_S must be at least twice NODE_HEARTBEAT_S, got {dead}")
    return dead


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address, IPv6 with or without brackets) is loopback."""
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _optional(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _port(env: Mapping[str, str], default: int) -> int:
    raw = _optional(env, "PORT")
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) > 65535:
        raise ConfigError(f"PORT must be an integer from 0 to 65535, got {raw!r}")
    return int(raw)


def _float(env: Mapping[str, str], name: str, default: float, *, allow_zero: bool) -> float:
    raw = _optional(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value < 0 or (value == 0 and not allow_zero):
        bound = "0 or more" if allow_zero else "greater than 0"
        raise ConfigError(f"{name} must be {bound}, got {raw!r}")
    return value


def _positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    return _float(env, name, default, allow_zero=False)


def _non_negative_float(env: Mapping[str, str], name: str, default: float) -> float:
    return _float(env, name, default, allow_zero=True)


def _fraction(env: Mapping[str, str], name: str, default: float) -> float:
    value = _non_negative_float(env, name, default)
    if value > 1.0:
        raise ConfigError(f"{name} must be a fraction from 0 to 1, got {value}")
    return value


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = _optional(env, name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"{name} must be a whole number of at least 1, got {raw!r}")
    return int(raw)


def _optional_path(env: Mapping[str, str], name: str) -> Path | None:
    value = _optional(env, name)
    if value is None:
        return None
    if value.startswith("~") and not (value == "~" or value.startswith("~/")):
        raise ConfigError(f"{name}={value!r}: only ~ (this user's home) is expanded")
    if value == "~" or value.startswith("~/"):
        home = _home(env)
        if home is None:
            raise ConfigError(f"{name}={value!r}: there is no home directory to expand ~ to")
        return home / value[2:]
    return Path(value).absolute()


def _home(env: Mapping[str, str]) -> Path | None:
    """$HOME, else the user's passwd entry; None for a user without one."""
    if env.get("HOME"):
        return Path(env["HOME"]).absolute()
    try:
        return Path.home()
    except RuntimeError:  # no HOME and no passwd entry (a bare container user)
        return None


def _user_cache_dir(env: Mapping[str, str]) -> Path | None:
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"]).absolute() / "interview-media-server"
    home = _home(env)
    return None if home is None else home / ".cache" / "interview-media-server"


def _optional_positive_int(env: Mapping[str, str], name: str) -> int | None:
    return None if _optional(env, name) is None else _positive_int(env, name, 1)


def _probability(env: Mapping[str, str], name: str, default: float) -> float:
    value = _positive_float(env, name, default)
    if value >= 1.0:
        raise ConfigError(f"{name} must be a probability between 0 and 1 (exclusive), got {value!r}")
    return value


def _load_fraction(env: Mapping[str, str], name: str, default: float) -> float:
    value = _positive_float(env, name, default)
    if value > 1.0:
        raise ConfigError(f"{name} must be a load between 0 and 1, got {value!r}")
    return value


def _non_negative_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = _optional(env, name)
    if raw is None:
        return default
    if not raw.isdigit():
        raise ConfigError(f"{name} must be a whole number of 0 or more, got {raw!r}")
    return int(raw)


def _retention_days(env: Mapping[str, str]) -> float | None:
    """`RECORDING_RETENTION_DAYS`: unset keeps recordings forever."""
    raw = _optional(env, "RECORDING_RETENTION_DAYS")
    if raw is None:
        return None
    try:
        days = float(raw)
    except ValueError:
        days = float("nan")
    if not days > 0 or days == float("inf"):  # NaN fails `> 0` too
        raise ConfigError(f"RECORDING_RETENTION_DAYS must be a number of days greater than 0 "
                          f"(unset keeps recordings forever), got {raw!r}")
    return days


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    raw = (_optional(env, name) or default).lower()
    if raw not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def _existing_file(env: Mapping[str, str], name: str) -> str | None:
    raw = _optional(env, name)
    if raw is not None and not Path(raw).is_file():
        raise ConfigError(f"{name} must name an existing file, got {raw!r}")
    return raw


def _workers(env: Mapping[str, str]) -> int:
    workers = _positive_int(env, "WORKERS", 1)
    if workers > MAX_WORKERS:
        # One byte of a session id names its worker (routing.py).
        raise ConfigError(f"WORKERS must be at most {MAX_WORKERS}, got {workers}")
    return workers


def _worker_index(env: Mapping[str, str]) -> int | None:
    """Set by hand only: one of N servers behind a proxy that routes by id."""
    raw = _optional(env, "WORKER_INDEX")
    if raw is None:
        return None
    workers = _workers(env)
    if not raw.isdigit() or int(raw) >= workers:
        raise ConfigError(f"WORKER_INDEX must be from 0 to WORKERS-1, got {raw!r}")
    return int(raw)


def _flag(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    raw = (_optional(env, name) or ("1" if default else "0")).lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1/0, true/false, yes/no or on/off, got {raw!r}")


def _csv(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    raw = _optional(env, name) or ""
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _database_url(env: Mapping[str, str]) -> str | None:
    """`DATABASE_URL`, else `SUPABASE_DB_URL`; any PostgreSQL DSN."""
    for name in ("DATABASE_URL", "SUPABASE_DB_URL"):
        dsn = _optional(env, name)
        if dsn is None:
            continue
        scheme = urlsplit(dsn).scheme
        if scheme not in ("postgres", "postgresql"):
            # Never echo the DSN: it usually carries a password.
            raise ConfigError(
                f"{name} must be a PostgreSQL connection string starting with "
                f"postgresql:// or postgres://, got scheme {scheme or '(none)'!r}"
            )
        return dsn
    return None


def _public_url(env: Mapping[str, str]) -> str | None:
    raw = _optional(env, "PUBLIC_URL")
    if raw is None:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"PUBLIC_URL must be an absolute http(s) URL, got {raw!r}")
    return raw.rstrip("/")


def _webhook(env: Mapping[str, str]) -> tuple[str | None, str | None]:
    """`WEBHOOK_URL` and the `WEBHOOK_SECRET` its events are signed with."""
    url, secret = _optional(env, "WEBHOOK_URL"), _optional(env, "WEBHOOK_SECRET")
    if url is None:
        return None, secret
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # Never echo the URL: it may carry a token.
        raise ConfigError(f"WEBHOOK_URL must be an absolute http(s) URL, got scheme "
                          f"{parts.scheme or '(none)'!r}")
    if secret is None:
        raise ConfigError("WEBHOOK_URL is set but WEBHOOK_SECRET is not: set it to the key "
                          "receivers verify X-Signature with")
    return url, secret


def _ice_servers(env: Mapping[str, str], turn_secret: str | None) -> tuple[dict[str, Any], ...]:
    """`ICE_SERVERS`: a JSON list of {"urls"}; TURN needs `TURN_SECRET`."""
    raw = _optional(env, "ICE_SERVERS")
    if raw is None:
        return ()
    try:
        servers = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"ICE_SERVERS must be JSON: {exc}") from None
    if not isinstance(servers, list):
        raise ConfigError("ICE_SERVERS must be a JSON list of objects with 'urls'")
    return tuple(_ice_server(i, server, turn_secret) for i, server in enumerate(servers))


def _ice_server(i: int, server: Any, turn_secret: str | None) -> dict[str, Any]:
    if not isinstance(server, dict) or not server.get("urls"):
        raise ConfigError(f"ICE_SERVERS[{i}] must be an object with 'urls'")
    urls = server["urls"]
    urls = [urls] if isinstance(urls, str) else urls
    if not isinstance(urls, list) or not all(
        isinstance(u, str) and u.split(":")[0] in ("stun", "turn", "turns") for u in urls
    ):
        raise ConfigError(f"ICE_SERVERS[{i}].urls must be stun:, turn: or turns: URLs")
    if "credential" in server or "username" in server:
        # Every candidate (anyone who reads GET /config) would get them.
        raise ConfigError(
            f"ICE_SERVERS[{i}] has a static username/credential, which would be handed to "
            "every client: remove it, configure the TURN server with a shared secret "
            "(coturn: use-auth-secret, static-auth-secret) and set TURN_SECRET"
        )
    unknown = sorted(set(server) - {"urls"})
    if unknown:
        raise ConfigError(f"ICE_SERVERS[{i}] has unknown key(s): {', '.join(unknown)}")
    if turn_secret is None and any(u.startswith("turn") for u in urls):
        raise ConfigError(
            f"ICE_SERVERS[{i}] lists TURN urls but TURN_SECRET is not set: set it to the "
            "TURN server's shared secret (coturn: static-auth-secret)"
        )
    return {"urls": server["urls"]}


def _turn_ttl(env: Mapping[str, str]) -> int:
    ttl = _positive_int(env, "TURN_TTL_S", 3600)
    if ttl > 7 * 24 * 3600:
        raise ConfigError(f"TURN_TTL_S must be at most 604800 (7 days), got {ttl}")
    return ttl
