//! Accounts: who is calling. Turns a presented token into a [`Caller`] (authentication), and
//! manages users, recorded groups, parties and tokens — each call authorised by the one table
//! in [`tessera_auth`] (`authorize`), with denials of admin operations written to the audit
//! chain. Token secrets are drawn from the scheduler's RNG (seeded from the OS by the
//! operator), shown once to the caller, and stored only as SHA-256 hashes.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::Digest;

use tessera_auth::{Caller, Operation, Roles, Target, Token, TokenKind, authorize};
use tessera_core::Clock;
use tessera_store::{PartyRecord, Store, StoreError, TokenRecord, UserRecord};

use crate::metrics::{AuthFailure, Metrics};
use crate::validate::required;
use crate::{Ids, SchedulerError};

/// Default lifetime of an API token: 90 days.
pub const API_TOKEN_TTL_MS: i64 = 90 * 24 * 3600 * 1000;
/// Longest lifetime a token may be given: 400 days.
pub const TOKEN_TTL_MS_MAX: i64 = 400 * 24 * 3600 * 1000;
/// Default lifetime of a worker registration token: 24 hours.
pub const REGISTRATION_TOKEN_TTL_MS: i64 = 24 * 3600 * 1000;
/// Most rows a user or token listing returns.
pub const ACCOUNT_LIST_MAX: u32 = 1000;

/// Why a presented token was not accepted. Deliberately one case: the caller learns only
/// that it is not authenticated (no token, malformed, unknown, wrong secret, expired,
/// revoked, or a disabled user all look the same from outside).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("missing, invalid, expired or revoked token")]
pub struct Unauthenticated;

/// A token issued by [`AccountService`]: its record and the text to show once.
#[derive(Debug)]
pub struct IssuedToken {
    /// The stored record (no secret).
    pub record: TokenRecord,
    /// The token; [`Token::reveal`] gives its text. Never logged.
    pub token: Token,
}

/// Most tokens [`AuthCache`] keeps; past it the cache starts again empty.
const AUTH_CACHE_MAX: usize = 10_000;

/// What authenticated tokens stand for, valid for one [`Store::accounts_version`]: a
/// committed change to users, groups, parties, tokens or worker credentials empties it, so a
/// revoked token, a disabled user or a replaced worker credential is refused on the next
/// call, as without the cache. Keyed by the SHA-256 of the token's text (no secret kept);
/// only successes are kept; an API token's expiry is checked on every hit.
#[derive(Debug, Default)]
struct AuthCache {
    version: i64,
    callers: HashMap<[u8; 32], (Caller, Option<i64>)>,
}

impl AuthCache {
    fn get(&mut self, version: i64, key: &[u8; 32], now_ms: i64) -> Option<Caller> {
        if version != self.version {
            self.callers.clear();
            self.version = version;
            return None;
        }
        match self.callers.get(key) {
            Some((caller, expires)) if expires.is_none_or(|e| now_ms < e) => Some(caller.clone()),
            _ => None,
        }
    }

    /// Keeps `caller` for `key` if the version read before the lookup is still current.
    fn put(&mut self, version: i64, key: [u8; 32], caller: Caller, expires: Option<i64>) {
        if version != self.version {
            return;
        }
        if self.callers.len() >= AUTH_CACHE_MAX {
            self.callers.clear();
        }
        self.callers.insert(key, (caller, expires));
    }
}

/// Users, groups, parties and tokens.
#[derive(Debug, Clone)]
pub struct AccountService {
    pub(crate) store: Store,
    clock: Arc<dyn Clock>,
    ids: Arc<Ids>,
    metrics: Arc<Metrics>,
    auth_cache: Arc<std::sync::Mutex<AuthCache>>,
}

impl AccountService {
    pub(crate) fn new(
        store: Store,
        clock: Arc<dyn Clock>,
        ids: Arc<Ids>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            clock,
            ids,
            metrics,
            auth_cache: Arc::default(),
        }
    }

    /// Counts a call refused for want of a valid token (the gateway reports it).
    pub fn count_unauthenticated(&self) {
        self.metrics.auth_failure(AuthFailure::Unauthenticated);
    }

    /// On a store with no user yet: creates `admin` with the operator role and an API token
    /// for it, valid for [`TOKEN_TTL_MS_MAX`]; `None` if any user exists (nothing else has a
    /// default credential).
    ///
    /// # Errors
    /// A store failure.
    pub async fn bootstrap(&self, admin: &str) -> Result<Option<IssuedToken>, SchedulerError> {
        if self.store.has_users().await? {
            return Ok(None);
        }
        let now = self.clock.now_ms();
        self.store
            .create_user(
                admin,
                Roles::of(&[tessera_auth::Role::Operator]),
                now,
                "operator start-up",
            )
            .await?;
        let issued = self
            .issue(
                TokenKind::Api,
                Some(admin),
                None,
                "bootstrap",
                TOKEN_TTL_MS_MAX,
                "operator start-up",
            )
            .await?;
        Ok(Some(issued))
    }

    /// The caller a presented token stands for: a user (API token `tsk_`), a registrant of a
    /// party (registration token `tsr_`) or a registered worker (its credential `tsw_`).
    ///
    /// # Errors
    /// [`Unauthenticated`] for any token that is not a live token of an enabled user, an
    /// existing party or a worker whose credential was not replaced. A store failure is also reported as unauthenticated, after logging it.
    pub async fn authenticate(&self, text: &str) -> Result<Caller, Unauthenticated> {
        let version = self.store.accounts_version().await.map_err(|e| {
            tracing::error!(error = %e, "reading the accounts version failed");
            Unauthenticated
        })?;
        let key: [u8; 32] = sha2::Sha256::digest(text.as_bytes()).into();
        let now = self.clock.now_ms();
        let cached = match self.auth_cache.lock() {
            Ok(mut c) => c.get(version, &key, now),
            Err(_) => None,
        };
        if let Some(caller) = cached {
            return Ok(caller);
        }
        let (caller, expires) = self.look_up(text).await?;
        if let Ok(mut c) = self.auth_cache.lock() {
            c.put(version, key, caller.clone(), expires);
        }
        Ok(caller)
    }

    /// [`AccountService::authenticate`] from the store, without the cache: the caller and
    /// when its token expires (worker credentials do not).
    async fn look_up(&self, text: &str) -> Result<(Caller, Option<i64>), Unauthenticated> {
        let kind = TokenKind::of_text(text).ok_or(Unauthenticated)?;
        let token = Token::parse(kind, text).map_err(|_| Unauthenticated)?;
        let logged = |e: StoreError| {
            tracing::error!(error = %e, "token lookup failed");
            Unauthenticated
        };
        if kind == TokenKind::Worker {
            let c = self
                .store
                .worker_credential(token.id())
                .await
                .map_err(logged)?
                .ok_or(Unauthenticated)?;
            if c.revoked_at_ms.is_some() || !token.matches(&c.secret_sha256) {
                return Err(Unauthenticated);
            }
            self.party_owner_enabled(&c.party).await?;
            return Ok((
                Caller::Worker {
                    party: c.party,
                    worker_id: c.worker_id,
                },
                None,
            ));
        }
        let record = self
            .store
            .token(token.id())
            .await
            .map_err(logged)?
            .ok_or(Unauthenticated)?;
        let now = self.clock.now_ms();
        let live = record.kind == kind
            && record.revoked_at_ms.is_none()
            && now < record.expires_at_ms
            && token.matches(&record.secret_sha256);
        if !live {
            return Err(Unauthenticated);
        }
        match (kind, record.user_id, record.party_id) {
            (TokenKind::Api, Some(user), _) => match self.store.principal(&user).await {
                Ok(p) => Ok((
                    Caller::User(tessera_auth::Principal {
                        token_expires_at_ms: Some(record.expires_at_ms),
                        ..p
                    }),
                    Some(record.expires_at_ms),
                )),
                Err(StoreError::NotFound { .. }) => Err(Unauthenticated),
                Err(e) => Err(logged(e)),
            },
            (TokenKind::Registration, _, Some(party)) => {
                self.party_owner_enabled(&party).await?;
                Ok((Caller::Registrant { party }, Some(record.expires_at_ms)))
            }
            _ => Err(Unauthenticated),
        }
    }

    /// A party's registration tokens and workers act for its owner: they stop working when
    /// the owner is disabled (or the party has none).
    async fn party_owner_enabled(&self, party: &str) -> Result<(), Unauthenticated> {
        let owner = match self.store.party(party).await {
            Ok(p) => p.owner_user_id,
            Err(StoreError::NotFound { .. }) => return Err(Unauthenticated),
            Err(e) => {
                tracing::error!(error = %e, "party lookup failed");
                return Err(Unauthenticated);
            }
        };
        match self.store.principal(&owner).await {
            Ok(_) => Ok(()),
            Err(StoreError::NotFound { .. }) => Err(Unauthenticated),
            Err(e) => {
                tracing::error!(error = %e, "owner lookup failed");
                Err(Unauthenticated)
            }
        }
    }

    /// `Invalid` when `user_id` is disabled (an unknown user is the store's `NotFound`).
    async fn enabled(&self, user_id: &str) -> Result<(), SchedulerError> {
        if self.store.user(user_id).await?.disabled_at_ms.is_some() {
            return Err(SchedulerError::Invalid(format!(
                "user {user_id} is disabled"
            )));
        }
        Ok(())
    }

    /// A fresh worker credential for `worker_id` of `party` (recorded by the registration).
    pub(crate) fn worker_credential(
        &self,
        worker_id: &str,
        party: &str,
    ) -> (Token, tessera_store::WorkerCredentialRecord) {
        let token = self.ids.token(TokenKind::Worker);
        let record = tessera_store::WorkerCredentialRecord {
            token_id: token.id().to_owned(),
            worker_id: worker_id.to_owned(),
            party: party.to_owned(),
            secret_sha256: token.secret_hash().to_vec(),
            issued_at_ms: self.clock.now_ms(),
            revoked_at_ms: None,
        };
        (token, record)
    }

    /// As [`AccountService::authorize`] on a record the caller names by id (`kind` `id`):
    /// when the caller may not even see it (`visible` denies it too), the denial is the very
    /// `NotFound` an unknown id gets, so ids of others' records cannot be probed. It is still
    /// counted and, where the rule says so, audited as a denial.
    ///
    /// # Errors
    /// `NotFound` as above; [`SchedulerError::Forbidden`] when the caller sees the record
    /// but may not do `op` on it, or lacks the role.
    pub async fn authorize_by_id(
        &self,
        op: Operation,
        visible: Operation,
        caller: &Caller,
        target: &Target<'_>,
        kind: &'static str,
        id: &str,
    ) -> Result<(), SchedulerError> {
        let result = self.authorize(op, caller, target).await;
        let hidden = matches!(
            authorize(op, caller, target),
            Err(tessera_auth::Denied::NotOwner { .. })
        ) && authorize(visible, caller, target).is_err();
        if hidden {
            return Err(SchedulerError::Store(StoreError::NotFound {
                kind,
                id: id.to_owned(),
            }));
        }
        result
    }

    /// Authorises `op` for `caller` on `target`; a denial of an operation whose rule says so
    /// is written to the audit chain.
    ///
    /// # Errors
    /// [`SchedulerError::Forbidden`] with the rule that failed.
    pub async fn authorize(
        &self,
        op: Operation,
        caller: &Caller,
        target: &Target<'_>,
    ) -> Result<(), SchedulerError> {
        match authorize(op, caller, target) {
            Ok(()) => Ok(()),
            Err(denied) => {
                self.metrics.auth_failure(AuthFailure::PermissionDenied);
                if op.rule().audit_denial {
                    let now = self.clock.now_ms();
                    if let Err(e) = self
                        .store
                        .record_denial(now, op.name(), &caller.describe(), &denied.to_string())
                        .await
                    {
                        tracing::error!(error = %e, "could not audit a denial");
                    }
                }
                Err(SchedulerError::Forbidden(denied.to_string()))
            }
        }
    }

    /// Creates a user (operator only).
    ///
    /// # Errors
    /// Forbidden, invalid id or roles, or an existing user.
    pub async fn create_user(
        &self,
        caller: &Caller,
        user_id: &str,
        roles: &str,
    ) -> Result<UserRecord, SchedulerError> {
        self.authorize(Operation::CreateUser, caller, &Target::default())
            .await?;
        let user_id = account_id("user", user_id)?;
        if let Some(kind) = self.store.account_name_in_use(&user_id).await? {
            return Err(SchedulerError::Invalid(format!(
                "{user_id} is already the name of a {kind} (ignoring case); users and groups \
                 share one namespace"
            )));
        }
        let roles: Roles = roles
            .parse()
            .map_err(|e: tessera_auth::UnknownRole| SchedulerError::Invalid(e.to_string()))?;
        self.store
            .create_user(&user_id, roles, self.clock.now_ms(), &caller.describe())
            .await?;
        Ok(self.store.user(&user_id).await?)
    }

    /// Users in id order (operator only).
    ///
    /// # Errors
    /// Forbidden or a store failure.
    pub async fn users(&self, caller: &Caller) -> Result<Vec<UserRecord>, SchedulerError> {
        self.authorize(Operation::ListUsers, caller, &Target::default())
            .await?;
        Ok(self.store.users(ACCOUNT_LIST_MAX).await?)
    }

    /// Disables a user (operator only); its tokens, its parties' registration tokens and its
    /// parties' workers' credentials stop working at once. An operator cannot disable itself,
    /// nor the last enabled operator.
    ///
    /// # Errors
    /// Forbidden, an unknown user, oneself, or the last enabled operator (`Invalid`).
    pub async fn disable_user(&self, caller: &Caller, user_id: &str) -> Result<(), SchedulerError> {
        self.authorize(Operation::DisableUser, caller, &Target::default())
            .await?;
        if matches!(caller, Caller::User(p) if p.user == user_id) {
            return Err(SchedulerError::Invalid(
                "a user cannot disable itself (another operator can)".into(),
            ));
        }
        let target = self.store.user(user_id).await?;
        let operator = target
            .roles
            .parse::<Roles>()
            .is_ok_and(|r| r.has(tessera_auth::Role::Operator));
        if operator && target.disabled_at_ms.is_none() && self.store.enabled_operators().await? <= 1
        {
            return Err(SchedulerError::Invalid(format!(
                "{user_id} is the last enabled operator: disabling it would lock everyone out"
            )));
        }
        Ok(self
            .store
            .disable_user(user_id, self.clock.now_ms(), &caller.describe())
            .await?)
    }

    /// Enables a disabled user again (operator only); audited as `user_enable`. Enabling an
    /// enabled user changes nothing.
    ///
    /// # Errors
    /// Forbidden, or an unknown user.
    pub async fn enable_user(&self, caller: &Caller, user_id: &str) -> Result<(), SchedulerError> {
        self.authorize(Operation::EnableUser, caller, &Target::default())
            .await?;
        Ok(self
            .store
            .enable_user(user_id, self.clock.now_ms(), &caller.describe())
            .await?)
    }

    /// Records `user_id` in `group_id` (operator only); `false` if it already was.
    ///
    /// # Errors
    /// Forbidden, an invalid group name or an unknown user.
    pub async fn add_group_member(
        &self,
        caller: &Caller,
        group_id: &str,
        user_id: &str,
    ) -> Result<bool, SchedulerError> {
        self.authorize(Operation::AddGroupMember, caller, &Target::default())
            .await?;
        let group_id = account_id("group", group_id)?;
        if self.store.account_name_in_use(&group_id).await? == Some("user") {
            return Err(SchedulerError::Invalid(format!(
                "{group_id} is a user's name (ignoring case); users and groups share one \
                 namespace"
            )));
        }
        Ok(self
            .store
            .add_group_member(&group_id, user_id, self.clock.now_ms(), &caller.describe())
            .await?)
    }

    /// Removes `user_id` from `group_id` (operator only); `false` if it was not a member.
    ///
    /// # Errors
    /// Forbidden or a store failure.
    pub async fn remove_group_member(
        &self,
        caller: &Caller,
        group_id: &str,
        user_id: &str,
    ) -> Result<bool, SchedulerError> {
        self.authorize(Operation::RemoveGroupMember, caller, &Target::default())
            .await?;
        Ok(self
            .store
            .remove_group_member(group_id, user_id, self.clock.now_ms(), &caller.describe())
            .await?)
    }

    /// Issues an API token for `user_id` (oneself, or anyone by the operator), valid for
    /// `ttl_ms` (default [`API_TOKEN_TTL_MS`], at most [`TOKEN_TTL_MS_MAX`]); a user's token
    /// for itself expires no later than the token it presented.
    ///
    /// # Errors
    /// Forbidden, a lifetime out of range, or an unknown user.
    pub async fn create_token(
        &self,
        caller: &Caller,
        user_id: &str,
        label: &str,
        ttl_ms: Option<i64>,
    ) -> Result<IssuedToken, SchedulerError> {
        let target = Target {
            user: Some(user_id),
            ..Target::default()
        };
        self.authorize(Operation::CreateToken, caller, &target)
            .await?;
        self.enabled(user_id).await?;
        let mut ttl = ttl(ttl_ms, API_TOKEN_TTL_MS)?;
        // A user's new token never outlives the one it was minted with (a stolen short-lived
        // token cannot buy a long-lived one); the operator's tokens are not capped.
        if let Caller::User(p) = caller
            && let (false, Some(limit)) = (p.is_operator(), p.token_expires_at_ms)
        {
            let left = limit.saturating_sub(self.clock.now_ms());
            if left <= 0 {
                return Err(SchedulerError::Forbidden(
                    "the calling token has expired".into(),
                ));
            }
            ttl = ttl.min(left);
        }
        self.issue(
            TokenKind::Api,
            Some(user_id),
            None,
            label,
            ttl,
            &caller.describe(),
        )
        .await
    }

    /// Revokes every other API token of the caller's own user (the recovery of a lost admin
    /// token: whoever found the old one can no longer use it); returns how many.
    ///
    /// # Errors
    /// A store failure; nothing for a caller that is not a user.
    pub async fn revoke_other_tokens(
        &self,
        caller: &Caller,
        keep: &str,
    ) -> Result<u64, SchedulerError> {
        let Caller::User(p) = caller else {
            return Ok(0);
        };
        Ok(self
            .store
            .revoke_user_tokens(&p.user, keep, self.clock.now_ms(), &caller.describe())
            .await?)
    }

    /// Tokens (never secrets): the caller's API tokens and its parties' registration tokens,
    /// or every one for the operator.
    ///
    /// # Errors
    /// A store failure.
    pub async fn tokens(&self, caller: &Caller) -> Result<Vec<TokenRecord>, SchedulerError> {
        self.authorize(Operation::ListTokens, caller, &Target::default())
            .await?;
        let own = match caller {
            Caller::User(p) if p.is_operator() => None,
            Caller::User(p) => Some(p.user.as_str()),
            _ => return Ok(Vec::new()),
        };
        Ok(self.store.tokens(own, ACCOUNT_LIST_MAX).await?)
    }

    /// Revokes a token: its user's (a registration token: its party owner's), or any by the
    /// operator. A token the caller may not see is
    /// reported as not found, so ids of others' tokens cannot be probed.
    ///
    /// # Errors
    /// Forbidden (a user revoking someone else's token: not found) or an unknown token.
    pub async fn revoke_token(
        &self,
        caller: &Caller,
        token_id: &str,
    ) -> Result<(), SchedulerError> {
        if !matches!(caller, Caller::User(_)) {
            // Not a user at all: the role gate's own denial.
            return self
                .authorize(Operation::RevokeToken, caller, &Target::default())
                .await;
        }
        let record = self.store.token(token_id).await?;
        // An API token is its user's; a registration token its party owner's.
        let party_owner = match record.as_ref().and_then(|r| r.party_id.as_deref()) {
            Some(p) => self.owner_of(p).await?,
            None => None,
        };
        let owner = record
            .as_ref()
            .and_then(|r| r.user_id.as_deref())
            .or(party_owner.as_deref());
        let target = Target {
            user: owner,
            ..Target::default()
        };
        // A denial is audited like any other, but answered as "not found".
        let allowed = self
            .authorize(Operation::RevokeToken, caller, &target)
            .await
            .is_ok();
        if record.is_none() || !allowed {
            return Err(SchedulerError::NotFound(format!("token {token_id}")));
        }
        Ok(self
            .store
            .revoke_token(token_id, self.clock.now_ms(), &caller.describe())
            .await?)
    }

    /// Creates a party owned by `owner` (a provider, buyer or developer for itself; the
    /// operator for anyone).
    ///
    /// # Errors
    /// Forbidden, an invalid id, an existing party or an unknown owner.
    pub async fn create_party(
        &self,
        caller: &Caller,
        party_id: &str,
        owner: &str,
    ) -> Result<PartyRecord, SchedulerError> {
        let target = Target {
            user: Some(owner),
            ..Target::default()
        };
        self.authorize(Operation::CreateParty, caller, &target)
            .await?;
        let party_id = account_id("party", party_id)?;
        self.enabled(owner).await?;
        let operator = matches!(caller, Caller::User(p) if p.is_operator());
        if !operator && self.store.party_name_in_use(&party_id).await? {
            let reason = format!(
                "party {party_id} is already named (ignoring case) by existing parties, \
                 datasets, workers, licences or jobs; only the operator may give it an owner"
            );
            if let Err(e) = self
                .store
                .record_denial(
                    self.clock.now_ms(),
                    Operation::CreateParty.name(),
                    &caller.describe(),
                    &reason,
                )
                .await
            {
                tracing::error!(error = %e, "could not audit a denial");
            }
            return Err(SchedulerError::Forbidden(reason));
        }
        self.store
            .create_party(&party_id, owner, self.clock.now_ms(), &caller.describe())
            .await?;
        Ok(self.store.party(&party_id).await?)
    }

    /// Issues a worker registration token for `party_id` to its owner (or the operator),
    /// valid for `ttl_ms` (default [`REGISTRATION_TOKEN_TTL_MS`]).
    ///
    /// # Errors
    /// Forbidden (also for an unknown party, which is not told apart), or a lifetime out of
    /// range.
    pub async fn issue_registration_token(
        &self,
        caller: &Caller,
        party_id: &str,
        ttl_ms: Option<i64>,
    ) -> Result<IssuedToken, SchedulerError> {
        let owner = self.owner_of(party_id).await?;
        let target = Target {
            party_owner: owner.as_deref(),
            ..Target::default()
        };
        self.authorize(Operation::IssueRegistrationToken, caller, &target)
            .await?;
        if owner.is_none() {
            return Err(SchedulerError::NotFound(format!("party {party_id}")));
        }
        let ttl = ttl(ttl_ms, REGISTRATION_TOKEN_TTL_MS)?;
        self.issue(
            TokenKind::Registration,
            None,
            Some(party_id),
            "worker registration",
            ttl,
            &caller.describe(),
        )
        .await
    }

    async fn issue(
        &self,
        kind: TokenKind,
        user: Option<&str>,
        party: Option<&str>,
        label: &str,
        ttl_ms: i64,
        actor: &str,
    ) -> Result<IssuedToken, SchedulerError> {
        let label: String = label.chars().take(200).collect();
        let token = self.ids.token(kind);
        let now = self.clock.now_ms();
        let record = TokenRecord {
            token_id: token.id().to_owned(),
            kind,
            user_id: user.map(str::to_owned),
            party_id: party.map(str::to_owned),
            secret_sha256: token.secret_hash().to_vec(),
            label,
            created_at_ms: now,
            expires_at_ms: now.saturating_add(ttl_ms),
            revoked_at_ms: None,
        };
        self.store.create_token(&record, actor).await?;
        Ok(IssuedToken { record, token })
    }
}

/// A lifetime in `1..=TOKEN_TTL_MS_MAX` ms, `default` when not given.
fn ttl(ttl_ms: Option<i64>, default: i64) -> Result<i64, SchedulerError> {
    match ttl_ms {
        None => Ok(default),
        Some(t) if (1..=TOKEN_TTL_MS_MAX).contains(&t) => Ok(t),
        Some(t) => Err(SchedulerError::Invalid(format!(
            "a token's lifetime must be between 1 ms and {} days, not {t} ms",
            TOKEN_TTL_MS_MAX / 86_400_000
        ))),
    }
}

/// A user, group, party or worker id: 1..=64 ASCII letters, digits, `-`, `_`, `.`, `@`,
/// beginning with a letter or digit (so never `.` or `..`).
pub(crate) fn account_id(what: &str, id: &str) -> Result<String, SchedulerError> {
    required(what, id)?;
    let ok = id.len() <= 64
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
    if ok {
        Ok(id.to_owned())
    } else {
        // A long id is shown cut, so that an error never echoes a whole request back.
        let shown: String = id.chars().take(64).collect();
        let cut = if shown.len() < id.len() { "…" } else { "" };
        Err(SchedulerError::Invalid(format!(
            "{what} id {shown:?}{cut}: use 1 to 64 ASCII letters, digits, '-', '_', '.' or '@', \
             beginning with a letter or digit"
        )))
    }
}
