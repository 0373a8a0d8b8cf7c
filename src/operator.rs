//! Starting the operator node: store, scheduler, worker monitor and the gRPC server.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rand::RngCore;
use serde::Deserialize;
use tessera_core::ticket::TicketSigner;
use tessera_core::{Clock, SystemClock};
use tessera_gateway::OperatorService;
use tessera_scheduler::{Scheduler, SchedulerConfig};
use tessera_store::Store;

/// Operator settings (TOML file, overridden by flags).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OperatorConfig {
    /// gRPC listen address.
    pub listen: String,
    /// Data directory: the SQLite store and the ticket key live here.
    pub data_dir: PathBuf,
    /// A worker silent this long is lost.
    pub heartbeat_timeout_ms: i64,
    /// Heartbeat interval asked of workers.
    pub heartbeat_interval_ms: u64,
    /// How long a resumable job whose run broke off waits to resume, in seconds (0: it fails
    /// at once); see `tessera_scheduler::resume`.
    pub resume_window_secs: u32,
    /// How long after a month's end its bills accept late charges (`None`: keep the stored
    /// setting, 72 hours on a new store).
    pub late_window_ms: Option<i64>,
    /// How often due bills are closed.
    pub bill_close_interval_ms: u64,
    /// The calendar zone of billing months and licence validity windows: `+HH:MM`, `UTC` or
    /// an IANA name (`tessera_core::civil`). Instants are stored in UTC whatever it is.
    pub time_zone: String,
    /// Which month's days divide a monthly price in an overdue make-up of a licence term
    /// (`tessera_accounting::subscription::DailyPriceBasis` names): `previous_term_month`
    /// (default, the manual's note under §1.4.5.1.2), `overdue_month_period`,
    /// `calendar_month_of_overdue` or `fixed_N`.
    pub daily_price_basis: String,
    /// Names (DNS names or IP addresses) the operator's TLS certificate carries besides
    /// `localhost`, `127.0.0.1`, `::1` and a specific listen address: the host names clients
    /// and workers use to reach it.
    pub tls_names: Vec<String>,
    /// Serve gRPC and HTTP over plain TCP instead of TLS: tokens cross in clear. For tests.
    pub insecure_plaintext: bool,
    /// The appraisal policy of workers' TEE evidence (JSON, `tessera_tee::AppraisalPolicy`);
    /// `None`: every attestation is refused, so no `tee` job is placed.
    pub tee_policy: Option<PathBuf>,
    /// Whether creating the admin account on a new data directory is said as a warning (the
    /// operator's user must fetch the token); a caller that reads the token itself (the
    /// admission benchmark) sets `false` and it is logged at INFO. Not a file key.
    #[serde(skip)]
    pub announce_admin_token: bool,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7100".into(),
            data_dir: PathBuf::from(".tessera/operator"),
            heartbeat_timeout_ms: 10_000,
            heartbeat_interval_ms: 2_000,
            resume_window_secs: 900,
            late_window_ms: None,
            bill_close_interval_ms: 60_000,
            time_zone: tessera_core::civil::Zone::DEFAULT_NAME.into(),
            daily_price_basis: tessera_accounting::subscription::DailyPriceBasis::default().name(),
            tls_names: Vec::new(),
            insecure_plaintext: false,
            tee_policy: None,
            announce_admin_token: true,
        }
    }
}

/// A running operator.
#[derive(Debug)]
pub struct OperatorHandle {
    /// Bound address.
    pub addr: SocketAddr,
    /// The scheduler (for in-process inspection).
    pub scheduler: Arc<Scheduler>,
    server: tokio::task::JoinHandle<()>,
    /// Whether the node serves TLS (else plain TCP, `--insecure-plaintext`).
    pub tls: bool,
    /// The data directory's lock, held as long as the handle (see [`crate::datadir`]).
    _lock: crate::datadir::DataDirLock,
}

impl OperatorHandle {
    /// The URL clients and workers use: `https://` (or `http://` when serving plain TCP).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
    /// Serves until the server stops or `stop` completes (a signal); then signs the audit
    /// chain's head, closes the store (SQLite folds its write-ahead log back into the database
    /// file) and releases the data directory.
    pub async fn serve_until(
        mut self,
        stop: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::select! {
            r = &mut self.server => {
                r.context("operator server task")?;
                return Ok(());
            }
            () = stop => {}
        }
        tracing::info!("shutting down: signing the audit head and closing the store");
        if let Err(e) = self.scheduler.audit().seal().await {
            tracing::warn!(error = %e, "could not sign the audit head at shutdown");
        }
        self.stop().await;
        tracing::info!("stopped");
        Ok(())
    }

    /// Stops the server.
    pub async fn stop(self) {
        self.server.abort();
        self.scheduler.store().close().await;
        drop(self._lock);
    }
}

/// Loads the node's key (tickets and audit checkpoints) from `dir/operator.key`; `None` if
/// there is none yet.
///
/// Errors: the file cannot be read, or does not hold 32 bytes of hex.
pub(crate) fn load_key(dir: &Path) -> anyhow::Result<Option<TicketSigner>> {
    let path = dir.join("operator.key");
    if !path.exists() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let bytes = hex::decode(text.trim()).context("operator.key is not hex")?;
    let seed: [u8; 32] = bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("operator.key must hold 32 bytes"))?;
    Ok(Some(TicketSigner::from_seed(&seed)))
}

/// Loads the ticket key from `dir/operator.key`, creating it (mode 0600) on first start.
fn load_or_create_key(dir: &Path) -> anyhow::Result<TicketSigner> {
    let path = dir.join("operator.key");
    if let Some(signer) = load_key(dir)? {
        narrow_to_owner(&path)?;
        return Ok(signer);
    }
    let signer = TicketSigner::generate(&mut rand::rngs::OsRng);
    let tmp = dir.join("operator.key.tmp");
    // A temporary file left by a start that died before the rename holds a key never used.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", tmp.display())),
    }
    let mut file = tessera_core::fs::create_private(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(hex::encode(*signer.dangerous_seed_bytes()).as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(file);
    std::fs::rename(&tmp, &path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(signer)
}

/// Refuses to start a new, empty store in a data directory that already holds a node's key
/// (`operator.key`) while its database is missing or empty: that node's accounts, licences,
/// ledger and audit chain would be replaced without a word (and `admin.token` with them).
/// Also refuses a database path that is not a regular file.
///
/// Errors: as said, with what to do.
fn refuse_a_lost_store(dir: &Path, db: &Path) -> anyhow::Result<()> {
    let len = match std::fs::metadata(db) {
        Ok(m) if !m.is_file() => anyhow::bail!(
            "the store {} is not a regular file; move it away (the operator keeps its database \
             in that file)",
            db.display()
        ),
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e).with_context(|| format!("reading {}", db.display())),
    };
    if len == 0 && dir.join("operator.key").exists() {
        let state = if db.exists() { "empty" } else { "missing" };
        anyhow::bail!(
            "the data directory {} holds an operator's key (operator.key) but its store {} is \
             {state}: starting would begin a new, empty store in place of that node's accounts, \
             licences, ledger and audit chain. Restore tessera.db (with tessera.db-wal if there \
             is one) from a backup, or give a new --data-dir to start a new node",
            dir.display(),
            db.display()
        );
    }
    Ok(())
}

/// Makes an existing key file readable by its owner only (0600), saying so when it was wider:
/// the key signs tickets and audit checkpoints.
fn narrow_to_owner(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("reading the mode of {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", mode & 0o777),
            "the key file was readable by others; narrowing it to 0600"
        );
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("narrowing {} to 0600", path.display()))?;
    }
    Ok(())
}

/// Locks the data directory (created 0700; a second operator on it is refused, see
/// [`crate::datadir`]), opens the store (files 0600), recovers unfinished jobs, and starts
/// serving.
///
/// The listen address is bound first, so that a start on an address in use fails before it
/// creates anything (the data directory, its lock, the store, the key).
///
/// Errors: the listen address cannot be bound; the data directory is in use by another
/// process or cannot be created; the store cannot be opened; the key file is unreadable.
pub async fn start(config: &OperatorConfig) -> anyhow::Result<OperatorHandle> {
    let listener = match tokio::net::TcpListener::bind(&config.listen).await {
        Ok(l) => l,
        Err(e) => {
            let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                " (is another process using it?)"
            } else {
                ""
            };
            return Err(e).with_context(|| {
                format!(
                    "cannot listen on {}{hint}; nothing was created in {}",
                    config.listen,
                    config.data_dir.display()
                )
            });
        }
    };
    // The TEE policy is read before anything is created: a bad file leaves no data directory.
    let tee_policy = match &config.tee_policy {
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("reading the TEE policy {}", path.display()))?;
            Some(
                tessera_tee::AppraisalPolicy::from_json(&bytes)
                    .with_context(|| format!("the TEE policy {}", path.display()))?,
            )
        }
        None => None,
    };
    if tee_policy.as_ref().is_some_and(|p| {
        p.sgx.is_none()
            && p.tdx.is_none()
            && p.sev_snp.is_none()
            && p.insecure_simulated_tee.is_none()
    }) {
        tracing::warn!(
            "the TEE policy has no section (sgx, tdx, sev_snp, insecure_simulated_tee): it \
             accepts no enclave, so no tee job can be placed"
        );
    }
    if let Some(p) = tee_policy
        .as_ref()
        .and_then(|p| p.insecure_simulated_tee.as_ref())
    {
        tracing::warn!(
            measurements = ?p.measurement,
            "the TEE policy accepts the insecure-simulated-tee mode: workers without an enclave \
             attest, and tee jobs under licences naming tee:insecure-simulated-tee run with no \
             protection (development only; remove the insecure_simulated_tee section in \
             production)"
        );
    }
    let lock = crate::datadir::lock(&config.data_dir)?;
    let zone: tessera_core::civil::Zone = config
        .time_zone
        .parse()
        .context("the operator's time zone")?;
    let db_path = config.data_dir.join("tessera.db");
    refuse_a_lost_store(&config.data_dir, &db_path)?;
    let store = Store::open(&db_path)
        .await
        .with_context(|| format!("opening the store {}", db_path.display()))?
        .with_zone(zone)
        .with_daily_price_basis(
            config
                .daily_price_basis
                .parse()
                .with_context(|| format!("daily price basis {:?}", config.daily_price_basis))?,
        );
    let signer = load_or_create_key(&config.data_dir)?;
    let mut tee_seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut tee_seed);
    let tee =
        tessera_scheduler::TeeService::new(&signer.dangerous_seed_bytes(), tee_policy, tee_seed);
    write_public_key(&config.data_dir, &signer.public_key_hex())?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    if let Some(w) = config.late_window_ms {
        store
            .set_late_window_ms(w, clock.now_ms())
            .await
            .context("setting the late window")?;
    }
    tokio::spawn(close_bills_loop(
        store.clone(),
        clock.clone(),
        config.bill_close_interval_ms.max(1_000),
    ));
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let scheduler = Scheduler::new(
        store,
        clock,
        signer,
        SchedulerConfig {
            heartbeat_timeout_ms: config.heartbeat_timeout_ms,
            heartbeat_interval_ms: config.heartbeat_interval_ms,
            resume_window_ms: i64::from(config.resume_window_secs) * 1000,
            ..SchedulerConfig::default()
        },
        seed,
    );
    // Before anything is appended: a store whose chain, checkpoints or ledger tables do not
    // verify is reported loudly (the node still starts, so that the operator can inspect it).
    match scheduler.audit().verify().await {
        Ok(r) if r.ok() => {
            tracing::info!(
                entries = r.entries,
                checkpoints = r.checkpoints,
                "audit chain verified"
            );
        }
        Ok(r) => tracing::error!(
            entries = r.entries,
            detail = %r.detail,
            "the store does NOT verify against its audit chain: it may have been tampered \
             with; run `tessera audit verify --checkpoints FILE` with an exported copy"
        ),
        Err(e) => tracing::error!(error = %e, "could not verify the audit chain at start"),
    }
    let ca = Arc::new(load_or_create_ca(&config.data_dir)?);
    scheduler.install_ca(ca.clone());
    scheduler.install_tee(tee);
    let keys = scheduler
        .load_tee_keys()
        .await
        .context("loading the key broker's dataset keys")?;
    tracing::info!(dataset_keys = keys, "key broker ready");
    let recovered = scheduler.recover().await?;
    if recovered.failed > 0 {
        tracing::warn!(
            jobs = recovered.failed,
            "failed jobs left unfinished by a previous run: counts released before their \
             delivery point, consumed and charged after it"
        );
    }
    if recovered.taken_up > 0 {
        tracing::info!(
            jobs = recovered.taken_up,
            resume_window_secs = config.resume_window_secs,
            "took up jobs left running by a previous run: they go on once their workers are \
             back (or resume where they stopped), else fail when the resume window ends"
        );
    }
    bootstrap_admin(&scheduler, &config.data_dir, config.announce_admin_token).await?;
    // A signed head of the chain as found at start, then at most one second behind it.
    scheduler
        .audit()
        .seal()
        .await
        .context("signing the audit chain's head")?;
    tokio::spawn(scheduler.audit().run_sealer());
    let monitor_ms = u64::try_from(config.heartbeat_timeout_ms / 4)
        .unwrap_or(250)
        .clamp(50, 1000);
    tokio::spawn(scheduler.clone().run_monitor(monitor_ms));
    let addr = listener.local_addr()?;
    let tls = if config.insecure_plaintext {
        tracing::warn!(
            "serving plain TCP (--insecure-plaintext): tokens and data cross in clear; use this \
             for tests only"
        );
        None
    } else {
        Some(server_tls(&ca, addr, &config.tls_names)?)
    };
    // gRPC and the HTTP routes (`/metrics`) on one port, HTTP/1.1 and HTTP/2.
    let routes =
        tessera_gateway::http::router(OperatorService::new(scheduler.clone()), scheduler.clone());
    let server = tokio::spawn(tessera_gateway::serve::serve(listener, routes, tls.clone()));
    tracing::info!(
        %addr,
        data_dir = %config.data_dir.display(),
        time_zone = %config.time_zone,
        "operator serving (calendar zone for bills and licence windows: {})",
        config.time_zone
    );
    Ok(OperatorHandle {
        addr,
        scheduler,
        server,
        tls: tls.is_some(),
        _lock: lock,
    })
}

/// How long the operator's TLS certificate is valid; a new one is issued at every start.
pub const SERVER_CERT_VALIDITY_SECS: u64 = 365 * 24 * 3600;

/// The operator's TLS server configuration: a certificate issued by its CA at this start for
/// `localhost`, `127.0.0.1`, `::1`, the listen address when it is a specific one, and
/// `extra_names`. Clients and workers trust the CA (`DATA_DIR/ca.pem`).
///
/// Errors: a name is neither an IP address nor a DNS name; the certificate cannot be issued.
fn server_tls(
    ca: &tessera_pki::CertificateAuthority,
    addr: SocketAddr,
    extra_names: &[String],
) -> anyhow::Result<tessera_gateway::serve::ServerTls> {
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    if !addr.ip().is_unspecified() {
        names.push(addr.ip().to_string());
    }
    for n in extra_names {
        let n = n.trim().to_owned();
        if !n.is_empty() {
            names.push(n);
        }
    }
    names.sort();
    names.dedup();
    let now = SystemClock.now_ms() / 1000;
    let (cert, key) = ca
        .issue_server(&names, now, SERVER_CERT_VALIDITY_SECS)
        .with_context(|| format!("issuing the operator's TLS certificate for {names:?}"))?;
    let chain = format!("{cert}{}", ca.cert_pem());
    tracing::info!(?names, "TLS certificate issued by the operator's CA");
    tessera_gateway::serve::ServerTls::from_pem(&chain, &key)
        .context("the operator's TLS certificate")
}

/// The CA certificate (PEM, readable by all) that workers' peer-link certificates chain to.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA's private key (PEM, 0600).
pub const CA_KEY_FILE: &str = "ca.key";

/// Loads the operator's certificate authority from `DATA_DIR/ca.pem` and `ca.key`, creating
/// them on first start (the key 0600, written through a temporary file and a rename).
fn load_or_create_ca(dir: &Path) -> anyhow::Result<tessera_pki::CertificateAuthority> {
    let (cert_path, key_path) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
    if key_path.exists() {
        narrow_to_owner(&key_path)?;
        let cert = std::fs::read_to_string(&cert_path)
            .with_context(|| format!("reading {}", cert_path.display()))?;
        let key = zeroize::Zeroizing::new(
            std::fs::read_to_string(&key_path)
                .with_context(|| format!("reading {}", key_path.display()))?,
        );
        return tessera_pki::CertificateAuthority::from_pem(&cert, &key)
            .with_context(|| format!("the certificate authority in {}", dir.display()));
    }
    let now = SystemClock.now_ms() / 1000;
    let ca = tessera_pki::CertificateAuthority::generate("Tessera operator CA", now)
        .context("creating the certificate authority")?;
    let (cert, key) = ca.to_pem();
    let tmp = dir.join("ca.key.tmp");
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(key.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::write(&cert_path, &cert)
        .with_context(|| format!("writing {}", cert_path.display()))?;
    // Readable by all (clients and workers are given it), writable by the owner only,
    // whatever the umask.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cert_path, std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("setting the mode of {}", cert_path.display()))?;
    }
    std::fs::rename(&tmp, &key_path).with_context(|| format!("writing {}", key_path.display()))?;
    Ok(ca)
}

/// The file, in the data directory, holding the node's public key (hex, readable by all):
/// what workers are configured with (`--operator-key-file`) to check tickets and refuse any
/// other operator.
pub const PUBLIC_KEY_FILE: &str = "operator.pub";

/// Writes `DATA_DIR/operator.pub` (mode 0644) when it is missing or differs, through a
/// temporary file and a rename, so a reader never sees half a key.
fn write_public_key(dir: &Path, hex: &str) -> anyhow::Result<()> {
    let path = dir.join(PUBLIC_KEY_FILE);
    if std::fs::read_to_string(&path).is_ok_and(|t| t.trim() == hex) {
        return Ok(());
    }
    let tmp = dir.join("operator.pub.tmp");
    std::fs::write(&tmp, format!("{hex}\n"))
        .with_context(|| format!("writing {}", tmp.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The user the first start creates, with the operator role.
pub const ADMIN_USER: &str = "admin";
/// The file, in the data directory, that receives the admin's token on the first start.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// On a data directory without users: creates the operator's `admin` account and writes its
/// API token to `DATA_DIR/admin.token` (mode 0600). Nothing else has a default credential.
async fn bootstrap_admin(scheduler: &Scheduler, dir: &Path, announce: bool) -> anyhow::Result<()> {
    let Some(issued) = scheduler
        .accounts()
        .bootstrap(ADMIN_USER)
        .await
        .context("creating the admin account")?
    else {
        return Ok(());
    };
    let path = write_admin_token(dir, &issued.token)?;
    const CREATED: &str = "created the operator's admin account; its API token is in this file \
                           (mode 0600): use it with --token-file or TESSERA_TOKEN, and keep it \
                           secret";
    if announce {
        tracing::warn!(user = ADMIN_USER, path = %path.display(), "{CREATED}");
    } else {
        tracing::info!(user = ADMIN_USER, path = %path.display(), "{CREATED}");
    }
    Ok(())
}

/// Writes `token` to `DIR/admin.token` (mode 0600 from the start; through a temporary file
/// and a rename, so a reader never sees half a token) and returns the path.
fn write_admin_token(dir: &Path, token: &tessera_auth::Token) -> anyhow::Result<PathBuf> {
    let path = dir.join(ADMIN_TOKEN_FILE);
    let tmp = dir.join("admin.token.tmp");
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", tmp.display())),
    }
    let mut file = tessera_core::fs::create_private(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    let mut text = token.reveal();
    text.push('\n');
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(file);
    std::fs::rename(&tmp, &path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(path)
}

/// `tessera admin-token`: issues a new API token for the `admin` user of a stopped
/// operator's data directory, offline, into `DIR/admin.token` (replacing the file), and
/// revokes the admin's earlier API tokens (the lost one may be in anyone's hands). The recovery when the token file was lost. Holds the
/// data directory's lock, so it refuses while an operator runs there.
///
/// Errors: no store in `dir`; the directory is in use; the admin user is disabled or gone.
pub async fn issue_admin_token(dir: &Path, days: u32) -> anyhow::Result<PathBuf> {
    if !dir.join("tessera.db").exists() {
        anyhow::bail!("{} holds no operator store (tessera.db)", dir.display());
    }
    let _lock = crate::datadir::lock(dir)?;
    let store = Store::open(&dir.join("tessera.db"))
        .await
        .context("opening the store")?;
    let signer =
        load_key(dir)?.with_context(|| format!("{} holds no operator.key", dir.display()))?;
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let scheduler = Scheduler::new(
        store.clone(),
        Arc::new(SystemClock),
        signer,
        SchedulerConfig::default(),
        seed,
    );
    let accounts = scheduler.accounts();
    let token = match accounts.bootstrap(ADMIN_USER).await? {
        Some(issued) => issued.token,
        None => {
            // Whoever holds the data directory holds the operator: a disabled admin is
            // enabled again (audited), so the recovery always ends with a working account.
            store
                .enable_user(
                    ADMIN_USER,
                    SystemClock.now_ms(),
                    "admin-token (offline recovery)",
                )
                .await
                .with_context(|| format!("enabling the {ADMIN_USER} user"))?;
            let admin = store
                .principal(ADMIN_USER)
                .await
                .with_context(|| format!("the {ADMIN_USER} user"))?;
            let admin = tessera_auth::Caller::User(admin);
            let issued = accounts
                .create_token(
                    &admin,
                    ADMIN_USER,
                    "admin-token (offline)",
                    Some(i64::from(days) * 86_400_000),
                )
                .await?;
            // The old token may be lost anywhere: it stops working now.
            let revoked = accounts
                .revoke_other_tokens(&admin, issued.token.id())
                .await?;
            tracing::warn!(revoked, "revoked the admin's earlier API tokens");
            issued.token
        }
    };
    let path = write_admin_token(dir, &token)?;
    scheduler
        .audit()
        .seal()
        .await
        .context("signing the audit chain's head")?;
    store.close().await;
    Ok(path)
}

/// Closes due bills now and then; a failure is logged and retried on the next tick.
async fn close_bills_loop(store: Store, clock: Arc<dyn Clock>, every_ms: u64) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(every_ms));
    loop {
        tick.tick().await;
        match store.close_due_bills(clock.now_ms()).await {
            Ok(closed) if !closed.is_empty() => {
                tracing::info!(bills = closed.len(), "closed due bills");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "closing due bills failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_directory_with_a_key_but_no_store_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("tessera.db");
        // A new directory: nothing to lose.
        refuse_a_lost_store(dir.path(), &db).expect("a new node");
        load_or_create_key(dir.path()).expect("key");
        for state in ["missing", "empty"] {
            if state == "empty" {
                std::fs::write(&db, b"").expect("empty file");
            }
            let e = refuse_a_lost_store(dir.path(), &db).expect_err(state);
            let text = e.to_string();
            assert!(
                text.contains(state) && text.contains("Restore tessera.db"),
                "{text}"
            );
        }
        std::fs::write(&db, b"SQLite format 3\0").expect("some content");
        refuse_a_lost_store(dir.path(), &db).expect("a store to open");
        std::fs::remove_file(&db).expect("rm");
        std::fs::create_dir(&db).expect("a directory in its place");
        let e = refuse_a_lost_store(dir.path(), &db).expect_err("a directory");
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn the_key_file_is_private_and_reloads() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        // A leftover temporary file from a start that died is replaced, not trusted.
        std::fs::write(dir.path().join("operator.key.tmp"), "stale").expect("write");
        let first = load_or_create_key(dir.path()).expect("create");
        let path = dir.path().join("operator.key");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.path().join("operator.key.tmp").exists());
        let again = load_or_create_key(dir.path()).expect("reload");
        assert_eq!(first.public_key_hex(), again.public_key_hex());
        // A key file someone made readable by others is narrowed again at the next start.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let third = load_or_create_key(dir.path()).expect("reload wide");
        assert_eq!(first.public_key_hex(), third.public_key_hex());
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
