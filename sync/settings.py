"""Configuration from the environment (prefix ``STEPSYNC_``) and an optional ``.env`` file."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STEPSYNC_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    database_url: str | None = Field(
        default=None,
        description="PostgreSQL URL of the Supabase database (direct or session pooler). "
        "Unset: an embedded PostgreSQL kept in data_dir.",
    )
    data_dir: Path = Field(
        default=Path(".stepsync"),
        description="Where the embedded PostgreSQL keeps its data when no database_url is set.",
    )
