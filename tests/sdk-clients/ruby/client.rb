# The AWS SDK for Ruby (aws-sdk-core) as a container's program uses it: the default credential
# provider chain (which ends in InstanceProfileCredentials), the SDK's metadata client
# (Aws::EC2Metadata) for the region, and STS GetCallerIdentity signed with those credentials.
#
# The chain's metadata client connects to port 80 whatever AWS_EC2_METADATA_SERVICE_ENDPOINT
# says, so it reaches the agent only through interception. The SDK's region chain does not
# read the metadata service; Aws::EC2Metadata is its client for reading it by hand.
#
# Run by tests/tests/sdk_clients.rs inside a container's network namespace; see
# tests/sdk-clients/README.md for the protocol (one JSON line per phase on stdout, a line on
# stdin between the phases).

require 'json'
require 'aws-sdk-core'

def fail!(message)
  warn "ruby: #{message}"
  exit 1
end

def phase(name, credentials, metadata)
  region = metadata.get('/latest/meta-data/placement/region')
  sts = Aws::STS::Client.new(
    region: region,
    endpoint: ENV.fetch('MP_STS_ENDPOINT'),
    credentials: credentials,
    retry_limit: 0
  )
  arn = sts.get_caller_identity.arn
  line = {
    phase: name,
    region: region,
    credentials: [{
      provider: 'CredentialProviderChain',
      source: credentials.class.name,
      arn: arn,
      access_key_id: credentials.credentials.access_key_id
    }]
  }
  $stdout.puts(JSON.generate(line))
  $stdout.flush
rescue StandardError => e
  fail!("#{name}: #{e.class}: #{e.message}")
end

fail!('MP_STS_ENDPOINT is not set') if ENV.fetch('MP_STS_ENDPOINT', '').empty?
credentials = Aws::CredentialProviderChain.new.resolve
fail!('the default chain found no credentials') if credentials.nil?
metadata = Aws::EC2Metadata.new

phase('first', credentials, metadata)
fail!('stdin closed before the second phase') if $stdin.gets.nil?
# The same objects: the credentials are fetched again by the same provider, which still holds
# the token it got in the first phase (so does the metadata client).
credentials.refresh!
phase('second', credentials, metadata)
