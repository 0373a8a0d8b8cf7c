//! Connection to the operator: the `--operator` URL shared by every client command.

use anyhow::Context;
use tessera_proto::v1::operator_client::OperatorClient;
use tonic::transport::Channel;

/// Connects to the operator at `url` (e.g. `http://127.0.0.1:7100`).
///
/// Errors: the operator cannot be reached (the URL is named in the message).
pub async fn connect(url: &str) -> anyhow::Result<OperatorClient<Channel>> {
    OperatorClient::connect(url.to_string())
        .await
        .with_context(|| format!("connecting to the operator at {url}"))
}

/// Where the operator is: flattened into every client command.
#[derive(Debug, clap::Args)]
pub struct Conn {
    /// Operator URL.
    #[arg(long, global = true, default_value = "http://127.0.0.1:7100")]
    pub operator: String,
}

impl Conn {
    /// Connects to the operator this command names.
    pub async fn connect(&self) -> anyhow::Result<OperatorClient<Channel>> {
        connect(&self.operator).await
    }
}
