// The AWS SDK for JavaScript v3 as a container's program uses it: fromInstanceMetadata (the
// metadata service alone) and fromNodeProviderChain (the default chain, which ends in it),
// each proved with STS GetCallerIdentity.
//
// The v3 SDK reads no region from the metadata service (its region comes from the environment
// or the config file only), so STS is signed for a fixed region and "region" is null.
//
// Run by tests/tests/sdk_clients.rs inside a container's network namespace, with NODE_PATH
// naming the node_modules that scripts/test-env.sh installs; see tests/sdk-clients/README.md
// for the protocol (one JSON line per phase on stdout, a line on stdin between the phases).
"use strict";

const readline = require("node:readline");
const { fromInstanceMetadata, fromNodeProviderChain } = require("@aws-sdk/credential-providers");
const { STSClient, GetCallerIdentityCommand } = require("@aws-sdk/client-sts");

const SIGNING_REGION = "us-east-1";
// The SDK's default is 1 s per metadata request; the agent's first answer for a role waits
// for STS.
const IMDS_TIMEOUT_MS = 5000;

async function identity(name, provider, options) {
  const credentials = await provider(options);
  const sts = new STSClient({
    region: SIGNING_REGION,
    endpoint: process.env.MP_STS_ENDPOINT,
    credentials,
    maxAttempts: 1,
  });
  const out = await sts.send(new GetCallerIdentityCommand({}));
  return { provider: name, source: name, arn: out.Arn, access_key_id: credentials.accessKeyId };
}

async function phase(name, providers, options) {
  const credentials = [];
  for (const [providerName, provider] of providers) {
    credentials.push(await identity(providerName, provider, options));
  }
  process.stdout.write(JSON.stringify({ phase: name, region: null, credentials }) + "\n");
}

function nextLine() {
  return new Promise((resolve, reject) => {
    const rl = readline.createInterface({ input: process.stdin });
    rl.once("line", (line) => {
      resolve(line);
      rl.close();
    });
    rl.once("close", () => reject(new Error("stdin closed before the second phase")));
  });
}

async function main() {
  if (!process.env.MP_STS_ENDPOINT) {
    throw new Error("MP_STS_ENDPOINT is not set");
  }
  const providers = [
    ["fromInstanceMetadata", fromInstanceMetadata({ timeout: IMDS_TIMEOUT_MS })],
    ["fromNodeProviderChain", fromNodeProviderChain({ timeout: IMDS_TIMEOUT_MS })],
  ];
  await phase("first", providers, undefined);
  await nextLine();
  // The same provider objects. fromInstanceMetadata fetches on every call; the chain caches
  // until expiry, so it is asked to refresh.
  await phase("second", providers, { forceRefresh: true });
}

main().catch((err) => {
  process.stderr.write(`js-v3: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
