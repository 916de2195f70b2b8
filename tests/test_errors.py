"""The one-line error messages: a Java root cause, an unreachable JVM, and advice where a setting cures it."""

from __future__ import annotations

import socket

import pytest
from py4j.java_gateway import GatewayParameters, JavaGateway

from beha2vec.errors import MEMORY_HINT, brief, hint, jvm_gone, spark_stopped


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_brief_is_the_first_line():
    assert brief(ValueError("first line\nsecond line")) == "first line"
    assert brief(RuntimeError("")) == "RuntimeError"


def test_a_jvm_that_cannot_be_reached_is_named_as_gone():
    """Py4J's own error when the JVM has died: a refused connection on the gateway's port."""
    gateway = JavaGateway(gateway_parameters=GatewayParameters(address="127.0.0.1", port=closed_port()))
    try:
        with pytest.raises(Exception) as info:
            gateway.jvm.java.lang.System.currentTimeMillis()
    finally:
        gateway.close()
    assert jvm_gone(info.value)
    assert brief(info.value).startswith("Spark's JVM is gone (")


def test_a_refused_connection_elsewhere_is_not_the_jvm():
    with pytest.raises(ConnectionRefusedError) as info:
        socket.create_connection(("127.0.0.1", closed_port()), timeout=5)
    assert not jvm_gone(info.value)
    assert "Spark" not in brief(info.value)


@pytest.mark.parametrize("text", [
    "Job aborted due to stage failure: Task 6 in stage 6.0 failed 1 times, most recent failure: Lost task "
    "6.0 in stage 6.0 (TID 91) (localhost executor driver): java.lang.OutOfMemoryError: Java heap space",
    "writing table 'events' at /lake/events failed: java.lang.OutOfMemoryError: GC overhead limit exceeded",
])
def test_running_out_of_memory_gets_the_memory_hint(text):
    assert hint(text) == MEMORY_HINT


def test_other_errors_get_no_hint_unless_spark_stopped():
    message = "writing table 'changed_users' failed: java.lang.NullPointerException: Cannot invoke ..."
    assert hint("UNRESOLVED_COLUMN: a column cannot be resolved") is None
    assert hint(message) is None
    assert hint(message, spark_stopped=True).startswith("Spark stopped while this ran")


def test_the_running_session_is_not_stopped(spark):
    assert not spark_stopped()
