"""A real S3 server on loopback (moto's ``ThreadedMotoServer``) behind a WSGI middleware that
fails chosen requests on purpose: an S3 ``SlowDown`` 503, a dropped connection (no reply, the
request not served), a lost reply (the request served, a write done, then the connection
dropped: a success that looks like a failure; for a GET, the body cut half-way), or a request
held half-received (half its body read, then nothing until ``Faults.release`` is set, then the
connection dropped unserved: an upload in flight, for a test to kill its client meanwhile).

``s3_server()`` starts one, points the standard AWS variables at it (``AWS_ENDPOINT_URL``,
dummy credentials) for this process and the processes it starts, and creates a bucket;
``check_same_as_local`` compares a job's objects with the reference run's files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import threading
from dataclasses import dataclass, field
from typing import Iterator

import needs
import processes
import shard_faults as sf

SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
            b'<Message>Please reduce your request rate.</Message><RequestId>fault</RequestId></Error>')
KINDS = ("slowdown", "drop", "lose_reply", "hold")
HOLD_LIMIT_S = 120  # a held request is dropped after this even if never released


@dataclass
class Rule:
    """Fail the next ``times`` requests whose method is ``method`` and whose path matches
    ``path`` (a regex searched in the path) with ``kind`` (one of KINDS)."""

    method: str
    path: str
    kind: str
    times: int = 1
    hits: int = 0


@dataclass
class Faults:
    """The middleware's plan (rules, applied first match first) and its log of requests."""

    rules: list[Rule] = field(default_factory=list)
    log: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, what was done)
    lock: threading.Lock = field(default_factory=threading.Lock)
    release: threading.Event = field(default_factory=threading.Event)  # lets held requests go (dropped)

    def add(self, method: str, path: str, kind: str, times: int = 1) -> Rule:
        assert kind in KINDS, kind
        rule = Rule(method, path, kind, times)
        if kind == "hold":
            self.release.clear()
        with self.lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()
        self.release.set()

    def pick(self, method: str, path: str) -> str:
        with self.lock:
            for rule in self.rules:
                if rule.hits < rule.times and rule.method == method and re.search(rule.path, path):
                    rule.hits += 1
                    self.log.append((method, path, rule.kind))
                    return rule.kind
            self.log.append((method, path, "ok"))
            return "ok"


class FaultMiddleware:
    """WSGI middleware in front of moto: the chosen faults, else the request passed on."""

    def __init__(self, app, faults: Faults) -> None:
        self.app, self.faults = app, faults

    def __call__(self, environ, start_response):
        kind = self.faults.pick(environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""))
        if kind == "slowdown":
            _drain(environ)
            start_response("503 Slow Down", [("Content-Type", "application/xml"),
                                             ("Content-Length", str(len(SLOWDOWN)))])
            return [SLOWDOWN]
        if kind == "hold":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            environ["wsgi.input"].read(length // 2)
            self.faults.release.wait(HOLD_LIMIT_S)
            kind = "drop"
        if kind == "drop":
            _drop(environ)
            start_response("500 Dropped", [])  # never sent: the connection is gone
            return []
        if kind == "lose_reply":  # served (a write done); the reply lost, a body cut half-way
            reply: dict = {}
            body = b"".join(self.app(environ, lambda status, headers, *_: reply.update(status=status,
                                                                                      headers=headers)))
            if environ["REQUEST_METHOD"] != "GET" or len(body) < 2:
                _drop(environ)
                start_response("500 Dropped", [])
                return []
            start_response(reply["status"], reply["headers"])
            return _cut_after(body[:len(body) // 2], environ)
        return self.app(environ, start_response)


def _cut_after(head: bytes, environ) -> Iterator[bytes]:
    """Send ``head``, then drop the connection (the client reads a body cut short)."""
    yield head
    _drop(environ)


def _drain(environ) -> None:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if length:
        environ["wsgi.input"].read(length)


def _drop(environ) -> None:
    """Close the client's connection without a reply (werkzeug hands the WSGI app its socket)."""
    sock = environ.get("werkzeug.socket")
    assert sock is not None, "werkzeug no longer passes the socket: cannot drop connections"
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    faults: Faults

    def url(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *parts])

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint)

    def keys(self, prefix: str = "") -> list[str]:
        """Object keys under ``prefix`` (read without the faults)."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def read(self, key: str) -> bytes:
        return self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()


@contextlib.contextmanager
def s3_server(bucket: str = "mvmae") -> Iterator[S3Server]:
    """A loopback S3 server with fault injection, the AWS variables pointing at it meanwhile."""
    needs.extra("s3fs")
    needs.extra("moto.server")
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    faults = Faults()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request

    class FaultyMotoServer(ThreadedMotoServer):
        def _server_entry(self) -> None:
            app = FaultMiddleware(DomainDispatcherApplication(create_backend_app), faults)
            self._server = make_server(self._ip_address, self._port, app, True)
            self._server_ready_event.set()
            self._server.serve_forever()

    server = FaultyMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_MAX_ATTEMPTS": "2"}  # botocore's own retries, fewer: a fault reaches s3fs's and mvmae's sooner
    import s3fs

    try:
        with processes.environment(env):
            s3fs.S3FileSystem.clear_instance_cache()  # a cached client would reach an older server
            s3 = S3Server(env["AWS_ENDPOINT_URL"], bucket, faults)
            s3.client().create_bucket(Bucket=bucket)
            yield s3
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


def _shard_names() -> list[str]:
    return [f"train-{j:06d}" for j in range(sf.NUM_SHARDS)]


def check_same_as_local(s3, prefix: str, dataset: dict) -> None:
    """The bucket holds the local run's shards byte for byte, each with its marker, its job
    record, classes and manifest, and nothing else (no partial or temporary object)."""
    local = dataset["dir"]
    names = _shard_names()
    expected = sorted([f"{prefix}/{n}.{ext}" for n in names for ext in ("tar", "json")]
                      + [f"{prefix}/{f}" for f in ("classes.json", "train-job.json", "train-manifest.jsonl")])
    assert s3.keys(prefix + "/") == expected
    for name in names:
        assert s3.read(f"{prefix}/{name}.tar") == (local / f"{name}.tar").read_bytes(), name
        assert json.loads(s3.read(f"{prefix}/{name}.json")) == json.loads((local / f"{name}.json").read_text())
    assert s3.read(f"{prefix}/train-manifest.jsonl") == (local / "train-manifest.jsonl").read_bytes()
    assert json.loads(s3.read(f"{prefix}/classes.json")) == json.loads(dataset["classes"].read_text())
