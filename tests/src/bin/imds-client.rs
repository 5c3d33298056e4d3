//! The AWS SDK for Rust's own IMDS credentials provider, as a container's SDK would run it:
//! `PUT /latest/api/token`, then the credential routes with the token. Run inside a
//! container's network namespace (and cgroup) by the tests; prints the credentials as JSON on
//! stdout, or the error on stderr with exit code 1.

use aws_config::imds::credentials::ImdsCredentialsProvider;
use aws_credential_types::provider::ProvideCredentials;

fn main() {
    let endpoint = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://169.254.169.254".to_string());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = runtime.block_on(async {
        let client = aws_config::imds::Client::builder()
            .endpoint(endpoint)
            .map_err(|e| e.to_string())?
            .build();
        let provider = ImdsCredentialsProvider::builder()
            .imds_client(client)
            .build();
        provider.provide_credentials().await.map_err(|e| {
            format!(
                "{}",
                aws_smithy_types::error::display::DisplayErrorContext(&e)
            )
        })
    });
    match result {
        Ok(c) => {
            println!(
                "{}",
                serde_json::json!({
                    "AccessKeyId": c.access_key_id(),
                    "SecretAccessKey": c.secret_access_key(),
                    "Token": c.session_token(),
                })
            );
        }
        Err(e) => {
            eprintln!("imds-client: {e}");
            std::process::exit(1);
        }
    }
}
