"""Configuration from the environment (prefix ``STEPSYNC_``) and an optional ``.env`` file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ListenMode = Literal["postgres", "realtime"]


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

    # --- Supabase: Realtime wake-ups and the Edge Function executors -------------------
    # The plain SUPABASE_* names are accepted too, as a Supabase project already sets them.
    supabase_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("STEPSYNC_SUPABASE_URL", "SUPABASE_URL"),
        description="Project URL, e.g. https://<ref>.supabase.co (Realtime and Edge Functions).",
    )
    supabase_service_role_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "STEPSYNC_SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_SERVICE_ROLE_KEY"
        ),
        description="Service-role key: Realtime apikey and Edge Function bearer token.",
    )
    listen: Annotated[list[ListenMode], NoDecode] = Field(
        default=["postgres"],
        description="Wake-up sources, comma-separated: postgres (LISTEN), realtime, or both. "
        "Polling stays on in every mode.",
    )
    edge_function_name: str = Field(
        default="chat",
        description="Edge Function the edge_function and agentopia_chat executors call.",
    )

    @field_validator("listen", mode="before")
    @classmethod
    def _split_listen(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple) and not value:
            raise ValueError("name at least one of: postgres, realtime")
        return list(dict.fromkeys(value)) if isinstance(value, list | tuple) else value
