"""Make text safe to print: mask URL passwords.

The effective-config banner (`banner.py`), broker log lines and errors use it
to keep passwords out of logs.
"""

from __future__ import annotations

import re

MASK = "***"

# `user:password@` right after `scheme://`, a comma (multi-host URLs) or the start;
# the password runs to the last `@` before the next `/`, `,` or whitespace.
_USERINFO = re.compile(r"(?P<pre>^|://|,)(?P<user>[^:@/,\s]*):(?P<password>[^/,\s]*)@")


def redact_url(url: str) -> str:
    """`scheme://user:pass@host` -> `scheme://user:***@host`; anything else unchanged."""

    def mask(m: re.Match[str]) -> str:
        if not m["password"]:
            return m[0]
        return f"{m['pre']}{m['user']}:{MASK}@"

    return _USERINFO.sub(mask, url)
