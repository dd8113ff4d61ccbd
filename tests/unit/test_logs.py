"""[log] level filters chatbx's own log events."""

from twisted.logger import Logger, globalLogPublisher

from chatbx_server import logs


def test_level_filters_chatbx_events():
    """Below the configured level nothing reaches the global publisher; at it, events pass."""
    seen = []
    globalLogPublisher.addObserver(seen.append)
    log = Logger(namespace="chatbx.test", observer=logs.log_observer)
    try:
        logs.set_level("warn")
        log.info("hidden")
        log.warn("shown")
        logs.set_level("debug")
        log.debug("shown too")
    finally:
        logs.set_level("info")
        globalLogPublisher.removeObserver(seen.append)
    formats = [e["log_format"] for e in seen if e.get("log_namespace") == "chatbx.test"]
    assert formats == ["shown", "shown too"]
