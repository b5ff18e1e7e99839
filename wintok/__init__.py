"""WinTok: a hybrid visual tokenizer (discrete pixel tokens + continuous semantic tokens).

    from wintok import WinTok, preset, load_tokenizer
    model = WinTok(preset("tiny"))
    out = model.encode(images)          # images (B,3,256,256) in [-1,1]
    out.ids, out.semantic, out.pooled   # (B,4,256) int64, (B,N,D), (B,D)
    recon = model.decode(out.ids)
"""
from wintok.config import PRESETS, WinTokConfig, preset
from wintok.errors import CheckpointError, ImageError, TokenFileError, WinTokError
from wintok.model import WinTok
from wintok.tokenizer import Tokenizer, TokenizerOutput, TokenLayout, load_tokenizer


def load_checkpoint(path, **kwargs) -> Tokenizer:
    """Load a tokenizer checkpoint of any supported format (alias of `load_tokenizer`)."""
    return load_tokenizer(path, **kwargs)


def save_pretrained(model, directory, **kwargs):
    """Save a tokenizer as config.json + model.safetensors (see wintok.checkpoint)."""
    from wintok.checkpoint import save_pretrained as _save

    return _save(model, directory, **kwargs)


__all__ = ["PRESETS", "WinTokConfig", "preset", "WinTok", "Tokenizer", "TokenizerOutput",
           "TokenLayout", "load_tokenizer", "load_checkpoint", "save_pretrained",
           "CheckpointError", "ImageError", "TokenFileError", "WinTokError"]
