"""One line for an error, and what to do about the errors users can fix themselves.

Py4J's own first line only names the JVM call that failed (``An error occurred while calling
o958.unpersist``); the line that says why is the root of the Java cause chain.
"""

from __future__ import annotations

import traceback

from py4j.protocol import Py4JNetworkError

MEMORY_HINT = ("Spark ran out of memory: give it more with --set spark.driver_memory=8g (local mode; "
               "executor memory on a cluster), or make its tasks smaller with a larger "
               "spark.shuffle_partitions")


def brief(exc: BaseException) -> str:
    """The first line of an error; for a Java error, of its root cause."""
    if jvm_gone(exc):
        return (f"Spark's JVM is gone ({text_of(exc).strip() or type(exc).__name__}): it was killed or "
                "ran out of memory, as its log above says")
    root = getattr(exc, "java_exception", None)
    if root is not None:
        try:
            for _ in range(32):  # cause chains are short; bounded all the same
                cause = root.getCause()
                if cause is None:
                    break
                root = cause
            exc = RuntimeError(str(root.toString()))
        except Exception:  # the JVM may be gone: fall back to the Python text
            pass
    text = text_of(exc).strip().splitlines()
    return text[0][:500] if text else type(exc).__name__


def jvm_gone(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure to reach Spark's JVM: a network error raised inside Py4J."""
    return isinstance(exc, OSError | Py4JNetworkError) and any(
        "py4j" in frame.filename for frame in traceback.extract_tb(exc.__traceback__))


def hint(text: str, spark_stopped: bool = False) -> str | None:
    """Advice for an error whose cure is a setting, else None. When Spark stopped during the command,
    the error Python sees is often a consequence (a call on the stopped context), not the cause."""
    if "OutOfMemoryError" in text or "Java heap space" in text:
        return MEMORY_HINT
    if spark_stopped:
        return (f"Spark stopped while this ran; the first ERROR in its log above says why. If that is "
                f"java.lang.OutOfMemoryError: {MEMORY_HINT}")
    return None


def spark_stopped() -> bool:
    """Whether this process's SparkContext has stopped (or its JVM is gone) since it started."""
    from pyspark import SparkContext

    context = SparkContext._active_spark_context
    if context is None:
        return False
    try:
        return bool(context._jsc.sc().isStopped())
    except Exception:  # the JVM cannot be asked: it is gone
        return True


def text_of(exc: BaseException) -> str:
    """``str(exc)``, which for a Py4J error asks the JVM and fails when it has died."""
    try:
        return str(exc)
    except Exception:
        return type(exc).__name__
