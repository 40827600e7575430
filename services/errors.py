"""Errors that carry the gRPC status a client should see, raised anywhere below the servicer."""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """A failure with the status code the request should end with; the message is shown to the client."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def as_value(self) -> ServiceError:
        """This error without the traceback it was raised with, to be kept as a sample's result.

        Kept with it, the traceback's frames hold the list it is kept in: a reference cycle that keeps the request
        (megabytes of text, for a refused large one) until the collector's rare full pass."""
        return self.with_traceback(None)

    def raised_anew(self) -> ServiceError:
        """A copy to raise where this one is held by a local: raising it there would put that frame, which holds
        it, in its traceback (the same cycle as in ``as_value``)."""
        return ServiceError(self.code, self.message)


def invalid_argument(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, message)


def resource_exhausted(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


def unavailable(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAVAILABLE, message)


def deadline_exceeded(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED, message)
