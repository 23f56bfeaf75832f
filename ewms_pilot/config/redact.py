"""Keep secrets out of every text the pilot lets out: logs, stderr, chirp, journal, errors.

Two mechanisms, both here so every door uses the same rules:
- a process-wide registry: config loading (and the queue CLI) registers every
  auth token, URL password and NATS URL token it is given (`register_settings`,
  `register_address`, `register_secret`); `scrub` masks each one wherever it shows up,
  in whatever a third-party library made of it;
- shape rules: `scrub` also masks the userinfo of anything that looks like a
  URL (`scheme://user:pw@`, `scheme://TOKEN@`, `user:pw@host`), registered or not.
`redact_url` masks one broker address, knowing it is one (commas and spaces in a
password, multi-host lists, unencoded `@`, no host at all).
"""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
from collections.abc import Mapping

MASK = "***"
# shorter registered values are masked only where their place is known (secret variables,
# URL userinfo, secret keys of an ENV_JSON): masking every "ab" in every log line would
# make logs unreadable. The rule for operators: README "Secrets".
MIN_SECRET_CHARS = 4

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# a variable name whose value is a secret, whatever the rest of the name is
_SECRET_NAME = re.compile(
    r"(?:^|_)(?:TOKEN|PASSWORD|PASSWD|PASSPHRASE|PWD|PASS|SECRET|KEY|APIKEY|CREDENTIALS?|COOKIE)S?(?:_|$)"
)


def looks_secret(name: str) -> bool:
    """Whether a variable's name says it holds a secret (`..._TOKEN`, `..._PASSWORD`, ...)."""
    return bool(_SECRET_NAME.search(name.upper()))


# ------------------------------------------------------------- one broker address


def _entries(address: str) -> list[str]:
    """Comma-separated hosts, rejoining the commas that were inside a password.

    A segment without `@` that a later segment's `@` closes (before the next
    `scheme://`) is part of that entry's userinfo: masking a port too is better
    than showing half a password.
    """
    segments = address.split(",")
    out: list[str] = []
    i = 0
    while i < len(segments):
        j = i
        while j < len(segments) and "@" not in segments[j]:
            j += 1
            if j < len(segments) and _SCHEME.match(segments[j]):
                j = len(segments)  # a new entry starts: segment i had no userinfo
        if j < len(segments):
            out.append(",".join(segments[i : j + 1]))
            i = j + 1
        else:
            out.append(segments[i])
            i += 1
    return out


def _userinfo(entry: str) -> tuple[str, str | None, str]:
    """(`scheme://` or "", the userinfo or None, the rest) of one address entry."""
    m = _SCHEME.match(entry)
    scheme = m[0] if m else ""
    body = entry[len(scheme) :]
    if "@" not in body:
        return scheme, None, body
    userinfo, rest = body.rsplit("@", 1)  # the host never holds an `@`; a password may
    return scheme, userinfo, rest


# in these URLs a userinfo without `:` is a user name (RabbitMQ); anywhere else it may be
# a token (`nats://TOKEN@host`), so it is masked
_USER_NAME_SCHEMES = ("amqp://", "amqps://")


def _masked_userinfo(scheme: str, userinfo: str) -> str:
    if ":" in userinfo:
        user, password = userinfo.split(":", 1)
        return f"{user}:{MASK}" if password else userinfo
    if not userinfo or scheme.lower() in _USER_NAME_SCHEMES:
        return userinfo
    return MASK


def _secret_of(scheme: str, userinfo: str) -> str:
    """The password in `user:password`, or a bare userinfo that is a token."""
    if ":" in userinfo:
        return userinfo.split(":", 1)[1]
    return "" if scheme.lower() in _USER_NAME_SCHEMES else userinfo


def redact_url(address: str) -> str:
    """One broker address with every password/token masked: `amqp://u:***@h`, `nats://***@h`."""
    shown = []
    for entry in _entries(address):
        scheme, userinfo, rest = _userinfo(entry)
        if userinfo is None:
            shown.append(entry)
            continue
        shown.append(f"{scheme}{_masked_userinfo(scheme, userinfo)}@{rest}")
    return ",".join(shown)


def address_secrets(address: str) -> list[str]:
    """Every password or token in a broker address (as given, and percent-decoded)."""
    found: list[str] = []
    for entry in _entries(address):
        scheme, userinfo, _ = _userinfo(entry)
        if userinfo:
            secret = _secret_of(scheme, userinfo)
            found += [secret, urllib.parse.unquote(secret)]
    return [s for s in found if s]


# ---------------------------------------------------------------- the registry

_lock = threading.Lock()
_registered: set[str] = set()
_pattern: re.Pattern[str] | None = None


def _forms(value: str) -> set[str]:
    """The ways a library may print a value: as is, URL-encoded, JSON- and repr-escaped."""
    return {
        value,
        value.strip(),
        urllib.parse.quote(value, safe=""),
        urllib.parse.quote_plus(value),
        urllib.parse.unquote(value),
        json.dumps(value)[1:-1],
        repr(value)[1:-1],
    }


def register_secret(value: str) -> None:
    """From now on `scrub` masks `value` (and its encoded forms) in any text."""
    global _pattern
    new = {f for f in _forms(value) if len(f) >= MIN_SECRET_CHARS}
    with _lock:
        if new <= _registered:
            return
        _registered.update(new)
        ordered = sorted(_registered, key=len, reverse=True)  # longest first: no half-masks
        _pattern = re.compile("|".join(re.escape(s) for s in ordered))


def register_address(address: str) -> None:
    """Register every password and token in a broker address."""
    for secret in address_secrets(address):
        register_secret(secret)


def register_settings(settings: Mapping[str, object]) -> list[str]:
    """Register what an environment's `EWMS*` settings carry: secret-named values, address secrets.

    Called first thing by config loading, so even the error about a setting is scrubbed.
    Returns the names holding a secret too short to be hunted in free text (`MIN_SECRET_CHARS`):
    the operator is told, since it is masked only where its place is known.
    """
    short: list[str] = []
    for name, value in settings.items():
        if not isinstance(value, str) or "EWMS" not in name.upper():
            continue
        if _holds_env_json(name):  # a task's `{"API_KEY": ..., "PASSWORD": ...}`: each key is judged itself
            pairs = _json_object(value).items()
            short += [f"{name}:{k}" for k, v in pairs if isinstance(v, str) and _register(k, v)]
        elif _register(name, value):
            short.append(name)
    return short


def _register(name: str, value: str) -> bool:
    """Register the secrets the setting `name` = `value` carries; whether one is too short to hunt."""
    secrets = [value] if looks_secret(name) else []
    if not secrets and name.upper().endswith("_ADDRESS"):
        secrets = address_secrets(value)
    for secret in secrets:
        register_secret(secret)
    return any(0 < len(s) < MIN_SECRET_CHARS for s in secrets)


def _holds_env_json(name: str) -> bool:
    return name.upper().endswith("_ENV_JSON")


def redact_env_json(name: str, text: str) -> str:
    """The value of `..._ENV_JSON` variable `name` with every secret-named key's value masked (any length).

    Its place is known, so a secret too short for `scrub` to hunt in free text is
    still never shown. Other variables, and text that is no JSON object, are left to `scrub`.
    """
    obj = _json_object(text) if _holds_env_json(name) else {}
    if not any(looks_secret(k) for k in obj):
        return text
    return json.dumps({k: MASK if looks_secret(k) else v for k, v in obj.items()})


def _json_object(text: str) -> dict[str, object]:
    """`text` as a JSON object, or {} (the loader reports what is wrong with it)."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


# ---------------------------------------------------------------- free text

# `scheme://userinfo@`: the userinfo runs to the last `@` before whitespace or `/`
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s/\[\]]*)@")
# `user:password@` without a scheme (oms-mqclient's RabbitMQ form), at a word start
_BARE_USERINFO = re.compile(
    r"(?P<pre>^|[\s'\"(\[{<=,;/])(?P<user>[^\s:@/'\"()\[\]{}<>=,;]+):(?P<password>[^\s/\[\]]*)@"
)


def _mask_url(m: re.Match[str]) -> str:
    return f"{m['scheme']}{_masked_userinfo(m['scheme'], m['userinfo'])}@"


def _mask_bare(m: re.Match[str]) -> str:
    if not m["password"]:
        return m[0]
    return f"{m['pre']}{m['user']}:{MASK}@"


def scrub(text: str) -> str:
    """`text` with every registered secret and every URL password/token masked as `***`."""
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    if "@" in text:
        text = _URL_USERINFO.sub(_mask_url, text)
        text = _BARE_USERINFO.sub(_mask_bare, text)
    return text
