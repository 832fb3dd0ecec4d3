"""Redaction, best effort: secret-looking keys whatever their case, separators, look-alike
letters or digits read as letters, and secret-shaped values inside any string, are
replaced before a step's context leaves the database."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.run_engine_support import claim_one, complete, make_workflow, start_run


def redact(conn: psycopg.Connection, value) -> object:
    return conn.execute("select stepsync.redact_secrets(%s)", [Jsonb(value)]).fetchone()[0]


SECRET_KEYS = [
    "pwd",
    "jwt",
    "auth",
    "secrets",
    "PASSWORD",
    "PassWord",
    "p\u0430ssword",  # Cyrillic a
    "\u0440assword",  # Cyrillic er
    "p@ssw0rd",
    "s3cr3t",
    "t0ken",
    "\uff30\uff21\uff33\uff33\uff37\uff2f\uff32\uff24",  # full-width PASSWORD
    "pass\u200bword",  # a zero-width space inside
    "pass\u00adword",  # a soft hyphen inside
    "Api-Key",
    "x_auth_token",
    "accessToken",
    "ssh_key",
    "private-key",
    "database_url",
    "DSN",
    "sessionId",
    "set-cookie",
    "otp_code",
    "password2",
    "client_secret",
    "Authorization",
]
KEPT_KEYS = [
    "author",
    "total_tokens",
    "max_tokens",
    "tokenizer",
    "secretary_name",
    "oauth_provider",
    "passenger",
    "keyboard",
    "monkey",
    "session_count",
]


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_secret_looking_keys_are_redacted_whatever_they_look_like(
    conn: psycopg.Connection, key: str
) -> None:
    assert redact(conn, {"outer": [{key: "hunter2", "note": "kept"}]}) == {
        "outer": [{key: "[redacted]", "note": "kept"}]
    }


@pytest.mark.parametrize("key", KEPT_KEYS)
def test_ordinary_keys_are_kept(conn: psycopg.Connection, key: str) -> None:
    assert redact(conn, {key: "value"}) == {key: "value"}


JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
SECRET_VALUES = [
    (f"token {JWT} used", "token [redacted] used"),
    ("Authorization: Bearer abcdef123456.xyz", "Authorization: Bearer [redacted]"),
    ("header: basic dXNlcjpwYXNzd29yZA==", "header: basic [redacted]"),
    ("key sk-proj-abcdefghijklmnopqrstuvwxyz012345 here", "key [redacted] here"),
    ("stripe sk_live_abcdefghijklmnop1234", "stripe [redacted]"),
    ("aws AKIAIOSFODNN7EXAMPLE ok", "aws [redacted] ok"),
    ("gh ghp_abcdefghijklmnopqrstuvwxyz0123456789", "gh [redacted]"),
    ("google AIzaSyA-abcdefghijklmnopqrstuvwxyz012345", "google [redacted]"),
    (
        "db postgresql://app:s3cret-pass@db.example.test:5432/app",
        "db postgresql://app:[redacted]@db.example.test:5432/app",
    ),
    (
        "-----BEGIN PRIVATE KEY-----\nMIIEv\nQIBAD\n-----END PRIVATE KEY-----\ntail",
        "[redacted]\ntail",
    ),
]
KEPT_VALUES = [
    "a task-abcdefghijklmnopqrstuvwxyz words",  # "sk-" inside a word
    "Bearer",
    "the basic idea",
    "eyJ alone",
    "https://example.test/path?x=1",
]


@pytest.mark.parametrize(("text", "expected"), SECRET_VALUES)
def test_secret_shaped_values_are_redacted_inside_strings(
    conn: psycopg.Connection, text: str, expected: str
) -> None:
    assert redact(conn, {"message": text, "list": [text]}) == {
        "message": expected,
        "list": [expected],
    }


@pytest.mark.parametrize("text", KEPT_VALUES)
def test_ordinary_values_are_kept(conn: psycopg.Connection, text: str) -> None:
    assert redact(conn, {"message": text}) == {"message": text}


def test_a_step_receives_the_earlier_output_redacted(conn: psycopg.Connection) -> None:
    _, task_id, _ = make_workflow(
        conn, [{}, {"include_previous_context": True, "context_mode": "previous"}]
    )
    start_run(conn, task_id, trigger_data={"Pwd": "x", "note": f"use {JWT}"})
    output = {"secrets": ["a"], "reply": "call with Bearer abcdefgh12345678"}
    assert complete(conn, claim_one(conn), output)
    context = claim_one(conn)["context"]
    assert context["previous"]["output"] == {
        "secrets": "[redacted]",
        "reply": "call with Bearer [redacted]",
    }
    assert context["run"]["trigger_data"] == {"Pwd": "[redacted]", "note": "use [redacted]"}


def test_a_selection_is_redacted_and_a_path_naming_a_secret_selects_nothing_of_it(
    conn: psycopg.Connection,
) -> None:
    # Paths run over the context as it is; what they select is redacted as it is shown.
    _, task_id, _ = make_workflow(
        conn,
        [
            {},
            {
                "include_previous_context": True,
                "context_mode": "selective",
                "context_paths": [
                    "$.previous.output.accounts[*]",
                    "$.previous.output.accounts[0].password",
                    '$.previous.output.accounts ? (@.password == "hunter2").name',
                    "$.previous.output.note",
                ],
            },
        ],
    )
    start_run(conn, task_id)
    output = {
        "accounts": [{"name": "ada", "password": "hunter2"}],
        "note": f"session {JWT}",
    }
    assert complete(conn, claim_one(conn), output)
    selected = claim_one(conn)["context"]["selected"]
    assert selected == {
        '$."previous"."output"."accounts"[*]': {"name": "ada", "password": "[redacted]"},
        '$."previous"."output"."accounts"[0]."password"': "[redacted]",
        '$."previous"."output"."accounts"?(@."password" == "hunter2")."name"': "[redacted]",
        '$."previous"."output"."note"': "session [redacted]",
    }


def test_a_cut_output_is_redacted_in_what_is_kept(conn: psycopg.Connection) -> None:
    _, task_id, _ = make_workflow(
        conn, [{}, {"include_previous_context": True, "context_mode": "previous"}]
    )
    start_run(conn, task_id)
    # Too large to be shown whole: cut to the context's size, then redacted as text.
    output = {
        "pwd": "hunter2",
        "creds": {"user": "ada", "pin": "1234"},
        "filler_text": "x" * 65_300,
    }
    assert complete(conn, claim_one(conn), output)
    shown = claim_one(conn)["context"]["previous"]["output"]
    assert isinstance(shown, str) and "[truncated" in shown
    assert shown.startswith('{"pwd": "[redacted]", "creds": "[redacted]"…')
    assert "hunter2" not in shown and "1234" not in shown and "xxx" not in shown
