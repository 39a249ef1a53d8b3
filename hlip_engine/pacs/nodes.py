"""PACS nodes: where a PACS is (a DICOMweb URL, a DIMSE address, or a name from the nodes file) and how to log in.

A node is written one of three ways:

- ``http(s)://host:port/dicom-web`` (the DICOMweb root; QIDO-RS and WADO-RS live under it);
- ``dicom://CALLED_AET@host:port`` (DIMSE; our own AE title is ``HLIPX`` unless told otherwise);
- a name from ``pacs_nodes.json`` in the user's config folder (``$HLIP_NAPARI_CONFIG_DIR`` or the platform's
  config folder for ``hlip-napari``; ``$HLIP_PACS_NODES`` names another file)::

      {"hospital": {"url": "dicom://PACS@10.0.0.5:104", "calling_aet": "HLIPX", "move_port": 11113},
       "cloud": {"url": "https://pacs.example.org/dicom-web", "username": "radiology", "auth": "basic"}}

Passwords and tokens never live in that file, in a URL or in a log: they come from the environment
(``HLIP_PACS_PASSWORD``, ``HLIP_PACS_TOKEN``, or per node ``HLIP_PACS_<NAME>_PASSWORD`` / ``_TOKEN``) or from
the OS keyring (service ``hlip-pacs``, user ``<node>:<username>`` or ``<node>:token``).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

from .errors import PacsError

DEFAULT_CALLING_AET = "HLIPX"
DEFAULT_TIMEOUT = 30.0  # s, per network step (connect, one response), not per transfer
KEYRING_SERVICE = "hlip-pacs"
_AET = re.compile(r"^[\x20-\x7e]{1,16}$")


def config_dir() -> Path:
    """The user's config folder, shared with the napari plugin's settings."""
    env = os.environ.get("HLIP_NAPARI_CONFIG_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_config_dir("hlip-napari"))


def nodes_path() -> Path:
    env = os.environ.get("HLIP_PACS_NODES")
    return Path(env) if env else config_dir() / "pacs_nodes.json"


@dataclass(frozen=True)
class Node:
    """One PACS. ``kind`` is ``"dicomweb"`` or ``"dimse"``; credentials are looked up, never stored here."""

    kind: str
    url: str = ""  # DICOMweb root without a trailing slash (dicomweb only)
    host: str = ""
    port: int = 0
    called_aet: str = ""
    calling_aet: str = DEFAULT_CALLING_AET
    move_port: int | None = None  # C-MOVE to our own storage SCP on this port instead of C-GET
    name: str = ""  # the nodes-file name, "" for a URL typed in
    username: str = ""
    auth: str = ""  # "", "basic" or "bearer"
    timeout: float = DEFAULT_TIMEOUT
    verify: bool | str = True  # TLS: verify certificates (or a CA bundle path)
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> str:
        """What names this node in the keyring and the cache records (no secrets in it)."""
        return self.name or self.display

    @property
    def display(self) -> str:
        if self.kind == "dicomweb":
            return self.url
        return f"dicom://{self.called_aet}@{self.host}:{self.port}"

    def __str__(self) -> str:
        return self.display


def _check_aet(aet: str, what: str) -> str:
    aet = aet.strip()
    if not _AET.match(aet) or "\\" in aet:
        raise PacsError(f"{what} {aet!r} is not a valid AE title (1 to 16 printable characters, no backslash)")
    return aet


def _port(text: str | int | None, what: str) -> int:
    try:
        port = int(text)
    except (TypeError, ValueError):
        raise PacsError(f"{what}: port {text!r} is not a number") from None
    if not 0 < port < 65536:
        raise PacsError(f"{what}: port {port} is out of range (1-65535)")
    return port


def parse_node(text: str, *, calling_aet: str | None = None, move_port: int | None = None,
               timeout: float | None = None) -> Node:
    """A node from a URL or a nodes-file name; keyword arguments override what the text or file says."""
    text = (text or "").strip()
    if not text:
        raise PacsError("no PACS node given: a DICOMweb URL, dicom://AET@host:port, or a name from "
                        f"{nodes_path()}")
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in ("http", "https"):
        node = _parse_dicomweb(text)
    elif scheme == "dicom":
        node = _parse_dimse(text)
    elif scheme:
        raise PacsError(f"{text}: unknown scheme {scheme!r}; use http(s):// (DICOMweb) or dicom:// (DIMSE)")
    else:
        node = node_from_file(text)
    changes = {}
    if calling_aet:
        changes["calling_aet"] = _check_aet(calling_aet, "calling AE title")
    if move_port is not None:
        changes["move_port"] = _port(move_port, "--move-port")
    if timeout is not None:
        changes["timeout"] = float(timeout)
    return replace(node, **changes) if changes else node


def _parse_dicomweb(text: str, **fields) -> Node:
    parts = urlsplit(text)
    if not parts.hostname:
        raise PacsError(f"{text}: no host in the DICOMweb URL (e.g. https://pacs.example.org/dicom-web)")
    if parts.password:
        raise PacsError("a password in the URL is refused: put it in HLIP_PACS_PASSWORD or the OS keyring")
    if parts.port is None and ":" in parts.netloc.rsplit("@", 1)[-1].strip("[]").split("]")[-1]:
        raise PacsError(f"{text}: bad port in the URL")
    netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if parts.port:
        netloc += f":{parts.port}"
    url = urlunsplit((parts.scheme.lower(), netloc, parts.path.rstrip("/"), parts.query, ""))
    fields.setdefault("username", parts.username or "")
    return Node(kind="dicomweb", url=url, host=parts.hostname, port=parts.port or 0, **fields)


def _parse_dimse(text: str, **fields) -> Node:
    parts = urlsplit(text)
    netloc = parts.netloc
    if "@" not in netloc:
        raise PacsError(f"{text}: a DIMSE node is dicom://CALLED_AET@host:port (the PACS's AE title first)")
    aet, hostport = netloc.rsplit("@", 1)
    from urllib.parse import unquote

    aet = _check_aet(unquote(aet), "called AE title")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host:
        raise PacsError(f"{text}: no port; a DIMSE node is dicom://CALLED_AET@host:port")
    host = host.strip("[]")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if "calling_aet" in query:
        fields.setdefault("calling_aet", _check_aet(query["calling_aet"], "calling AE title"))
    if "move_port" in query:
        fields.setdefault("move_port", _port(query["move_port"], text))
    return Node(kind="dimse", host=host, port=_port(port, text), called_aet=aet, **fields)


def load_nodes(path: Path | None = None) -> dict[str, dict]:
    """The nodes file as ``{name: entry}``; ``{}`` when there is none."""
    path = Path(path) if path else nodes_path()
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise PacsError(f"{path}: cannot read the PACS nodes file ({e})") from None
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise PacsError(f"{path}: the nodes file must be a JSON object of {{name: {{\"url\": ...}}}}")
    for name, entry in raw.items():
        if any(k in entry for k in ("password", "token", "secret")):
            raise PacsError(f"{path}: node {name!r} holds a password or token; remove it and use "
                            "HLIP_PACS_PASSWORD / HLIP_PACS_TOKEN or the OS keyring")
    return raw


def node_from_file(name: str, path: Path | None = None) -> Node:
    nodes = load_nodes(path)
    if name not in nodes:
        known = ", ".join(sorted(nodes)) or "none"
        raise PacsError(f"unknown PACS node {name!r} (known in {path or nodes_path()}: {known}); give a "
                        "DICOMweb URL or dicom://AET@host:port instead")
    entry = dict(nodes[name])
    url = str(entry.pop("url", ""))
    fields = {"name": name}
    for key in ("calling_aet", "username", "auth"):
        if entry.get(key):
            fields[key] = str(entry.pop(key))
    if entry.get("move_port") is not None:
        fields["move_port"] = _port(entry.pop("move_port"), name)
    if entry.get("timeout") is not None:
        fields["timeout"] = float(entry.pop("timeout"))
    if "verify" in entry:
        fields["verify"] = entry.pop("verify")
    if url.startswith(("http://", "https://")):
        return _parse_dicomweb(url, **fields)
    if url.startswith("dicom://"):
        return _parse_dimse(url, **fields)
    raise PacsError(f"node {name!r}: 'url' must be http(s)://... or dicom://AET@host:port, got {url!r}")


# --- credentials -----------------------------------------------------------------------------------
def _env_key(node: Node, what: str) -> list[str]:
    keys = []
    if node.name:
        keys.append(f"HLIP_PACS_{re.sub(r'[^A-Za-z0-9]', '_', node.name).upper()}_{what}")
    keys.append(f"HLIP_PACS_{what}")
    return keys


def _keyring(user: str, node: Node) -> str:
    try:
        import keyring

        return keyring.get_password(KEYRING_SERVICE, f"{node.key}:{user}") or ""
    except Exception:  # no keyring backend, a locked keyring: no secret, never a crash
        return ""


def credentials(node: Node) -> tuple[str, str, str]:
    """``(auth, username, secret)`` for a DICOMweb node: ``("", "", "")`` when it needs none.

    A bearer token wins over a password (unless the node says ``"auth": "basic"``); the environment wins over
    the keyring.
    """
    env = os.environ
    if node.auth != "basic":
        token = next((env[k] for k in _env_key(node, "TOKEN") if env.get(k)), "")
        if not token and node.auth == "bearer":
            token = _keyring("token", node)
        if token:
            return "bearer", "", token
    user = node.username or next((env[k] for k in _env_key(node, "USERNAME") if env.get(k)), "")
    if not user:
        return "", "", ""
    password = next((env[k] for k in _env_key(node, "PASSWORD") if env.get(k)), "") or _keyring(user, node)
    return "basic", user, password
