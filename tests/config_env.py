"""The smallest environment `load_config` accepts: config tests add to it what they test."""

MINIMAL = {
    "EWMS_PILOT_TASK_IMAGE": "docker.io/library/alpine:3",
    "EWMS_PILOT_QUEUE_INCOMING": "q-in",
    "EWMS_PILOT_QUEUE_INCOMING_BROKER_TYPE": "rabbitmq",
    "EWMS_PILOT_QUEUE_INCOMING_BROKER_ADDRESS": "localhost",
    "EWMS_PILOT_QUEUE_OUTGOING": "q-out",
    "EWMS_PILOT_QUEUE_OUTGOING_BROKER_TYPE": "rabbitmq",
    "EWMS_PILOT_QUEUE_OUTGOING_BROKER_ADDRESS": "localhost",
}
