"""A real Google Cloud Storage wire-protocol server on loopback: gcp-storage-emulator's HTTP
server (the JSON, upload and download APIs that gcsfs speaks), in memory, in a thread.

``gcs_server()`` starts one with a bucket and points gcsfs at it for this process and the
processes it starts: ``STORAGE_EMULATOR_HOST`` (which gcsfs and Google's own clients honour:
no credentials are used), and ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``, so that gcsfs does not
ask Google's gRPC control plane for the bucket's layout (a request beyond this machine). The
objects are read back with plain HTTP, not through gcsfs (the client under test).
"""

from __future__ import annotations

import contextlib
import json
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Iterator

import needs
import processes


@dataclass
class GcsServer:
    endpoint: str
    bucket: str

    def url(self, *parts: str) -> str:
        return "/".join([f"gs://{self.bucket}", *parts])

    def keys(self, prefix: str = "") -> list[str]:
        """Object names under ``prefix``, sorted (every page of the listing)."""
        names, token = [], ""
        while True:
            query = urllib.parse.urlencode({"prefix": prefix, **({"pageToken": token} if token else {})})
            with urllib.request.urlopen(f"{self.endpoint}/storage/v1/b/{self.bucket}/o?{query}", timeout=30) as r:
                page = json.load(r)
            names += [item["name"] for item in page.get("items", [])]
            token = page.get("nextPageToken", "")
            if not token:
                return sorted(names)

    def read(self, key: str) -> bytes:
        name = urllib.parse.quote(key, safe="")
        with urllib.request.urlopen(f"{self.endpoint}/download/storage/v1/b/{self.bucket}/o/{name}?alt=media",
                                    timeout=30) as r:
            return r.read()


@contextlib.contextmanager
def gcs_server(bucket: str = "mvmae") -> Iterator[GcsServer]:
    """A loopback GCS server with ``bucket``, the variables pointing gcsfs at it meanwhile."""
    emulator = needs.extra("gcp_storage_emulator.server")
    server = emulator.create_server("127.0.0.1", 0, in_memory=True, default_bucket=bucket)
    server.start()
    host, port = server._api._httpd.server_address  # the port the system chose
    env = {"STORAGE_EMULATOR_HOST": f"http://{host}:{port}",
           "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}  # read when gcsfs is imported
    try:
        with processes.environment(env):
            gcsfs = needs.extra("gcsfs")
            assert gcsfs.GCSFileSystem.__name__ == "GCSFileSystem", \
                "gcsfs was imported before GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false: it would ask Google for layouts"
            gcsfs.GCSFileSystem.clear_instance_cache()  # a cached client would reach an older server
            yield GcsServer(env["STORAGE_EMULATOR_HOST"], bucket)
            gcsfs.GCSFileSystem.clear_instance_cache()
    finally:
        server.stop()
