// The AWS SDK for Go (v1) as a container's program uses it: the session's default credential
// chain (which ends in the EC2 role provider), the SDK's metadata client for the region, and
// STS GetCallerIdentity signed with those credentials.
//
// Run by tests/tests/sdk_clients.rs inside a container's network namespace; see
// tests/sdk-clients/README.md for the protocol (one JSON line per phase on stdout, a line on
// stdin between the phases).
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/aws/credentials"
	"github.com/aws/aws-sdk-go/aws/ec2metadata"
	"github.com/aws/aws-sdk-go/aws/session"
	"github.com/aws/aws-sdk-go/service/sts"
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
	fmt.Fprintf(os.Stderr, "go-v1: "+format+"\n", args...)
	os.Exit(1)
}

func phase(name string, sess *session.Session, creds *credentials.Credentials, md *ec2metadata.EC2Metadata) {
	region, err := md.Region()
	if err != nil {
		fail("%s: region from the metadata service: %v", name, err)
	}
	value, err := creds.Get()
	if err != nil {
		fail("%s: credentials from the default chain: %v", name, err)
	}
	client := sts.New(sess, aws.NewConfig().
		WithRegion(region).
		WithEndpoint(os.Getenv("MP_STS_ENDPOINT")).
		WithMaxRetries(0))
	out, err := client.GetCallerIdentity(&sts.GetCallerIdentityInput{})
	if err != nil {
		fail("%s: GetCallerIdentity: %v", name, err)
	}
	line, err := json.Marshal(report{
		Phase:  name,
		Region: region,
		Credentials: []identity{{
			Provider:    "session default chain",
			Source:      value.ProviderName,
			Arn:         aws.StringValue(out.Arn),
			AccessKeyID: value.AccessKeyID,
		}},
	})
	if err != nil {
		fail("%s: %v", name, err)
	}
	fmt.Println(string(line))
}

func main() {
	if os.Getenv("MP_STS_ENDPOINT") == "" {
		fail("MP_STS_ENDPOINT is not set")
	}
	sess, err := session.NewSession()
	if err != nil {
		fail("session: %v", err)
	}
	creds := sess.Config.Credentials
	md := ec2metadata.New(sess)

	phase("first", sess, creds, md)
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		fail("waiting for the second phase: %v", err)
	}
	// The same session and metadata client: the credentials are fetched again through the
	// same provider, whose metadata client still holds the token it got in the first phase.
	creds.Expire()
	phase("second", sess, creds, md)
}
