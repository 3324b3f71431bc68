"""The project's one root exception and its few subclasses."""


class DetectorError(Exception):
    """Root of every error the detector raises on purpose."""


class ConfigError(DetectorError):
    """A config file or environment override is invalid; the message names the key."""


class StoreError(DetectorError):
    """The state store (Redis) failed or is unreachable."""


class SourceError(DetectorError):
    """An event source (file, Kafka) cannot be read."""


class StaleProgress(StoreError):
    """Another writer has applied these partitions since this one last read their offsets."""


class DeliveryError(DetectorError):
    """A sink did not deliver records (after its own retries); they must be sent again."""

    def __init__(self, sink: str, destination: str, failed: int, cause: object) -> None:
        super().__init__(
            f"{sink}: {failed} record(s) not delivered to {destination}: "
            f"{type(cause).__name__}: {cause}"
        )
        self.sink = sink
        self.failed = failed
