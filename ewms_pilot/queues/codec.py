"""The one way payload bytes become a `Delivery` and back, for every broker and the local queue.

The wire format is oms-mqclient's (`Message.serialize`: zstd JSON with `data`
and `headers`). The pilot keeps its own bookkeeping in headers with one prefix
(`ewms_pilot_`): they are read here and stripped, so a task and a dead-letter
consumer see the event's own headers, and a requeued copy carries the count.
The pilot's headers are a door out like any other: their text (a task's
stderr in the error) is scrubbed of secrets here, where they are made. The
event's own data and headers pass through unchanged: they are not the pilot's.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

from mqclient.broker_client_interface import Message

from ..config.redact import scrub
from .base import Delivery

LOGGER = logging.getLogger(__name__)

PREFIX = "ewms_pilot_"
ATTEMPTS = f"{PREFIX}attempts"  # failed task runs so far (int)
ERROR = f"{PREFIX}error"  # the last failure's reason
ERROR_TYPE = f"{PREFIX}error_type"  # the last failure's type name
PILOT_ID = f"{PREFIX}id"  # the pilot that dead-lettered it
DELIVERIES = f"{PREFIX}deliveries"  # raw broker deliveries (dead-letter copies)
DECODE_ERROR = f"{PREFIX}decode_error"  # dead-letter copy of an undecodable payload: why
RAW_PAYLOAD_B64 = f"{PREFIX}raw_payload_b64"  # ... and the payload itself (base64), its first KEEP bytes
RAW_PAYLOAD_BYTES = f"{PREFIX}raw_payload_bytes"  # ... and its whole size: more than the copy holds = cut
RAW_PAYLOAD_KEEP = 1024 * 1024  # bytes of an undecodable payload a dead-letter copy keeps


def encode(data: Any, headers: dict[str, Any] | None = None) -> bytes:
    """Payload bytes in oms-mqclient's format (raises TypeError for non-JSON data)."""
    return Message.serialize(data, headers=headers)


def _attempts(value: Any, msg_id: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    LOGGER.warning(f"event {msg_id}: header {ATTEMPTS}={value!r} is not a count >= 0; taken as 0")
    return 0


def decode(msg_id: str, payload: bytes, delivery_count: int | None, raw: Any = None) -> Delivery:
    """A delivery from payload bytes; an undecodable payload is kept whole, with the reason.

    Runs on a worker/broker thread by its callers: unpacking a large payload
    must not stall the pilot's loop.
    """
    try:
        body = Message(msg_id, payload)
        data, headers = body.data, body.headers
    except Exception as e:  # not oms-mqclient's format: hand it over so it can be failed
        return Delivery(
            msg_id=msg_id,
            data=None,
            delivery_count=delivery_count,
            decode_error=f"{type(e).__name__}: {e}",
            raw_payload=payload,
            raw=raw,
        )
    own = dict(headers) if isinstance(headers, dict) else {}
    attempts = _attempts(own[ATTEMPTS], msg_id) if ATTEMPTS in own else 0
    return Delivery(
        msg_id=msg_id,
        data=data,
        headers={k: v for k, v in own.items() if not str(k).startswith(PREFIX)},
        attempts=attempts,
        delivery_count=delivery_count,
        raw=raw,
    )


def _own(headers: dict[str, Any]) -> dict[str, Any]:
    """The pilot's own headers, their text scrubbed of secrets."""
    return {k: scrub(v) if isinstance(v, str) else v for k, v in headers.items()}


def requeued_payload(delivery: Delivery, error: str, error_type: str) -> bytes:
    """The copy a failed attempt puts back: same data and own headers, attempts+1, last error."""
    if delivery.decode_error is not None:
        raise ValueError(f"event {delivery.msg_id} is undecodable: it cannot carry an attempt count")
    return encode(delivery.data, {**delivery.headers, **_own({ATTEMPTS: delivery.attempts + 1, ERROR: error, ERROR_TYPE: error_type})})


def dead_letter_headers(
    delivery: Delivery, *, attempts: int, error: str, error_type: str, pilot_id: str
) -> dict[str, Any]:
    """Headers of the dead-letter copy: the event's own plus the pilot's (an undecodable payload kept)."""
    headers = {
        **delivery.headers,
        **_own({
            ATTEMPTS: attempts,
            ERROR: error,
            ERROR_TYPE: error_type,
            DELIVERIES: delivery.delivery_count,
            PILOT_ID: pilot_id,
        }),
    }
    if delivery.decode_error is not None:
        headers.update(_own({DECODE_ERROR: delivery.decode_error}))
        # the event's own bytes, as they came (not the pilot's text: kept unchanged), and how many there were
        raw = delivery.raw_payload or b""
        headers[RAW_PAYLOAD_B64] = base64.b64encode(raw[:RAW_PAYLOAD_KEEP]).decode()
        headers[RAW_PAYLOAD_BYTES] = len(raw)
        if len(raw) > RAW_PAYLOAD_KEEP:
            LOGGER.warning(
                f"event {delivery.msg_id}: its undecodable payload has {len(raw)} bytes; the dead-letter copy "
                f"keeps the first {RAW_PAYLOAD_KEEP} ({RAW_PAYLOAD_BYTES} says how many there were)"
            )
    return headers
