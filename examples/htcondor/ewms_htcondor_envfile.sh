# shellcheck shell=bash
# Settings for one pilot job, sourced by the image's entrypoint from the job's
# working directory (transferred with `transfer_input_files`). EWMS writes this
# file for you; this one is an example to fill in by hand. Every variable is
# listed by `ewms-pilot config --list`. Holds secrets: chmod 600.

# the task: an image run once per event, with the infile/outfile placeholders
export EWMS_PILOT_TASK_IMAGE="/cvmfs/example.opensciencegrid.org/containers/word-count:latest"
export EWMS_PILOT_TASK_ARGS="<<INFILE>> <<OUTFILE>>"
export EWMS_PILOT_OUTFILE_EXT=".json"
export EWMS_PILOT_MAX_CONCURRENT_TASKS="1"
export EWMS_PILOT_TASK_TIMEOUT="3600"

# the queues
export EWMS_PILOT_QUEUE_INCOMING="my-workflow-in"
export EWMS_PILOT_QUEUE_INCOMING_BROKER_TYPE="rabbitmq"
export EWMS_PILOT_QUEUE_INCOMING_BROKER_ADDRESS="amqps://ewms@mq.example.org/ewms"
export EWMS_PILOT_QUEUE_INCOMING_AUTH_TOKEN="REPLACE-ME"
export EWMS_PILOT_QUEUE_OUTGOING="my-workflow-out"
export EWMS_PILOT_QUEUE_OUTGOING_BROKER_TYPE="rabbitmq"
export EWMS_PILOT_QUEUE_OUTGOING_BROKER_ADDRESS="amqps://ewms@mq.example.org/ewms"
export EWMS_PILOT_QUEUE_OUTGOING_AUTH_TOKEN="REPLACE-ME"

# when to stop: no first event in 10 min, or the queue empty for 5 min
export EWMS_PILOT_TIMEOUT_QUEUE_WAIT_FOR_FIRST_MESSAGE="600"
export EWMS_PILOT_TIMEOUT_QUEUE_INCOMING="300"

# a failing task stops this pilot (a bad node must not eat the queue), and the
# job then sleeps 10 min so HTCondor does not hand the same slot to a new pilot at once
export EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR="true"
export EWMS_PILOT_QUARANTINE_TIME="600"

# report to HTCondor with chirp (the submit file sets +WantIOProxy = true)
export EWMS_PILOT_HTCHIRP="true"
