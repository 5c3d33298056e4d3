"""botocore as a container's program uses it: the session's default credential chain (which
ends in InstanceMetadataProvider), botocore's IMDS region provider, and STS GetCallerIdentity
signed with those credentials.

Run by tests/tests/sdk_clients.rs inside a container's network namespace, with the Python of
the moto venv (which has botocore); see tests/sdk-clients/README.md for the protocol (one
JSON line per phase on stdout, a line on stdin between the phases).
"""

import json
import os
import sys

import botocore.config
import botocore.session
from botocore.utils import IMDSRegionProvider


def fail(message):
    sys.stderr.write(f"botocore: {message}\n")
    sys.exit(1)


def phase(name, session, credentials, region_provider):
    region = region_provider.provide()
    if not region:
        fail(f"{name}: no region from the metadata service")
    frozen = credentials.get_frozen_credentials()
    sts = session.create_client(
        "sts",
        region_name=region,
        endpoint_url=os.environ["MP_STS_ENDPOINT"],
        aws_access_key_id=frozen.access_key,
        aws_secret_access_key=frozen.secret_key,
        aws_session_token=frozen.token,
        config=botocore.config.Config(retries={"total_max_attempts": 1}),
    )
    arn = sts.get_caller_identity()["Arn"]
    line = {
        "phase": name,
        "region": region,
        "credentials": [
            {
                "provider": "session default chain",
                "source": credentials.method,
                "arn": arn,
                "access_key_id": frozen.access_key,
            }
        ],
    }
    print(json.dumps(line), flush=True)


def main():
    if not os.environ.get("MP_STS_ENDPOINT"):
        fail("MP_STS_ENDPOINT is not set")
    session = botocore.session.get_session()
    credentials = session.get_credentials()
    if credentials is None:
        fail("the default chain found no credentials")
    region_provider = IMDSRegionProvider(session)

    try:
        phase("first", session, credentials, region_provider)
        if not sys.stdin.readline():
            fail("stdin closed before the second phase")
        # The chain's own metadata provider, asked again (its credentials would otherwise be
        # used until shortly before they expire).
        provider = session.get_component("credential_provider").get_provider("iam-role")
        fresh = provider.load()
        if fresh is None:
            fail("second: the metadata provider found no credentials")
        phase("second", session, fresh, region_provider)
    except Exception as e:  # noqa: BLE001 - any failure is the test's answer
        fail(f"{type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
