"""Broker addresses in the forms oms-mqclient 2.7 can really connect with.

oms-mqclient's RabbitMQ client passes a URL's scheme on to pika as a keyword
pika does not take (`TypeError: unexpected kwargs: {'scheme': ...}`), so
`amqp://` is dropped here (plain AMQP is what oms-mqclient speaks unasked) and
`amqps://` is kept for the RabbitMQ adapter, which adds pika's TLS options
itself (`queues/rabbitmq.py`). Any other form is refused at load with the
forms that work, instead of failing as a "broker" error at connect.
An address without a host would put its password into oms-mqclient's
exception text; it is refused here too, with the password masked.
"""

from __future__ import annotations

import re
import urllib.parse

RABBITMQ_FORMS = "[amqp://|amqps://][USER[:PASSWORD]@]HOST[:PORT][/VHOST]"
NATS_FORMS = "[nats://|tls://|ws://|wss://][TOKEN@|USER:PASSWORD@]HOST[:PORT]"
PULSAR_FORMS = "[pulsar://|pulsar+ssl://]HOST[:PORT]"
_SCHEMES = {
    "rabbitmq": ("amqp", "amqps"),
    "nats": ("nats", "tls", "ws", "wss"),
    "pulsar": ("pulsar", "pulsar+ssl"),
}
_FORMS = {"rabbitmq": RABBITMQ_FORMS, "nats": NATS_FORMS, "pulsar": PULSAR_FORMS}
_BAD_CHARS = re.compile(r"[\s\x00-\x1f\x7f]")


def normalize_address(broker_type: str, address: str) -> str:
    """The address as the broker client should get it; `ValueError(expected)` if it cannot work."""
    if broker_type not in _FORMS:  # local: a file path, checked where it is opened
        if "\0" in address:
            raise ValueError("a file path (no NUL characters)")
        return address
    forms = _FORMS[broker_type]
    expected = f"a {broker_type} address {forms}"
    if _BAD_CHARS.search(address):
        raise ValueError(f"{expected} (no spaces or control characters)")
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "", address
    elif scheme.lower() not in _SCHEMES[broker_type]:
        raise ValueError(f"{expected}; scheme {scheme}:// is not one of these")
    try:
        parsed = urllib.parse.urlsplit("//" + rest)
        host, port = parsed.hostname, parsed.port  # .port raises ValueError when not 0-65535
    except ValueError:
        raise ValueError(f"{expected} (the port must be a number up to 65535)") from None
    if not host:
        raise ValueError(f"{expected} (no host given)")
    if port == 0:
        raise ValueError(f"{expected} (port 0)")
    if broker_type == "rabbitmq":
        if parsed.query or parsed.fragment:
            raise ValueError(f"{expected} (no ?query or #fragment: oms-mqclient ignores them)")
        if scheme.lower() == "amqps":
            return "amqps://" + rest  # TLS: the adapter connects itself (queues/rabbitmq.py)
        return rest  # oms-mqclient parses it as `//` + address: same meaning, no scheme
    return address
