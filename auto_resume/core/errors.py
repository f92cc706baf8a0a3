"""The error every layer raises when Metaflow data does not fit a request.

Pure checks (a malformed run id, a step the flow does not have, a run with no parameters task)
and the Metaflow side (an unreadable datastore, a flow file that does not import) raise the same
type, so that the sensor, the resume job and the CLI handle both with one ``except``.
"""


class MetaflowAccessError(Exception):
    """Metaflow data is missing, unreadable or inconsistent with the request."""


class UnsupportedFlowError(MetaflowAccessError):
    """A flow auto-resume cannot resume (how it is launched, or how it is built at run time).

    The code location refuses that flow alone, with this message, and loads the others.
    """
