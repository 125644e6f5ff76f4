"""LLM presets: ``conf/llm/<name>.yaml``, checked by the pydantic model :class:`LLMConfig`.

A preset is a flat mapping of the keys of :class:`LLMConfig`; a bad key or value is an
:class:`LLMPresetError` (an :class:`~cbm.errors.InputError`) naming the file, the key and the fix.
API keys are only ever read from the environment variable the preset names in ``api_key_env``.

    config = load_llm_config("vllm").replace(model="Qwen/Qwen2.5-72B-Instruct")
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from cbm.concepts.prompts import shorten
from cbm.errors import InputError, quote
from cbm.utils import unknown_name_message

__all__ = [
    "LLMConfig",
    "LLMPresetError",
    "STRUCTURED_OUTPUT_MODES",
    "llm_presets_dir",
    "list_llm_presets",
    "load_llm_config",
]

STRUCTURED_OUTPUT_MODES = ("auto", "json_schema", "json_mode")


class LLMPresetError(InputError):
    """An invalid LLM preset (``conf/llm/*.yaml`` or a mapping with the same keys)."""

    kind = "LLM preset"


class LLMConfig(BaseModel):
    """Where and how to ask for concepts; the keys of a ``conf/llm/*.yaml`` preset."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    base_url: str | None = Field(None, description="the OpenAI-compatible endpoint, e.g. http://localhost:8000/v1; "
                                 "null = no server")
    model: str | None = Field(None, description="the model's name as the server knows it (GET {base_url}/models)")
    api_key_env: str | None = Field(None, description="the environment variable that holds the API key; null = "
                                    "none needed")
    temperature: float | None = Field(0.0, ge=0, description="the sampling temperature; null = the server's default")
    seed: int | None = Field(0, description="the sampling seed where the server honours it; null = none sent")
    max_concurrency: int = Field(4, gt=0, description="how many classes are asked at the same time")
    timeout_s: float = Field(120.0, gt=0, description="the time limit per request, in seconds")
    max_retries: int = Field(4, ge=0, description="extra attempts after a 429, 5xx, time-out or dropped connection")
    structured_output: Literal["auto", "json_schema", "json_mode"] = Field(
        "auto", description="auto | json_schema | json_mode: how the answer's JSON shape is enforced")
    max_tokens: int | None = Field(1024, gt=0, description="the answer length limit; a truncated answer is an "
                                   "error, not a short list")
    _name: str | None = PrivateAttr(None)  # the preset's name, for messages
    _file: Path | None = PrivateAttr(None)  # the preset's file, for messages

    @model_validator(mode="after")
    def _server_and_model_go_together(self) -> LLMConfig:
        if bool(self.base_url) != bool(self.model):
            missing = "model" if self.base_url else "base_url"
            raise ValueError(f"base_url and model go together; set `{missing}` too (or both to null)")
        return self

    @property
    def name(self) -> str | None:
        """The preset's name (``"vllm"``), if it came from one."""
        return self._name

    @property
    def has_server(self) -> bool:
        """Whether this config points at a server (the ``none`` preset does not)."""
        return bool(self.base_url and self.model)

    @property
    def server_host(self) -> str | None:
        """``host[:port]`` of ``base_url``: what the store records (never a key, a user or a path)."""
        if not self.base_url:
            return None
        return urlparse(self.base_url).netloc.rpartition("@")[2] or None

    @property
    def shown_url(self) -> str | None:
        """``base_url`` for messages and logs: any ``user:password@`` in it is left out."""
        if not self.base_url:
            return None
        parts = urlparse(self.base_url)
        return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()

    @property
    def label(self) -> str:
        """How messages name this config: ``LLM preset 'vllm' (conf/llm/vllm.yaml)`` or ``LLM config``."""
        if not self._name:
            return "LLM config"
        return f"LLM preset {self._name!r}" + (f" ({self._file})" if self._file else "")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, name: str | None = None,
                     file: str | os.PathLike | None = None) -> LLMConfig:
        """Build from a preset mapping; a bad key or value is an :class:`LLMPresetError` naming it."""
        try:
            config = cls.model_validate(dict(values))
        except ValidationError as exc:
            raise _preset_error(exc, file) from None
        config._name, config._file = name, (Path(file) if file is not None else None)
        return config

    def replace(self, **changes: Any) -> LLMConfig:
        """A checked copy with ``changes`` applied (``None`` values are ignored: "keep the preset's")."""
        values = {**self.model_dump(), **{k: v for k, v in changes.items() if v is not None}}
        return type(self).from_mapping(values, name=self._name, file=self._file)

    def api_key(self) -> str:
        """The API key from the environment; local servers without one get a placeholder."""
        if not self.api_key_env:
            return "EMPTY"  # the openai client insists on a key; vLLM, Ollama and llama.cpp ignore it
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ValueError(
                f"{self.label} reads the API key from the environment variable ${self.api_key_env}, which is "
                f"not set: export {self.api_key_env}=... (keys are never read from config files), or set "
                "`api_key_env: null` for a server that needs none"
            )
        return key


def _preset_error(exc: ValidationError, file: str | os.PathLike | None) -> LLMPresetError:
    """The first problem of a preset as an :class:`LLMPresetError` naming the key and the fix."""
    error = exc.errors(include_url=False)[0]
    key = str(error["loc"][0]) if error["loc"] else None
    fields = LLMConfig.model_fields
    if error["type"] == "extra_forbidden":
        problem, fix = "is not a preset key", unknown_name_message("key", key or "", list(fields), lead=False)
    elif key is None:  # a check across keys (base_url and model)
        problem, fix = str(error["msg"]).removeprefix("Value error, "), ""
    else:
        problem = f"is {quote(error.get('input'), 80)}, but {str(error['msg']).replace('Input should', 'it should')}"
        fix = f"Set `{key}` to {fields[key].description}"
    return LLMPresetError(file, problem, fix, field=key)


def llm_presets_dir() -> Path:
    """``conf/llm`` of the source checkout (or editable install) this package runs from."""
    return Path(__file__).resolve().parents[2] / "conf" / "llm"


def list_llm_presets() -> list[str]:
    """Names of the LLM presets in ``conf/llm``."""
    folder = llm_presets_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def load_llm_config(preset: str | os.PathLike | LLMConfig | Mapping[str, Any] | None) -> LLMConfig:
    """An :class:`LLMConfig` from a preset name (``"vllm"``), a YAML path, a mapping or a config.

    ``None`` gives the no-server config: only the concept store is used.

    Raises:
        LLMPresetError: the file is not a flat YAML mapping of known keys with valid values.
    """
    if preset is None:
        return LLMConfig.from_mapping({}, name="none")
    if isinstance(preset, LLMConfig):
        return preset
    if isinstance(preset, Mapping):
        return LLMConfig.from_mapping(preset)
    path = Path(preset)
    if path.suffix in (".yaml", ".yml") or path.exists():
        name = path.stem
    else:
        name, path = str(preset), llm_presets_dir() / f"{preset}.yaml"
        if not path.is_file():
            raise ValueError(
                unknown_name_message("LLM preset", name, list_llm_presets())
                + " Or give the path of a YAML file with the same keys."
            )
    if not path.is_file():
        raise FileNotFoundError(f"LLM config file {str(path)!r} does not exist")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise LLMPresetError(path, "is not UTF-8 text", "Save the file as UTF-8") from None
    except yaml.YAMLError as exc:
        raise LLMPresetError(path, f"is not valid YAML ({shorten(exc)})",
                             "Fix the YAML syntax (indentation, quotes, colons)") from None
    if not isinstance(values, Mapping):
        raise LLMPresetError(path, f"must be a flat mapping of keys, not {type(values).__name__}",
                             f"Write `key: value` lines, as in {llm_presets_dir() / 'vllm.yaml'}")
    return LLMConfig.from_mapping(values, name=name, file=path)
