//! Users, their roles and recorded groups, parties and their owners, and API and registration
//! tokens (hashes only) — the store side of "who is calling". Decisions (may this caller do
//! that?) are `tessera_auth`'s; this module persists and reads, and appends every change to
//! the audit chain (never a secret or its hash).

use std::collections::BTreeSet;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use tessera_auth::{Principal, Roles, TokenKind};

use crate::{Store, StoreError, audit};

/// A user as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserRecord {
    /// User id.
    pub user_id: String,
    /// Its roles, as text (`provider,buyer`).
    pub roles: String,
    /// Its recorded groups.
    pub groups: BTreeSet<String>,
    /// When it was created (UTC ms).
    pub created_at_ms: i64,
    /// When it was disabled, if it was (its tokens stop working).
    pub disabled_at_ms: Option<i64>,
}

/// A party and its owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartyRecord {
    /// Party id.
    pub party_id: String,
    /// The user who owns it.
    pub owner_user_id: String,
    /// When it was created (UTC ms).
    pub created_at_ms: i64,
}

/// A token as stored: never its secret, only the secret's SHA-256.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Public id.
    pub token_id: String,
    /// API or registration.
    pub kind: TokenKind,
    /// The user of an API token.
    pub user_id: Option<String>,
    /// The party of a registration token.
    pub party_id: Option<String>,
    /// SHA-256 of the secret.
    pub secret_sha256: Vec<u8>,
    /// Free text naming the token's use.
    pub label: String,
    /// When it was issued (UTC ms).
    pub created_at_ms: i64,
    /// When it stops working (UTC ms).
    pub expires_at_ms: i64,
    /// When it was revoked, if it was.
    pub revoked_at_ms: Option<i64>,
}

impl std::fmt::Debug for TokenRecord {
    /// Omits the secret's hash.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRecord")
            .field("token_id", &self.token_id)
            .field("kind", &self.kind)
            .field("user_id", &self.user_id)
            .field("party_id", &self.party_id)
            .field("label", &self.label)
            .field("created_at_ms", &self.created_at_ms)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("revoked_at_ms", &self.revoked_at_ms)
            .finish()
    }
}

fn kind_text(kind: TokenKind) -> &'static str {
    kind.as_str()
}

/// A worker's credential as stored: never its secret, only the secret's SHA-256.
#[derive(Clone, PartialEq, Eq)]
pub struct WorkerCredentialRecord {
    /// Public id (of the `tsw_` token).
    pub token_id: String,
    /// The worker it authenticates.
    pub worker_id: String,
    /// The worker's party.
    pub party: String,
    /// SHA-256 of the secret.
    pub secret_sha256: Vec<u8>,
    /// When it was issued (UTC ms).
    pub issued_at_ms: i64,
    /// When it was revoked (the id registered again), if it was.
    pub revoked_at_ms: Option<i64>,
}

impl std::fmt::Debug for WorkerCredentialRecord {
    /// Omits the secret's hash.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerCredentialRecord")
            .field("token_id", &self.token_id)
            .field("worker_id", &self.worker_id)
            .field("party", &self.party)
            .field("issued_at_ms", &self.issued_at_ms)
            .field("revoked_at_ms", &self.revoked_at_ms)
            .finish()
    }
}

/// Revokes the live credential of `c.worker_id`, if any, and records `c`, each with its audit
/// entry (ids and the secret's hash, never the secret), inside the caller's transaction.
pub(crate) fn replace_worker_credential(
    conn: &Connection,
    c: &WorkerCredentialRecord,
    actor: &str,
) -> Result<(), StoreError> {
    let old: Vec<String> = {
        let mut stmt = conn.prepare_cached(
            "SELECT token_id FROM worker_credentials WHERE worker_id = ? AND revoked_at_ms IS NULL",
        )?;
        let mut rows = stmt.query(params![c.worker_id])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(r.get::<_, String>(0)?);
        }
        out
    };
    for id in &old {
        conn.prepare_cached("UPDATE worker_credentials SET revoked_at_ms = ? WHERE token_id = ?")?
            .execute(params![c.issued_at_ms, id])?;
        audit::append(
            conn,
            c.issued_at_ms,
            "worker_credential_revoke",
            id,
            &serde_json::json!({"worker": c.worker_id, "by": actor}),
        )?;
    }
    let n = conn
        .prepare_cached(
            "INSERT INTO worker_credentials (token_id, worker_id, party, secret_sha256, issued_at_ms) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT(token_id) DO NOTHING",
        )?
        .execute(params![
            c.token_id,
            c.worker_id,
            c.party,
            c.secret_sha256,
            c.issued_at_ms
        ])?;
    if n == 0 {
        return Err(StoreError::Conflict {
            kind: "token",
            id: c.token_id.clone(),
        });
    }
    audit::append(
        conn,
        c.issued_at_ms,
        "worker_credential_issue",
        &c.token_id,
        &serde_json::json!({
            "worker": c.worker_id,
            "party": c.party,
            "secret_sha256": hex::encode(&c.secret_sha256),
            "by": actor,
        }),
    )?;
    Ok(())
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// One user with its groups, on `conn`.
///
/// # Errors
/// [`StoreError::NotFound`] for an unknown user.
fn load_user(conn: &Connection, user_id: &str) -> Result<UserRecord, StoreError> {
    let (user_id_stored, roles, created_at_ms, disabled_at_ms) = conn
        .prepare_cached(
            "SELECT user_id, roles, created_at_ms, disabled_at_ms FROM users WHERE user_id = ?",
        )?
        .query_row(params![user_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<i64>>(3)?,
            ))
        })
        .optional()?
        .ok_or_else(|| StoreError::NotFound {
            kind: "user",
            id: user_id.into(),
        })?;
    let mut groups = BTreeSet::new();
    let mut stmt = conn.prepare_cached("SELECT group_id FROM group_members WHERE user_id = ?")?;
    let mut rows = stmt.query(params![user_id])?;
    while let Some(g) = rows.next()? {
        groups.insert(g.get::<_, String>(0)?);
    }
    Ok(UserRecord {
        user_id: user_id_stored,
        roles,
        groups,
        created_at_ms,
        disabled_at_ms,
    })
}

impl Store {
    /// Creates a user with `roles` (at least one). The first user may be created on an empty
    /// store by the operator's start-up; afterwards only through the account service.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] if the id exists; [`StoreError::Invalid`] for no role.
    pub async fn create_user(
        &self,
        user_id: &str,
        roles: Roles,
        now_ms: i64,
        actor: &str,
    ) -> Result<(), StoreError> {
        if roles.is_empty() {
            return Err(StoreError::Invalid {
                field: "roles",
                reason: "a user needs at least one role".into(),
            });
        }
        let user_id = user_id.to_string();
        let roles = roles.to_string();
        let actor = actor.to_string();
        self.write(move |conn| {
            let n = conn
                .prepare_cached(
                    "INSERT INTO users (user_id, roles, created_at_ms) VALUES (?, ?, ?) \
                     ON CONFLICT(user_id) DO NOTHING",
                )?
                .execute(params![user_id, roles, now_ms])?;
            if n == 0 {
                return Err(StoreError::Conflict {
                    kind: "user",
                    id: user_id,
                });
            }
            audit::append(
                conn,
                now_ms,
                "user_create",
                &user_id,
                &serde_json::json!({"roles": roles, "by": actor}),
            )?;
            Ok(())
        })
        .await
    }

    /// A number that changes with every committed change to users, group members, parties,
    /// tokens or worker credentials (kept by triggers, migration `0902`): whoever caches what
    /// a token stands for drops the cache when it moved.
    ///
    /// # Errors
    /// The database's.
    pub async fn accounts_version(&self) -> Result<i64, StoreError> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached("SELECT version FROM accounts_version WHERE id = 1")?
                .query_row([], |r| r.get::<_, i64>(0))?)
        })
    }

    /// Whether any user exists (the first start creates the operator's admin account).
    pub async fn has_users(&self) -> Result<bool, StoreError> {
        self.write(|conn| {
            Ok(conn
                .prepare_cached("SELECT 1 FROM users LIMIT 1")?
                .query_row([], |_| Ok(()))
                .optional()?
                .is_some())
        })
        .await
    }

    /// Disables a user: its tokens stop working. Disabling twice is a no-op.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown user.
    pub async fn disable_user(
        &self,
        user_id: &str,
        now_ms: i64,
        actor: &str,
    ) -> Result<(), StoreError> {
        self.stamp_once(
            "UPDATE users SET disabled_at_ms = COALESCE(disabled_at_ms, ?) WHERE user_id = ?",
            ("user", user_id),
            now_ms,
            "user_disable",
            actor,
        )
        .await
    }

    /// Enables a disabled user again (the offline recovery of the admin account); audited as
    /// `user_enable`. Enabling an enabled user changes nothing and appends nothing.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown user.
    pub async fn enable_user(
        &self,
        user_id: &str,
        now_ms: i64,
        actor: &str,
    ) -> Result<(), StoreError> {
        let user_id = user_id.to_string();
        let actor = actor.to_string();
        self.write(move |conn| {
            let disabled: Option<Option<i64>> = conn
                .prepare_cached("SELECT disabled_at_ms FROM users WHERE user_id = ?")?
                .query_row(params![user_id], |r| r.get::<_, Option<i64>>(0))
                .optional()?;
            match disabled {
                None => {
                    return Err(StoreError::NotFound {
                        kind: "user",
                        id: user_id,
                    });
                }
                Some(None) => return Ok(()),
                Some(Some(_)) => {}
            }
            conn.prepare_cached("UPDATE users SET disabled_at_ms = NULL WHERE user_id = ?")?
                .execute(params![user_id])?;
            audit::append(
                conn,
                now_ms,
                "user_enable",
                &user_id,
                &serde_json::json!({"by": actor}),
            )?;
            Ok(())
        })
        .await
    }

    /// Enabled users holding the operator role.
    ///
    /// # Errors
    /// `Db`.
    pub async fn enabled_operators(&self) -> Result<i64, StoreError> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM users WHERE disabled_at_ms IS NULL \
                     AND (',' || roles || ',') LIKE '%,operator,%'",
                )?
                .query_row([], |r| r.get::<_, i64>(0))?)
        })
    }

    /// Sets a once-only instant (`sql` binds `now_ms`, then the id) on the record `what`,
    /// and appends `audit_kind` naming `actor`, in one transaction.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when no row has the id.
    async fn stamp_once(
        &self,
        sql: &'static str,
        what: (&'static str, &str),
        now_ms: i64,
        audit_kind: &str,
        actor: &str,
    ) -> Result<(), StoreError> {
        let (kind, id) = what;
        let id = id.to_string();
        let audit_kind = audit_kind.to_string();
        let actor = actor.to_string();
        self.write(move |conn| {
            let n = conn.prepare_cached(sql)?.execute(params![now_ms, id])?;
            if n == 0 {
                return Err(StoreError::NotFound { kind, id });
            }
            audit::append(
                conn,
                now_ms,
                &audit_kind,
                &id,
                &serde_json::json!({"by": actor}),
            )?;
            Ok(())
        })
        .await
    }

    /// One user with its groups.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown user.
    pub async fn user(&self, user_id: &str) -> Result<UserRecord, StoreError> {
        self.read(|conn| load_user(conn, user_id))
    }

    /// Every user, in id order (at most `limit`).
    pub async fn users(&self, limit: u32) -> Result<Vec<UserRecord>, StoreError> {
        self.read(|conn| {
            let ids: Vec<String> = {
                let mut stmt =
                    conn.prepare_cached("SELECT user_id FROM users ORDER BY user_id LIMIT ?")?;
                let mut rows = stmt.query(params![i64::from(limit)])?;
                let mut ids = Vec::new();
                while let Some(r) = rows.next()? {
                    ids.push(r.get::<_, String>(0)?);
                }
                ids
            };
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.push(load_user(conn, &id)?);
            }
            Ok(out)
        })
    }

    /// The principal of an enabled user: roles parsed, groups recorded.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown or disabled user; [`StoreError::Corrupt`] for
    /// stored roles that do not parse.
    pub async fn principal(&self, user_id: &str) -> Result<Principal, StoreError> {
        let u = self.user(user_id).await?;
        if u.disabled_at_ms.is_some() {
            return Err(StoreError::NotFound {
                kind: "user",
                id: user_id.into(),
            });
        }
        Ok(Principal {
            roles: u.roles.parse().map_err(corrupt)?,
            user: u.user_id,
            groups: u.groups,
            token_expires_at_ms: None,
        })
    }

    /// Records `user_id` in `group_id` (idempotent); `added` is false if it was already.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown user.
    pub async fn add_group_member(
        &self,
        group_id: &str,
        user_id: &str,
        now_ms: i64,
        actor: &str,
    ) -> Result<bool, StoreError> {
        let group_id = group_id.to_string();
        let user_id = user_id.to_string();
        let actor = actor.to_string();
        self.write(move |conn| {
            let known = conn
                .prepare_cached("SELECT 1 FROM users WHERE user_id = ?")?
                .query_row(params![user_id], |_| Ok(()))
                .optional()?;
            if known.is_none() {
                return Err(StoreError::NotFound {
                    kind: "user",
                    id: user_id,
                });
            }
            let n = conn
                .prepare_cached(
                    "INSERT INTO group_members (group_id, user_id, added_at_ms) VALUES (?, ?, ?) \
                     ON CONFLICT DO NOTHING",
                )?
                .execute(params![group_id, user_id, now_ms])?;
            let added = n == 1;
            if added {
                audit::append(
                    conn,
                    now_ms,
                    "group_add",
                    &group_id,
                    &serde_json::json!({"user": user_id, "by": actor}),
                )?;
            }
            Ok(added)
        })
        .await
    }

    /// Removes `user_id` from `group_id`; `removed` is false if it was not a member.
    pub async fn remove_group_member(
        &self,
        group_id: &str,
        user_id: &str,
        now_ms: i64,
        actor: &str,
    ) -> Result<bool, StoreError> {
        let group_id = group_id.to_string();
        let user_id = user_id.to_string();
        let actor = actor.to_string();
        self.write(move |conn| {
            let n = conn
                .prepare_cached("DELETE FROM group_members WHERE group_id = ? AND user_id = ?")?
                .execute(params![group_id, user_id])?;
            let removed = n == 1;
            if removed {
                audit::append(
                    conn,
                    now_ms,
                    "group_remove",
                    &group_id,
                    &serde_json::json!({"user": user_id, "by": actor}),
                )?;
            }
            Ok(removed)
        })
        .await
    }

    /// Creates a party owned by `owner`.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] if the party exists; [`StoreError::NotFound`] for an unknown
    /// owner.
    pub async fn create_party(
        &self,
        party_id: &str,
        owner: &str,
        now_ms: i64,
        actor: &str,
    ) -> Result<(), StoreError> {
        let party_id = party_id.to_string();
        let owner = owner.to_string();
        let actor = actor.to_string();
        self.write(move |conn| {
            let known = conn
                .prepare_cached("SELECT 1 FROM users WHERE user_id = ?")?
                .query_row(params![owner], |_| Ok(()))
                .optional()?;
            if known.is_none() {
                return Err(StoreError::NotFound {
                    kind: "user",
                    id: owner,
                });
            }
            let n = conn
                .prepare_cached(
                    "INSERT INTO parties (party_id, owner_user_id, created_at_ms) VALUES (?, ?, ?) \
                     ON CONFLICT(party_id) DO NOTHING",
                )?
                .execute(params![party_id, owner, now_ms])?;
            if n == 0 {
                return Err(StoreError::Conflict {
                    kind: "party",
                    id: party_id,
                });
            }
            audit::append(
                conn,
                now_ms,
                "party_create",
                &party_id,
                &serde_json::json!({"owner": owner, "by": actor}),
            )?;
            Ok(())
        })
        .await
    }

    /// Whether `party_id`, ignoring ASCII case, is already a party or is named by records made
    /// before parties had owners (a dataset, a worker, a licence or a job): such a name (or a
    /// look-alike differing only in case) may only be given an owner by the operator.
    pub async fn party_name_in_use(&self, party_id: &str) -> Result<bool, StoreError> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT 1 FROM datasets WHERE lower(owner_party) = lower(?1) \
                     UNION ALL SELECT 1 FROM workers WHERE lower(party) = lower(?1) \
                     UNION ALL SELECT 1 FROM licences WHERE lower(licensor) = lower(?1) \
                     UNION ALL SELECT 1 FROM jobs \
                       WHERE lower(buyer_party) = lower(?1) OR lower(provider_party) = lower(?1) \
                     UNION ALL SELECT 1 FROM parties WHERE lower(party_id) = lower(?1) \
                     LIMIT 1",
                )?
                .query_row(params![party_id], |_| Ok(()))
                .optional()?
                .is_some())
        })
    }

    /// One party.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown party.
    pub async fn party(&self, party_id: &str) -> Result<PartyRecord, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT party_id, owner_user_id, created_at_ms FROM parties WHERE party_id = ?",
            )?
            .query_row(params![party_id], |r| {
                Ok(PartyRecord {
                    party_id: r.get(0)?,
                    owner_user_id: r.get(1)?,
                    created_at_ms: r.get(2)?,
                })
            })
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                kind: "party",
                id: party_id.into(),
            })
        })
    }

    /// Records an issued token (its hash only). The audit entry names the token's id, owner
    /// and expiry, never the hash.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] for a record that is neither a user's API token nor a party's
    /// registration token, or that expires before it is issued; [`StoreError::NotFound`] for
    /// an unknown user or party; [`StoreError::Conflict`] for a reused id.
    pub async fn create_token(&self, t: &TokenRecord, actor: &str) -> Result<(), StoreError> {
        let (table, column, owner, owner_kind) = match (t.kind, &t.user_id, &t.party_id) {
            (TokenKind::Api, Some(u), None) => ("users", "user_id", u, "user"),
            (TokenKind::Registration, None, Some(p)) => ("parties", "party_id", p, "party"),
            _ => {
                return Err(StoreError::Invalid {
                    field: "token",
                    reason: "an API token belongs to a user, a registration token to a party"
                        .into(),
                });
            }
        };
        if t.expires_at_ms <= t.created_at_ms {
            return Err(StoreError::Invalid {
                field: "expires_at",
                reason: "a token must expire after it is issued".into(),
            });
        }
        let owner = owner.clone();
        let t = t.clone();
        let actor = actor.to_string();
        self.write(move |conn| {
            let known = conn
                .prepare_cached(&format!("SELECT 1 FROM {table} WHERE {column} = ?"))?
                .query_row(params![owner], |_| Ok(()))
                .optional()?;
            if known.is_none() {
                return Err(StoreError::NotFound {
                    kind: owner_kind,
                    id: owner,
                });
            }
            let n = conn
                .prepare_cached(
                    "INSERT INTO tokens (token_id, kind, user_id, party_id, secret_sha256, label, \
                     created_at_ms, expires_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
                     ON CONFLICT(token_id) DO NOTHING",
                )?
                .execute(params![
                    t.token_id,
                    kind_text(t.kind),
                    t.user_id,
                    t.party_id,
                    t.secret_sha256,
                    t.label,
                    t.created_at_ms,
                    t.expires_at_ms
                ])?;
            if n == 0 {
                return Err(StoreError::Conflict {
                    kind: "token",
                    id: t.token_id.clone(),
                });
            }
            audit::append(
                conn,
                t.created_at_ms,
                "token_issue",
                &t.token_id,
                &serde_json::json!({
                    "kind": kind_text(t.kind),
                    "user": t.user_id,
                    "party": t.party_id,
                    "label": t.label,
                    "expires_at_ms": t.expires_at_ms,
                    "secret_sha256": hex::encode(&t.secret_sha256),
                    "by": actor,
                }),
            )?;
            Ok(())
        })
        .await
    }

    /// One token by its public id (`None`: no such token).
    pub async fn token(&self, token_id: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!("{TOKEN_COLUMNS} WHERE token_id = ?"))?;
            let mut rows = stmt.query(params![token_id])?;
            rows.next()?.map(token_from_row).transpose()
        })
    }

    /// A user's API tokens and the registration tokens of the parties it owns (or every
    /// token, for `None`), newest first, at most `limit`.
    pub async fn tokens(
        &self,
        user_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "{TOKEN_COLUMNS} WHERE ?1 IS NULL OR (kind = 'api' AND user_id = ?1) \
                 OR (kind = 'registration' AND party_id IN \
                     (SELECT party_id FROM parties WHERE owner_user_id = ?1)) \
                 ORDER BY created_at_ms DESC, token_id LIMIT ?2"
            ))?;
            let mut rows = stmt.query(params![user_id, i64::from(limit)])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(token_from_row(r)?);
            }
            Ok(out)
        })
    }

    /// Revokes a token; revoking twice is a no-op.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown token.
    pub async fn revoke_token(
        &self,
        token_id: &str,
        now_ms: i64,
        actor: &str,
    ) -> Result<(), StoreError> {
        self.stamp_once(
            "UPDATE tokens SET revoked_at_ms = COALESCE(revoked_at_ms, ?) WHERE token_id = ?",
            ("token", token_id),
            now_ms,
            "token_revoke",
            actor,
        )
        .await
    }
}

impl Store {
    /// Records a denied call of an operation whose rule audits denials: the operation, the
    /// caller (ids only) and the rule that failed.
    pub async fn record_denial(
        &self,
        now_ms: i64,
        operation: &str,
        caller: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        let operation = operation.to_string();
        let detail = serde_json::json!({"caller": caller, "reason": reason});
        self.write(move |conn| {
            audit::append(conn, now_ms, "denied", &operation, &detail)?;
            Ok(())
        })
        .await
    }
}

impl Store {
    /// Revokes every live API token of `user_id` but `except`, each with its audit entry;
    /// returns how many.
    pub async fn revoke_user_tokens(
        &self,
        user_id: &str,
        except: &str,
        now_ms: i64,
        actor: &str,
    ) -> Result<u64, StoreError> {
        let user_id = user_id.to_string();
        let except = except.to_string();
        let actor = actor.to_string();
        self.write(move |conn| {
            let ids: Vec<String> = {
                let mut stmt = conn.prepare_cached(
                    "SELECT token_id FROM tokens WHERE kind = 'api' AND user_id = ? AND token_id != ? \
                     AND revoked_at_ms IS NULL ORDER BY token_id",
                )?;
                let mut rows = stmt.query(params![user_id, except])?;
                let mut ids = Vec::new();
                while let Some(r) = rows.next()? {
                    ids.push(r.get::<_, String>(0)?);
                }
                ids
            };
            for id in &ids {
                conn.prepare_cached("UPDATE tokens SET revoked_at_ms = ? WHERE token_id = ?")?
                    .execute(params![now_ms, id])?;
                audit::append(
                    conn,
                    now_ms,
                    "token_revoke",
                    id,
                    &serde_json::json!({"by": actor}),
                )?;
            }
            Ok(ids.len() as u64)
        })
        .await
    }
}

impl Store {
    /// One worker credential by its public id (`None`: no such credential).
    ///
    /// # Errors
    /// `Db`.
    pub async fn worker_credential(
        &self,
        token_id: &str,
    ) -> Result<Option<WorkerCredentialRecord>, StoreError> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT token_id, worker_id, party, secret_sha256, issued_at_ms, revoked_at_ms \
                     FROM worker_credentials WHERE token_id = ?",
                )?
                .query_row(params![token_id], |r| {
                    Ok(WorkerCredentialRecord {
                        token_id: r.get(0)?,
                        worker_id: r.get(1)?,
                        party: r.get(2)?,
                        secret_sha256: r.get(3)?,
                        issued_at_ms: r.get(4)?,
                        revoked_at_ms: r.get(5)?,
                    })
                })
                .optional()?)
        })
    }

    /// The parties `user_id` owns.
    ///
    /// # Errors
    /// `Db`.
    pub async fn owned_parties(&self, user_id: &str) -> Result<BTreeSet<String>, StoreError> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT party_id FROM parties WHERE owner_user_id = ?")?;
            let mut rows = stmt.query(params![user_id])?;
            let mut out = BTreeSet::new();
            while let Some(r) = rows.next()? {
                out.insert(r.get::<_, String>(0)?);
            }
            Ok(out)
        })
    }

    /// What already holds `name`, ignoring ASCII case: `Some("user")`, `Some("group")` (a
    /// group with a recorded member) or `None`. Users and groups share one namespace, since a
    /// licence's licensee and a policy's `relUsers` may name either.
    ///
    /// # Errors
    /// `Db`.
    pub async fn account_name_in_use(
        &self,
        name: &str,
    ) -> Result<Option<&'static str>, StoreError> {
        let kind: Option<String> = self.read(|conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT 'user' FROM users WHERE lower(user_id) = lower(?1) \
                     UNION ALL SELECT 'group' FROM group_members WHERE lower(group_id) = lower(?1) \
                     LIMIT 1",
                )?
                .query_row(params![name], |r| r.get::<_, String>(0))
                .optional()?)
        })?;
        Ok(match kind.as_deref() {
            Some("user") => Some("user"),
            Some(_) => Some("group"),
            None => None,
        })
    }

    /// Whether `name` is a user or a group with at least one recorded member.
    ///
    /// # Errors
    /// `Db`.
    pub async fn user_or_group_exists(&self, name: &str) -> Result<bool, StoreError> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT 1 FROM users WHERE user_id = ?1 \
                     UNION ALL SELECT 1 FROM group_members WHERE group_id = ?1 LIMIT 1",
                )?
                .query_row(params![name], |_| Ok(()))
                .optional()?
                .is_some())
        })
    }
}

const TOKEN_COLUMNS: &str = "SELECT token_id, kind, user_id, party_id, secret_sha256, label, \
     created_at_ms, expires_at_ms, revoked_at_ms FROM tokens";

fn token_from_row(r: &rusqlite::Row<'_>) -> Result<TokenRecord, StoreError> {
    let kind = match r.get::<_, String>(1)?.as_str() {
        "api" => TokenKind::Api,
        "registration" => TokenKind::Registration,
        other => return Err(corrupt(format!("token kind {other:?}"))),
    };
    Ok(TokenRecord {
        token_id: r.get(0)?,
        kind,
        user_id: r.get(2)?,
        party_id: r.get(3)?,
        secret_sha256: r.get(4)?,
        label: r.get(5)?,
        created_at_ms: r.get(6)?,
        expires_at_ms: r.get(7)?,
        revoked_at_ms: r.get(8)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_auth::{Role, Token};

    fn kinds_of_accounts(kind: &str) -> bool {
        kind.starts_with("user_")
            || kind.starts_with("group_")
            || kind.starts_with("token_")
            || kind == "party_create"
    }

    async fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("tessera.db"))
            .await
            .expect("open");
        (dir, store)
    }

    fn api_token(user: &str, now: i64) -> (Token, TokenRecord) {
        let mut rng = rand_core::OsRng;
        let t = Token::generate(TokenKind::Api, &mut rng);
        let rec = TokenRecord {
            token_id: t.id().to_owned(),
            kind: TokenKind::Api,
            user_id: Some(user.into()),
            party_id: None,
            secret_sha256: t.secret_hash().to_vec(),
            label: "laptop".into(),
            created_at_ms: now,
            expires_at_ms: now + 1000,
            revoked_at_ms: None,
        };
        (t, rec)
    }

    #[tokio::test]
    async fn users_groups_parties_and_tokens_round_trip_and_are_audited() {
        let (_d, s) = open().await;
        assert!(!s.has_users().await.expect("has"));
        s.create_user("root", Roles::of(&[Role::Operator]), 1, "test")
            .await
            .expect("root");
        s.create_user(
            "alice",
            Roles::of(&[Role::Buyer, Role::Provider]),
            2,
            "test",
        )
        .await
        .expect("alice");
        assert!(s.has_users().await.expect("has"));
        assert!(matches!(
            s.create_user("alice", Roles::of(&[Role::Buyer]), 3, "test")
                .await,
            Err(StoreError::Conflict { .. })
        ));
        assert!(matches!(
            s.create_user("bob", Roles::NONE, 3, "test").await,
            Err(StoreError::Invalid { .. })
        ));
        assert!(
            s.add_group_member("analysts", "alice", 4, "test")
                .await
                .expect("add")
        );
        assert!(
            !s.add_group_member("analysts", "alice", 5, "test")
                .await
                .expect("again")
        );
        assert!(matches!(
            s.add_group_member("analysts", "nobody", 5, "test").await,
            Err(StoreError::NotFound { .. })
        ));
        let p = s.principal("alice").await.expect("principal");
        assert!(p.roles.has(Role::Buyer) && p.roles.has(Role::Provider));
        assert!(p.is_or_belongs_to("analysts"));

        s.create_party("shop", "alice", 6, "test")
            .await
            .expect("party");
        assert_eq!(s.party("shop").await.expect("party").owner_user_id, "alice");
        assert!(matches!(
            s.create_party("shop", "root", 7, "test").await,
            Err(StoreError::Conflict { .. })
        ));
        assert!(matches!(
            s.create_party("x", "nobody", 7, "test").await,
            Err(StoreError::NotFound { .. })
        ));

        let (t, rec) = api_token("alice", 10);
        s.create_token(&rec, "test").await.expect("token");
        let got = s.token(t.id()).await.expect("read").expect("some");
        assert!(t.matches(&got.secret_sha256));
        assert_eq!(s.tokens(Some("alice"), 10).await.expect("list").len(), 1);
        assert!(s.tokens(Some("root"), 10).await.expect("list").is_empty());
        s.revoke_token(t.id(), 11, "test").await.expect("revoke");
        s.revoke_token(t.id(), 12, "test")
            .await
            .expect("revoke twice");
        let got = s.token(t.id()).await.expect("read").expect("some");
        assert_eq!(got.revoked_at_ms, Some(11));
        assert!(!format!("{got:?}").contains("secret"), "{got:?}");

        // A registration token belongs to a party, never to a user as well.
        let (_, mut bad) = api_token("alice", 20);
        bad.party_id = Some("shop".into());
        assert!(matches!(
            s.create_token(&bad, "test").await,
            Err(StoreError::Invalid { .. })
        ));
        let (_, mut expired) = api_token("alice", 20);
        expired.expires_at_ms = 20;
        assert!(matches!(
            s.create_token(&expired, "test").await,
            Err(StoreError::Invalid { .. })
        ));

        s.remove_group_member("analysts", "alice", 30, "test")
            .await
            .expect("remove");
        s.disable_user("alice", 31, "test").await.expect("disable");
        assert!(matches!(
            s.principal("alice").await,
            Err(StoreError::NotFound { .. })
        ));

        // Every change is in the chain, with who made it; the secret's hash is recorded (so a
        // swapped hash is detectable), never the secret.
        let entries = s.audit_entries().await.expect("audit");
        let kinds: Vec<&str> = entries.iter().map(|e| e.kind.as_str()).collect();
        for k in [
            "user_create",
            "group_add",
            "party_create",
            "token_issue",
            "token_revoke",
            "group_remove",
            "user_disable",
        ] {
            assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
        }
        let secret_hex = hex::encode(&rec.secret_sha256);
        assert!(entries.iter().any(|e| e.detail_json.contains(&secret_hex)));
        for e in entries.iter().filter(|e| kinds_of_accounts(&e.kind)) {
            assert!(e.detail_json.contains("\"by\":\"test\""), "{e:?}");
        }
        assert!(s.verify_audit().await.expect("verify").ok());
    }
}
