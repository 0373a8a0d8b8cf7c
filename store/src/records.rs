//! Workers, datasets and licences with their usage policies.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use tessera_accounting::JobPrice;
use tessera_core::WorkerAttributes;
use tessera_policy::UsagePolicy;

use crate::{Store, StoreError, WorkerCredentialRecord, audit};

/// A registered worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerRecord {
    /// Worker id.
    pub worker_id: String,
    /// Declared attributes.
    pub attributes: WorkerAttributes,
    /// Address for peer links.
    pub peer_addr: String,
    /// Last heartbeat.
    pub last_seen_ms: i64,
}

/// A dataset held by a party's worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DatasetRecord {
    /// Dataset id.
    pub dataset_id: String,
    /// The party whose workers hold it.
    pub owner_party: String,
    /// File name inside the owning worker's dataset directory.
    pub location: String,
    /// Free text.
    pub description: String,
    /// Rows the owner declares; a job's hold is sized on it (`None`: undeclared, the hold
    /// covers the per-job price only and the row charge is capped at it).
    pub declared_rows: Option<u64>,
}

/// A licence with its policy; `policy.use_scenes[].remaining_counts` reflects the store.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LicenceRecord {
    /// Licence id.
    pub licence_id: String,
    /// Provider party.
    pub licensor: String,
    /// Buyer user.
    pub licensee: String,
    /// Licensed dataset.
    pub dataset_id: String,
    /// Usage policy.
    pub policy: UsagePolicy,
    /// Price of a job.
    pub price: JobPrice,
    /// Monthly price of a licence term (0: no term needed, jobs are only metered). When set,
    /// jobs run only inside a paid term (operations manual §1.4.5).
    pub monthly_price_micros: i64,
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

impl Store {
    /// Inserts or refreshes a worker's registration, by `actor` (audited). A worker id stays
    /// with the party it was first registered to. With `credential`, the worker's previous
    /// credential is revoked and this one recorded (hash only), in the same transaction.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] for a worker id registered to another party;
    /// [`StoreError::Invalid`] for a credential of another worker or party; `Db`.
    pub async fn upsert_worker(
        &self,
        w: &WorkerRecord,
        now_ms: i64,
        credential: Option<&WorkerCredentialRecord>,
        actor: &str,
    ) -> Result<(), StoreError> {
        let attrs = serde_json::to_string(&w.attributes).map_err(corrupt)?;
        let w = w.clone();
        let credential = credential.cloned();
        let actor = actor.to_string();
        self.write(move |conn| {
            let party: Option<String> = conn
                .prepare_cached("SELECT party FROM workers WHERE worker_id = ?")?
                .query_row(params![w.worker_id], |r| r.get::<_, String>(0))
                .optional()?;
            if party.is_some_and(|p| p != w.attributes.party) {
                return Err(StoreError::Conflict {
                    kind: "worker",
                    id: format!("{} (registered to another party)", w.worker_id),
                });
            }
            conn.prepare_cached(
                "INSERT INTO workers (worker_id, party, attributes_json, peer_addr, registered_at_ms, last_seen_ms) \
                 VALUES (?, ?, ?, ?, ?, ?) \
                 ON CONFLICT(worker_id) DO UPDATE SET attributes_json = excluded.attributes_json, \
                 peer_addr = excluded.peer_addr, last_seen_ms = excluded.last_seen_ms",
            )?
            .execute(params![
                w.worker_id,
                w.attributes.party,
                attrs,
                w.peer_addr,
                now_ms,
                now_ms
            ])?;
            audit::append(
                conn,
                now_ms,
                "worker_register",
                &w.worker_id,
                &serde_json::json!({"attributes": w.attributes, "peer_addr": w.peer_addr, "by": actor}),
            )?;
            if let Some(c) = &credential {
                if c.worker_id != w.worker_id || c.party != w.attributes.party {
                    return Err(StoreError::Invalid {
                        field: "credential",
                        reason: "a worker credential names the worker and party it registers"
                            .into(),
                    });
                }
                crate::accounts::replace_worker_credential(conn, c, &actor)?;
            }
            Ok(())
        })
        .await
    }

    /// The party a worker id is registered to (`None`: never registered).
    ///
    /// # Errors
    /// `Db`.
    pub async fn worker_party(&self, worker_id: &str) -> Result<Option<String>, StoreError> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached("SELECT party FROM workers WHERE worker_id = ?")?
                .query_row(params![worker_id], |r| r.get::<_, String>(0))
                .optional()?)
        })
    }

    /// Records a heartbeat.
    pub async fn touch_worker(&self, worker_id: &str, now_ms: i64) -> Result<(), StoreError> {
        let worker_id = worker_id.to_string();
        self.write(move |conn| {
            let n = conn
                .prepare_cached("UPDATE workers SET last_seen_ms = ? WHERE worker_id = ?")?
                .execute(params![now_ms, worker_id])?;
            if n == 0 {
                return Err(StoreError::NotFound {
                    kind: "worker",
                    id: worker_id,
                });
            }
            Ok(())
        })
        .await
    }

    /// Creates a dataset record.
    pub async fn create_dataset(&self, d: &DatasetRecord, now_ms: i64) -> Result<(), StoreError> {
        let d = d.clone();
        self.write(move |conn| {
            let n = conn
                .prepare_cached(
                    "INSERT INTO datasets (dataset_id, owner_party, location, description, created_at_ms, declared_rows) \
                     VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(dataset_id) DO NOTHING",
                )?
                .execute(params![
                    d.dataset_id,
                    d.owner_party,
                    d.location,
                    d.description,
                    now_ms,
                    d.declared_rows.map(|r| i64::try_from(r).unwrap_or(i64::MAX))
                ])?;
            if n == 0 {
                return Err(StoreError::Conflict {
                    kind: "dataset",
                    id: d.dataset_id.clone(),
                });
            }
            audit::append(
                conn,
                now_ms,
                "dataset_create",
                &d.dataset_id,
                &serde_json::json!(d),
            )?;
            Ok(())
        })
        .await
    }

    /// Reads a dataset record.
    pub async fn dataset(&self, dataset_id: &str) -> Result<DatasetRecord, StoreError> {
        self.read(|conn| {
            let (dataset_id_stored, owner_party, location, description, declared_rows) = conn
                .prepare_cached(
                    "SELECT dataset_id, owner_party, location, description, declared_rows FROM datasets WHERE dataset_id = ?",
                )?
                .query_row(params![dataset_id], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, Option<i64>>(4)?,
                    ))
                })
                .optional()?
                .ok_or_else(|| StoreError::NotFound {
                    kind: "dataset",
                    id: dataset_id.into(),
                })?;
            Ok(DatasetRecord {
                dataset_id: dataset_id_stored,
                owner_party,
                location,
                description,
                declared_rows: declared_rows
                    .map(|v| u64::try_from(v).map_err(corrupt))
                    .transpose()?,
            })
        })
    }

    /// Creates a licence and its scene counters; `remainingCounts` starts at `counts`.
    pub async fn create_licence(&self, l: &LicenceRecord, now_ms: i64) -> Result<(), StoreError> {
        let l = l.clone();
        self.write(move |conn| insert_licence(conn, &l, now_ms))
            .await
    }

    /// Reads a licence with its current remaining counts.
    pub async fn licence(&self, licence_id: &str) -> Result<LicenceRecord, StoreError> {
        self.read(|conn| load_licence(conn, licence_id))
    }
}

/// Loads a licence on the given connection (inside a transaction when admitting).
pub(crate) fn load_licence(
    conn: &Connection,
    licence_id: &str,
) -> Result<LicenceRecord, StoreError> {
    let (
        licence_id_stored,
        licensor,
        licensee,
        dataset_id,
        policy_json,
        per_job_micros,
        per_1k_rows_micros,
        bps,
        monthly_price_micros,
    ) = conn
        .prepare_cached(
            "SELECT licence_id, licensor, licensee, dataset_id, policy_json, price_per_job_micros, \
             price_per_1k_rows_micros, operator_share_bps, monthly_price_micros FROM licences WHERE licence_id = ?",
        )?
        .query_row(params![licence_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, i64>(7)?,
                r.get::<_, i64>(8)?,
            ))
        })
        .optional()?
        .ok_or_else(|| StoreError::NotFound {
            kind: "licence",
            id: licence_id.into(),
        })?;
    let mut policy: UsagePolicy = serde_json::from_str(&policy_json).map_err(corrupt)?;
    let mut stmt =
        conn.prepare_cached("SELECT scene, remaining FROM licence_scenes WHERE licence_id = ?")?;
    let mut scenes = stmt.query(params![licence_id])?;
    while let Some(s) = scenes.next()? {
        let scene: String = s.get(0)?;
        let remaining: Option<i64> = s.get(1)?;
        if let Some(ps) = policy.use_scenes.iter_mut().find(|p| p.use_sence == scene) {
            ps.remaining_counts = remaining
                .map(|r| u64::try_from(r).map_err(corrupt))
                .transpose()?;
        }
    }
    Ok(LicenceRecord {
        licence_id: licence_id_stored,
        licensor,
        licensee,
        dataset_id,
        policy,
        price: JobPrice {
            per_job_micros,
            per_1k_rows_micros,
            operator_share_bps: u32::try_from(bps).map_err(corrupt)?,
        },
        monthly_price_micros,
    })
}

/// Inserts a licence and its scene counters inside a transaction (`remainingCounts` starts
/// at `counts`), with its `licence_create` entry.
pub(crate) fn insert_licence(
    conn: &Connection,
    l: &LicenceRecord,
    now_ms: i64,
) -> Result<(), StoreError> {
    let exists = conn
        .prepare_cached("SELECT 1 FROM datasets WHERE dataset_id = ?")?
        .query_row(params![l.dataset_id], |_| Ok(()))
        .optional()?;
    if exists.is_none() {
        return Err(StoreError::NotFound {
            kind: "dataset",
            id: l.dataset_id.clone(),
        });
    }
    let mut policy = l.policy.clone();
    for s in &mut policy.use_scenes {
        s.remaining_counts = None;
    }
    let policy_json = serde_json::to_string(&policy).map_err(corrupt)?;
    let n = conn
        .prepare_cached(
            "INSERT INTO licences (licence_id, licensor, licensee, dataset_id, policy_json, \
             price_per_job_micros, price_per_1k_rows_micros, operator_share_bps, created_at_ms, monthly_price_micros) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(licence_id) DO NOTHING",
        )?
        .execute(params![
            l.licence_id,
            l.licensor,
            l.licensee,
            l.dataset_id,
            policy_json,
            l.price.per_job_micros,
            l.price.per_1k_rows_micros,
            i64::from(l.price.operator_share_bps),
            now_ms,
            l.monthly_price_micros
        ])?;
    if n == 0 {
        return Err(StoreError::Conflict {
            kind: "licence",
            id: l.licence_id.clone(),
        });
    }
    for s in &l.policy.use_scenes {
        let counts = s.counts.map(|c| i64::try_from(c).unwrap_or(i64::MAX));
        let remaining = s
            .remaining_counts
            .or(s.counts)
            .map(|c| i64::try_from(c).unwrap_or(i64::MAX));
        conn.prepare_cached(
            "INSERT INTO licence_scenes (licence_id, scene, counts, remaining) VALUES (?, ?, ?, ?)",
        )?
        .execute(params![l.licence_id, s.use_sence, counts, remaining])?;
    }
    audit::append(
        conn,
        now_ms,
        "licence_create",
        &l.licence_id,
        &serde_json::json!({
            "licensor": l.licensor, "licensee": l.licensee, "dataset_id": l.dataset_id,
            "policy": l.policy, "price": l.price, "monthly_price_micros": l.monthly_price_micros,
        }),
    )?;
    Ok(())
}
