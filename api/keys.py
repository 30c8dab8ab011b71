"""Typed keys for the application's state, and for state one request carries.

aiohttp's "no singletons": everything app-wide lives in the application under
one of these keys, set in `server.make_app` or by the cleanup contexts in
`api.lifecycle`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from api.instance import Instance
from api.node import Node
from api.resume_text import ResumeParser
from config import Config
from engine.registry import InterviewTable
from engine.review import ReviewKeys, Reviewer
from engine.session import InterviewSession
from layout import DataLayout, PublicUrls
from media.metrics import MediaMetrics
from media.runtime import MediaModels
from media.service import MediaService
from storage.pg import SessionStore
from storage.webhooks import WebhookSender
from storage.writer import SessionWriter

__all__ = [
    "CONFIG", "LAYOUT", "URLS", "FILE_IO", "INSTANCE", "STORE", "WRITER", "REGISTRY",
    "MEDIA", "METRICS", "MODELS", "RESUME_PARSER", "REVIEW_KEYS", "NODE", "SESSION", "REVIEWER",
    "WEBHOOKS",
]

CONFIG = web.AppKey("config", Config)
LAYOUT = web.AppKey("layout", DataLayout)
# URLs handed out without a request to take the host from: rows, the media side.
URLS = web.AppKey("urls", PublicUrls)
FILE_IO = web.AppKey("file_io", ThreadPoolExecutor)
INSTANCE = web.AppKey("instance", Instance)
STORE = web.AppKey("store", SessionStore)
WRITER = web.AppKey("writer", SessionWriter)
REGISTRY = web.AppKey("registry", InterviewTable)
# Always set: without WEBHOOK_URL its `emit()` does nothing.
WEBHOOKS = web.AppKey("webhooks", WebhookSender)
MEDIA = web.AppKey("media", MediaService)
# Models handed to `make_app` instead of those loaded on the first call.
MODELS: web.AppKey[MediaModels | None] = web.AppKey("models")
METRICS = web.AppKey("metrics", MediaMetrics)
RESUME_PARSER = web.AppKey("resume_parser", ResumeParser)
REVIEW_KEYS = web.AppKey("review_keys", ReviewKeys)
NODE = web.AppKey("node", Node)

# The live session a candidate route's caller was admitted to (`api.auth`).
SESSION = web.RequestKey("session", InterviewSession)
# Who called a review route (`api.auth`).
REVIEWER = web.RequestKey("reviewer", Reviewer)
