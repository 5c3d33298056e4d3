// The AWS SDK for Go v2 against the container credentials endpoint, as a container's program
// uses it: LoadDefaultConfig, whose default chain asks the endpoint (endpointcreds) when
// AWS_CONTAINER_CREDENTIALS_RELATIVE_URI or _FULL_URI is set, and STS GetCallerIdentity
// signed with those credentials.
//
// Run by tests/tests/container_endpoint.rs inside a container's network namespace and cgroup;
// one JSON line on stdout (see tests/sdk-clients/README.md).
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sts"
)

type identity struct {
	Provider    string `json:"provider"`
	Source      string `json:"source"`
	Arn         string `json:"arn"`
	AccessKeyID string `json:"access_key_id"`
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "go-v2: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	endpoint := os.Getenv("MP_STS_ENDPOINT")
	if endpoint == "" {
		fail("MP_STS_ENDPOINT is not set")
	}
	ctx := context.Background()
	cfg, err := config.LoadDefaultConfig(ctx, config.WithRegion("us-east-1"))
	if err != nil {
		fail("LoadDefaultConfig: %v", err)
	}
	value, err := cfg.Credentials.Retrieve(ctx)
	if err != nil {
		fail("credentials from the default chain: %v", err)
	}
	client := sts.NewFromConfig(cfg, func(o *sts.Options) {
		o.EndpointResolver = sts.EndpointResolverFromURL(endpoint)
		o.RetryMaxAttempts = 1
	})
	id, err := client.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		fail("GetCallerIdentity: %v", err)
	}
	line, err := json.Marshal(map[string][]identity{"credentials": {{
		Provider:    "LoadDefaultConfig",
		Source:      value.Source,
		Arn:         aws.ToString(id.Arn),
		AccessKeyID: value.AccessKeyID,
	}}})
	if err != nil {
		fail("%v", err)
	}
	fmt.Println(string(line))
}
