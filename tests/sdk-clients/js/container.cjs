// The AWS SDK for JavaScript v3 against the container credentials endpoint, as a container's
// program uses it: fromContainerMetadata (the endpoint alone) and fromNodeProviderChain (the
// default chain, which asks it first when AWS_CONTAINER_CREDENTIALS_RELATIVE_URI is set),
// each proved with STS GetCallerIdentity.
//
// Run by tests/tests/container_endpoint.rs inside a container's network namespace and cgroup,
// with NODE_PATH naming the node_modules that scripts/test-env.sh installs; one JSON line on
// stdout (see tests/sdk-clients/README.md).
"use strict";

const { fromContainerMetadata, fromNodeProviderChain } = require("@aws-sdk/credential-providers");
const { STSClient, GetCallerIdentityCommand } = require("@aws-sdk/client-sts");

// The SDK's default is 1 s; the agent's first answer for a role waits for STS.
const TIMEOUT_MS = 5000;

async function identity(name, provider) {
  const credentials = await provider();
  const sts = new STSClient({
    region: "us-east-1",
    endpoint: process.env.MP_STS_ENDPOINT,
    credentials,
    maxAttempts: 1,
  });
  const out = await sts.send(new GetCallerIdentityCommand({}));
  return { provider: name, source: name, arn: out.Arn, access_key_id: credentials.accessKeyId };
}

async function main() {
  if (!process.env.MP_STS_ENDPOINT) {
    throw new Error("MP_STS_ENDPOINT is not set");
  }
  const credentials = [
    await identity("fromContainerMetadata", fromContainerMetadata({ timeout: TIMEOUT_MS })),
    await identity("fromNodeProviderChain", fromNodeProviderChain({ timeout: TIMEOUT_MS })),
  ];
  process.stdout.write(JSON.stringify({ credentials }) + "\n");
}

main().catch((err) => {
  process.stderr.write(`js-v3: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
