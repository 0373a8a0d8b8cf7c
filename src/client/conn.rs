//! Connection to the operator: the `--operator` URL and the caller's token, shared by every
//! client command. The token goes in the `x-auth-token` metadata of every call (the T/AI
//! 123.12 header `X-Auth-Token`). Sources, first found wins: `--token`, the `TESSERA_TOKEN`
//! environment variable, `--token-file`, then a profile of the client configuration file.
//!
//! The configuration file is `$TESSERA_CLIENT_CONFIG`, else
//! `$XDG_CONFIG_HOME/tessera/client.toml`, else `~/.config/tessera/client.toml`:
//!
//! ```toml
//! [profiles.default]            # used when no --profile (or TESSERA_PROFILE) is given
//! operator = "https://tessera.example.com:7100"
//! ca_file = "/home/alice/.tessera/operator-ca.pem"
//! token_file = "/home/alice/.tessera/alice.token"
//!
//! [profiles.admin]
//! token_file = "/srv/tessera/operator/admin.token"
//! ```
//!
//! The link is TLS: the operator's certificate must chain to its CA (`ca_file`, `--ca-file` or
//! `TESSERA_CA_FILE`; the operator writes `DATA_DIR/ca.pem`). A plain `http://` URL is refused
//! unless `--insecure-plaintext` is given (tests only).
//!
//! File names in a profile are relative to the configuration file's directory.
//!
//! A profile's `operator` is used when `--operator` is not given; its token (`token_file`,
//! or `token`, discouraged: the file may be read by others) when no other source gives one.

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::Context;
use tessera_proto::v1::operator_client::OperatorClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A client of the operator whose calls carry the caller's token (if any).
pub type Client = OperatorClient<InterceptedService<Channel, TokenHeader>>;

/// A client of the operator's `Trade` service whose calls carry the caller's token.
pub type TradeClient =
    tessera_proto::v1::trade_client::TradeClient<InterceptedService<Channel, TokenHeader>>;

pub use tessera_proto::TokenHeader;

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

/// Where the operator is and how the link to it is secured.
#[derive(Debug, Clone)]
pub struct OperatorAddr {
    /// `https://host:port` (or `http://` with `insecure_plaintext`).
    pub url: String,
    /// The operator's CA certificate (PEM), which its TLS certificate must chain to.
    pub ca_pem: Option<String>,
    /// Allow an `http://` URL: plain TCP, the token in clear. For tests.
    pub insecure_plaintext: bool,
}

/// Connects to the operator at `addr`, sending `token` (if any) with every call.
///
/// Errors: the URL is not usable (plain `http` without the insecure option, `https` without
/// the CA: `tessera_proto::ChannelError`); the operator cannot be reached or its certificate
/// does not chain to the CA (the URL is named in the message); the token holds characters a
/// header cannot carry.
pub async fn connect_with(addr: &OperatorAddr, token: Option<&str>) -> anyhow::Result<Client> {
    let header = match token {
        Some(t) => TokenHeader::new(t)?,
        None => TokenHeader::none(),
    };
    let url = &addr.url;
    let endpoint =
        tessera_proto::operator_endpoint(url, addr.ca_pem.as_deref(), addr.insecure_plaintext)?;
    let channel = tessera_proto::connect(endpoint, url).await?;
    Ok(OperatorClient::with_interceptor(channel, header))
}

/// Connects to the `Trade` service of the operator at `addr`, sending `token` (if any).
///
/// Errors: as [`connect_with`].
pub async fn connect_trade_with(
    addr: &OperatorAddr,
    token: Option<&str>,
) -> anyhow::Result<TradeClient> {
    let header = match token {
        Some(t) => TokenHeader::new(t)?,
        None => TokenHeader::none(),
    };
    let endpoint = tessera_proto::operator_endpoint(
        &addr.url,
        addr.ca_pem.as_deref(),
        addr.insecure_plaintext,
    )?;
    let channel = tessera_proto::connect(endpoint, &addr.url).await?;
    Ok(tessera_proto::v1::trade_client::TradeClient::with_interceptor(channel, header))
}

/// The operator URL when neither `--operator` nor a profile names one.
pub const DEFAULT_OPERATOR: &str = "https://127.0.0.1:7100";

/// The CA file used when none is given and it exists: that of an operator started with the
/// default data directory in the current directory.
pub const DEFAULT_CA_FILE: &str = ".tessera/operator/ca.pem";

/// Longest CA file read (a certificate is about 600 bytes of PEM; room for a chain).
pub const CA_FILE_BYTES_MAX: u64 = 64 * 1024;

/// Reads the operator's CA certificate file (PEM, at most [`CA_FILE_BYTES_MAX`] bytes).
///
/// Errors: the file cannot be read, is larger, is not UTF-8 or holds no PEM certificate.
pub fn read_ca_file(path: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(CA_FILE_BYTES_MAX + 1).read_to_end(&mut bytes))
        .with_context(|| format!("reading the CA file {}", path.display()))?;
    if bytes.len() as u64 > CA_FILE_BYTES_MAX {
        anyhow::bail!(
            "the CA file {} holds more than {CA_FILE_BYTES_MAX} bytes",
            path.display()
        );
    }
    let text = String::from_utf8(bytes)
        .ok()
        .filter(|t| t.contains("-----BEGIN CERTIFICATE-----"))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the CA file {} holds no PEM certificate (the operator writes DATA_DIR/ca.pem)",
                path.display()
            )
        })?;
    Ok(text)
}

/// One profile of the client configuration file. `Debug` never shows its token.
#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Profile {
    operator: Option<String>,
    ca_file: Option<PathBuf>,
    token_file: Option<PathBuf>,
    token: Option<String>,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("operator", &self.operator)
            .field("ca_file", &self.ca_file)
            .field("token_file", &self.token_file)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The client configuration file: `Debug` shows profiles through [`Profile`]'s redacted form.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientConfig {
    #[serde(default)]
    profiles: std::collections::BTreeMap<String, Profile>,
}

/// The client configuration file's path, if the environment names a home for it.
fn config_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TESSERA_CLIENT_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("tessera").join("client.toml"))
}

/// The named profile (`None`: the `default` profile if the file has one).
///
/// Errors: a profile was named but the file or the profile does not exist; the file does not
/// parse.
fn load_profile(name: Option<&str>) -> anyhow::Result<Option<Profile>> {
    let path = match config_path() {
        Some(p) if p.exists() => p,
        Some(p) => {
            return match name {
                Some(n) => Err(anyhow::anyhow!(
                    "profile {n:?}: the client configuration file {} does not exist",
                    p.display()
                )),
                None => Ok(None),
            };
        }
        None if name.is_some() => {
            anyhow::bail!("profile given, but no HOME or TESSERA_CLIENT_CONFIG to find it in")
        }
        None => return Ok(None),
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the client configuration {}", path.display()))?;
    let mut config: ClientConfig = toml::from_str(&text)
        .with_context(|| format!("parsing the client configuration {}", path.display()))?;
    // Relative file names in a profile are relative to the configuration file.
    if let Some(dir) = path.parent() {
        for profile in config.profiles.values_mut() {
            for file in [&mut profile.ca_file, &mut profile.token_file]
                .into_iter()
                .flatten()
            {
                if file.is_relative() {
                    *file = dir.join(&*file);
                }
            }
        }
    }
    match name {
        Some(n) => config.profiles.remove(n).map(Some).ok_or_else(|| {
            anyhow::anyhow!(
                "no profile {n:?} in {} (its [profiles.*] tables)",
                path.display()
            )
        }),
        None => Ok(config.profiles.remove("default")),
    }
}

/// Where the operator is and who is calling: flattened into every client command.
#[derive(Debug, clap::Args)]
pub struct Conn {
    /// Operator URL [default: the profile's, else https://127.0.0.1:7100].
    #[arg(long, global = true, env = "TESSERA_OPERATOR")]
    pub operator: Option<String>,
    /// A profile of the client configuration file (operator URL, CA file and token).
    #[arg(long, global = true, env = "TESSERA_PROFILE")]
    pub profile: Option<String>,
    /// The caller's API token (shown once by `token create`, or the operator's admin token
    /// from DATA_DIR/admin.token). Prefer TESSERA_TOKEN or --token-file: a command line is
    /// visible to other local users.
    #[arg(long, global = true, env = "TESSERA_TOKEN", hide_env_values = true)]
    pub token: Option<TokenArg>,
    /// A file holding the caller's API token (used when neither --token nor TESSERA_TOKEN is
    /// given).
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The operator's CA certificate, which its TLS certificate must chain to (the operator
    /// writes DATA_DIR/ca.pem) [default: the profile's, else .tessera/operator/ca.pem if it
    /// exists].
    #[arg(long, global = true, env = "TESSERA_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// INSECURE, for tests only: accept an http:// operator URL (plain TCP: the token and
    /// every answer cross in clear).
    #[arg(long, global = true, env = "TESSERA_INSECURE_PLAINTEXT", value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure_plaintext: bool,
}

/// Longest token file read (a token is 85 characters; the rest is room for whitespace).
pub const TOKEN_FILE_BYTES_MAX: u64 = 4096;

/// Reads a token file of at most [`TOKEN_FILE_BYTES_MAX`] bytes, trimmed.
///
/// Errors: the file cannot be read, is larger, is not UTF-8, or holds nothing.
pub fn read_token_file(path: &std::path::Path) -> anyhow::Result<String> {
    let token = read_small_file(path, "token")?;
    if token.is_empty() {
        anyhow::bail!("the token file {} is empty", path.display());
    }
    Ok(token)
}

/// Reads at most [`TOKEN_FILE_BYTES_MAX`] bytes of a small text file (a token, a key),
/// trimmed: never more, whatever the file is (a device, a pipe, a huge file).
///
/// Errors: the file cannot be read, holds more, or is not UTF-8.
pub fn read_small_file(path: &std::path::Path, what: &str) -> anyhow::Result<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(TOKEN_FILE_BYTES_MAX + 1).read_to_end(&mut bytes))
        .with_context(|| format!("reading the {what} file {}", path.display()))?;
    if bytes.len() as u64 > TOKEN_FILE_BYTES_MAX {
        anyhow::bail!(
            "the {what} file {} holds more than {TOKEN_FILE_BYTES_MAX} bytes: a token is 85 \
             characters, a key 64",
            path.display()
        );
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("the {what} file {} is not UTF-8 text", path.display()))?;
    Ok(text.trim().to_owned())
}

/// Checks that `text` has the form of a token of `kind` before it is sent anywhere.
///
/// Errors: names where the token came from and the form expected (never the text itself).
pub fn check_token_form(
    kind: tessera_auth::TokenKind,
    text: &str,
    source: &str,
) -> anyhow::Result<()> {
    if tessera_auth::Token::parse(kind, text).is_err() {
        anyhow::bail!(
            "the token from {source} is not a Tessera {} token (expected {}<16 hex digits>_<64 \
             hex digits>)",
            kind.as_str(),
            kind.prefix()
        );
    }
    Ok(())
}

impl Conn {
    /// The operator (URL, CA) and the token this command uses, by precedence.
    ///
    /// Errors: a token or CA file cannot be read; a named profile does not exist.
    pub fn resolve(&self) -> anyhow::Result<(OperatorAddr, Option<String>)> {
        // A profile named is always read (and must exist); the default one only when the
        // command line and environment leave something to fill.
        let complete = self.operator.is_some()
            && (self.token.is_some() || self.token_file.is_some())
            && self.ca_file.is_some();
        let profile = if complete && self.profile.is_none() {
            None
        } else {
            load_profile(self.profile.as_deref())?
        };
        let profile = profile.unwrap_or_default();
        let url = self
            .operator
            .clone()
            .or(profile.operator)
            .unwrap_or_else(|| DEFAULT_OPERATOR.to_owned());
        let ca_file = self.ca_file.clone().or(profile.ca_file).or_else(|| {
            let default = PathBuf::from(DEFAULT_CA_FILE);
            default.exists().then_some(default)
        });
        let ca_pem = match &ca_file {
            Some(path) if url.starts_with("https:") => Some(read_ca_file(path)?),
            _ => None,
        };
        let addr = OperatorAddr {
            url,
            ca_pem,
            insecure_plaintext: self.insecure_plaintext,
        };
        let (token, source) = if let Some(t) = &self.token {
            (Some(t.0.clone()), "--token or TESSERA_TOKEN".to_owned())
        } else if let Some(path) = &self.token_file {
            (Some(read_token_file(path)?), path.display().to_string())
        } else if let Some(path) = &profile.token_file {
            (Some(read_token_file(path)?), path.display().to_string())
        } else {
            (profile.token, "the profile".to_owned())
        };
        if let Some(t) = &token {
            check_token_form(tessera_auth::TokenKind::Api, t, &source)?;
        }
        Ok((addr, token))
    }

    /// Connects to the operator this command names, with its token.
    ///
    /// Errors: as [`Conn::resolve`]; the operator cannot be reached.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let (addr, token) = self.resolve()?;
        connect_with(&addr, token.as_deref()).await
    }

    /// Connects to the operator's `Trade` service (the T/AI 123.12 trade flow), with the
    /// token.
    ///
    /// Errors: as [`Conn::connect`].
    pub async fn connect_trade(&self) -> anyhow::Result<TradeClient> {
        let (addr, token) = self.resolve()?;
        connect_trade_with(&addr, token.as_deref()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_token_shows_in_debug_output() {
        let p: Profile = toml::from_str("token = \"tsk_secret_value\"\noperator = \"http://x\"")
            .expect("profile");
        assert!(!format!("{p:?}").contains("secret_value"), "{p:?}");
        let t: TokenArg = "tsk_secret_value".parse().expect("token");
        assert!(!format!("{t:?}").contains("secret_value"));
        let h = TokenHeader::new("tsk_secret_value").expect("ascii");
        assert!(!format!("{h:?}").contains("secret_value"));
    }
}
