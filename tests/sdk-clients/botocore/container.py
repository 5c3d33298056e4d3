"""botocore against the container credentials endpoint, as a container's program uses it:
the session's default chain (which asks the endpoint first when
AWS_CONTAINER_CREDENTIALS_RELATIVE_URI or _FULL_URI is set) and ContainerProvider alone, each
proved with STS GetCallerIdentity.

Run by tests/tests/container_endpoint.rs inside a container's network namespace and cgroup,
with the Python of the moto venv; one JSON line on stdout (see tests/sdk-clients/README.md).
"""

import json
import os
import sys

import botocore.config
import botocore.session
from botocore.credentials import ContainerProvider


def fail(message):
    sys.stderr.write(f"botocore: {message}\n")
    sys.exit(1)


def identity(session, provider, credentials):
    frozen = credentials.get_frozen_credentials()
    sts = session.create_client(
        "sts",
        region_name="us-east-1",
        endpoint_url=os.environ["MP_STS_ENDPOINT"],
        aws_access_key_id=frozen.access_key,
        aws_secret_access_key=frozen.secret_key,
        aws_session_token=frozen.token,
        config=botocore.config.Config(retries={"total_max_attempts": 1}),
    )
    return {
        "provider": provider,
        "source": credentials.method,
        "arn": sts.get_caller_identity()["Arn"],
        "access_key_id": frozen.access_key,
    }


def main():
    if not os.environ.get("MP_STS_ENDPOINT"):
        fail("MP_STS_ENDPOINT is not set")
    session = botocore.session.get_session()
    try:
        chain = session.get_credentials()
        if chain is None:
            fail("the default chain found no credentials")
        alone = ContainerProvider().load()
        if alone is None:
            fail("ContainerProvider found no credentials (no container URI in the environment?)")
        credentials = [
            identity(session, "session default chain", chain),
            identity(session, "ContainerProvider", alone),
        ]
    except Exception as e:  # noqa: BLE001 - any failure is the test's answer
        fail(f"{type(e).__name__}: {e}")
    print(json.dumps({"credentials": credentials}), flush=True)


if __name__ == "__main__":
    main()
