"""WeTok (the predecessor of WinTok) behind the shared `wintok.tokenizer.Tokenizer` interface:
a conv encoder/decoder with group-wise lookup-free quantization, official checkpoint loading,
and our safetensors + JSON format."""
from wintok.wetok.checkpoint import (
    LoadReport,
    load_pretrained,
    load_wetok_official,
    looks_like_wetok,
    save_pretrained,
)
from wintok.wetok.config import PRESETS, WeTokConfig, config_from_official_yaml, preset
from wintok.wetok.model import WeTok

__all__ = [
    "PRESETS",
    "LoadReport",
    "WeTok",
    "WeTokConfig",
    "config_from_official_yaml",
    "load_pretrained",
    "load_wetok_official",
    "looks_like_wetok",
    "preset",
    "save_pretrained",
]
