"""Reading back what a run's failures said, as the Dagster UI shows it."""

from dagster import DagsterEventType, DagsterInstance


def failure_messages(instance: DagsterInstance, run_id: str, *, tracebacks: bool = False) -> str:
    """Every step failure of a run: its Failure description and its error, one per line.

    Args:
        instance: The Dagster instance.
        run_id: The run.
        tracebacks: Whole errors with their tracebacks and the run failure's message too, instead
            of each error's one-line message.
    """
    messages = []
    for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.STEP_FAILURE).records:
        event = record.event_log_entry.dagster_event
        assert event is not None
        data = event.step_failure_data
        if data.user_failure_data and data.user_failure_data.description:
            messages.append(data.user_failure_data.description)
        if data.error:
            messages.append(data.error.to_string() if tracebacks else data.error.message)
        else:
            messages.append("")
    if tracebacks:
        for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.RUN_FAILURE).records:
            messages.append(record.event_log_entry.message or "")
    return "\n".join(messages)
