//! Connection to the operator: the `--operator` URL and the caller's token, shared by every
//! client command. The token goes in the `x-auth-token` metadata of every call (the T/AI
//! 123.12 header `X-Auth-Token`). Sources, first found wins: `--token`, the `TESSERA_TOKEN`
//! environment variable, `--token-file`.

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::Context;
use tessera_proto::v1::operator_client::OperatorClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A client of the operator whose calls carry the caller's token (if any).
pub type Client = OperatorClient<InterceptedService<Channel, TokenHeader>>;

/// Adds the token to every call.
#[derive(Clone, Default)]
pub struct TokenHeader(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for TokenHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "TokenHeader(<redacted>)"
        } else {
            "TokenHeader(none)"
        })
    }
}

impl Interceptor for TokenHeader {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut()
                .insert(tessera_gateway::TOKEN_METADATA, v.clone());
        }
        Ok(req)
    }
}

/// A token given on the command line or in the environment; `Debug` never shows it.
#[derive(Clone)]
pub struct TokenArg(String);

impl std::fmt::Debug for TokenArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenArg(<redacted>)")
    }
}

impl FromStr for TokenArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(TokenArg(s.trim().to_owned()))
    }
}

/// Connects to the operator at `url` (e.g. `http://127.0.0.1:7100`), sending `token` (if
/// any) with every call.
///
/// Errors: the operator cannot be reached (the URL is named in the message); the token holds
/// characters a header cannot carry.
pub async fn connect_with(url: &str, token: Option<&str>) -> anyhow::Result<Client> {
    let header = match token {
        Some(t) => Some(
            MetadataValue::try_from(t)
                .map_err(|_| anyhow::anyhow!("the token holds characters a header cannot carry"))?,
        ),
        None => None,
    };
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .with_context(|| format!("operator URL {url:?}"))?
        .connect()
        .await
        .with_context(|| format!("connecting to the operator at {url}"))?;
    Ok(OperatorClient::with_interceptor(
        channel,
        TokenHeader(header),
    ))
}

/// Connects to the operator at `url` without a token.
///
/// Errors: as [`connect_with`].
pub async fn connect(url: &str) -> anyhow::Result<Client> {
    connect_with(url, None).await
}

/// Where the operator is and who is calling: flattened into every client command.
#[derive(Debug, clap::Args)]
pub struct Conn {
    /// Operator URL.
    #[arg(long, global = true, default_value = "http://127.0.0.1:7100")]
    pub operator: String,
    /// The caller's API token (shown once by `token create`, or the operator's admin token
    /// from DATA_DIR/admin.token). Prefer TESSERA_TOKEN or --token-file: a command line is
    /// visible to other local users.
    #[arg(long, global = true, env = "TESSERA_TOKEN", hide_env_values = true)]
    pub token: Option<TokenArg>,
    /// A file holding the caller's API token (used when neither --token nor TESSERA_TOKEN is
    /// given).
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

impl Conn {
    /// The token this command carries, by precedence.
    ///
    /// Errors: the token file cannot be read.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        if let Some(t) = &self.token {
            return Ok(Some(t.0.clone()));
        }
        match &self.token_file {
            Some(path) => std::fs::read_to_string(path)
                .map(|t| Some(t.trim().to_owned()))
                .with_context(|| format!("reading the token file {}", path.display())),
            None => Ok(None),
        }
    }

    /// Connects to the operator this command names, with its token.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        connect_with(&self.operator, self.token()?.as_deref()).await
    }
}
