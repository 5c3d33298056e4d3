// The AWS SDK for Go v2 as a container's program uses it: LoadDefaultConfig with the region
// from the metadata service (WithEC2IMDSRegion) and the default credential chain (which ends
// in ec2rolecreds behind a CredentialsCache), and STS GetCallerIdentity signed with those
// credentials.
//
// Run by tests/tests/sdk_clients.rs inside a container's network namespace; see
// tests/sdk-clients/README.md for the protocol (one JSON line per phase on stdout, a line on
// stdin between the phases).
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/sts"
)

type identity struct {
	Provider    string `json:"provider"`
	Source      string `json:"source"`
	Arn         string `json:"arn"`
	AccessKeyID string `json:"access_key_id"`
}

type report struct {
	Phase       string     `json:"phase"`
	Region      string     `json:"region"`
	Credentials []identity `json:"credentials"`
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "go-v2: "+format+"\n", args...)
	os.Exit(1)
}

func phase(ctx context.Context, name string, cfg aws.Config, md *imds.Client) {
	out, err := md.GetRegion(ctx, &imds.GetRegionInput{})
	if err != nil {
		fail("%s: region from the metadata service: %v", name, err)
	}
	region := out.Region
	if name == "first" && region != cfg.Region {
		fail("first: the metadata client read region %q, LoadDefaultConfig %q", region, cfg.Region)
	}
	value, err := cfg.Credentials.Retrieve(ctx)
	if err != nil {
		fail("%s: credentials from the default chain: %v", name, err)
	}
	client := sts.NewFromConfig(cfg, func(o *sts.Options) {
		o.Region = region
		o.EndpointResolver = sts.EndpointResolverFromURL(os.Getenv("MP_STS_ENDPOINT"))
		o.RetryMaxAttempts = 1
	})
	id, err := client.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		fail("%s: GetCallerIdentity: %v", name, err)
	}
	line, err := json.Marshal(report{
		Phase:  name,
		Region: region,
		Credentials: []identity{{
			Provider:    "LoadDefaultConfig",
			Source:      value.Source,
			Arn:         aws.ToString(id.Arn),
			AccessKeyID: value.AccessKeyID,
		}},
	})
	if err != nil {
		fail("%s: %v", name, err)
	}
	fmt.Println(string(line))
}

func main() {
	ctx := context.Background()
	if os.Getenv("MP_STS_ENDPOINT") == "" {
		fail("MP_STS_ENDPOINT is not set")
	}
	cfg, err := config.LoadDefaultConfig(ctx, config.WithEC2IMDSRegion())
	if err != nil {
		fail("LoadDefaultConfig: %v", err)
	}
	if cfg.Region == "" {
		fail("LoadDefaultConfig found no region")
	}
	cache, ok := cfg.Credentials.(*aws.CredentialsCache)
	if !ok {
		fail("the default credentials are a %T, not a CredentialsCache", cfg.Credentials)
	}
	// The SDK's metadata client, used in both phases: it holds its token in between.
	md := imds.NewFromConfig(cfg)

	phase(ctx, "first", cfg, md)
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		fail("waiting for the second phase: %v", err)
	}
	// The same config: the cache is emptied, so the credentials are fetched again through the
	// same ec2rolecreds provider, whose metadata client still holds its token.
	cache.Invalidate()
	phase(ctx, "second", cfg, md)
}
