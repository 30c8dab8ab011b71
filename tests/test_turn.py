"""TURN credentials: the TURN REST API scheme (coturn `use-auth-secret`);
static passwords and the shared secret never reach a client (issue 11)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest
from aiohttp.test_utils import TestClient

from api.turn import turn_credential
from config import Config, ConfigError
from tests.conftest import AppFactory

SECRET = "north-wind"
SERVERS = json.dumps([{"urls": "stun:stun.example.org:3478"},
                      {"urls": ["turn:turn.example.org:3478?transport=udp",
                                "turns:turn.example.org:5349?transport=tcp"]}])


def test_the_credential_matches_a_known_vector():
    # Computed independently: printf '%s' "1700003600:fixed-user" |
    #   openssl dgst -sha1 -hmac "north-wind" -binary | base64
    assert turn_credential(SECRET, "1700003600:fixed-user") == "0Dm+Utlkoa7j4c3wF6pkVG1ir/I="


async def test_config_hands_out_expiring_hmac_credentials(make_client: AppFactory):
    config = Config.from_env({"ICE_SERVERS": SERVERS, "TURN_SECRET": SECRET, "TURN_TTL_S": "600"})
    client: TestClient = await make_client(ice_servers=config.ice_servers,
                                           turn_secret=config.turn_secret, turn_ttl_s=600)
    resp = await client.get("/config")
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    text = await resp.text()
    assert SECRET not in text
    stun, turn = json.loads(text)["ice_servers"]
    assert stun == {"urls": "stun:stun.example.org:3478"}
    assert turn["urls"] == json.loads(SERVERS)[1]["urls"]
    expiry, _, user = turn["username"].partition(":")
    assert user and abs(int(expiry) - (time.time() + 600)) < 5
    expected = hmac.new(SECRET.encode(), turn["username"].encode(), hashlib.sha1).digest()
    assert base64.b64decode(turn["credential"]) == expected
    # A fresh pair per client.
    again = (await (await client.get("/config")).json())["ice_servers"][1]
    assert again["username"] != turn["username"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ICE_SERVERS": '[{"urls": "turn:t.org", "username": "u", "credential": "pw"}]',
          "TURN_SECRET": "s"}, r"ICE_SERVERS\[0\] has a static username/credential"),
        ({"ICE_SERVERS": '[{"urls": "stun:s.org", "credential": "pw"}]'}, "static"),
        ({"ICE_SERVERS": '[{"urls": "turn:t.org"}]'}, "TURN_SECRET is not set"),
        ({"ICE_SERVERS": '[{"urls": "stun:s.org", "password": "x"}]'}, "unknown key"),
        ({"TURN_TTL_S": "0"}, "TURN_TTL_S must be a whole number"),
        ({"TURN_TTL_S": "9999999"}, "at most 604800"),
    ],
)
def test_static_turn_passwords_are_refused_at_start_up(env: dict[str, str], message: str):
    with pytest.raises(ConfigError, match=message) as info:
        Config.from_env(env)
    assert "pw" not in str(info.value)


def test_the_turn_secret_is_not_in_the_repr():
    config = Config.from_env({"ICE_SERVERS": SERVERS, "TURN_SECRET": SECRET})
    assert SECRET not in repr(config)
