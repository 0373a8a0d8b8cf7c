//! Workers, datasets and licences with their usage policies.

use serde::Serialize;
use sqlx::Row;
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
        let mut tx = self.write.begin().await?;
        let party: Option<String> =
            sqlx::query_scalar("SELECT party FROM workers WHERE worker_id = ?")
                .bind(&w.worker_id)
                .fetch_optional(&mut *tx)
                .await?;
        if party.is_some_and(|p| p != w.attributes.party) {
            return Err(StoreError::Conflict {
                kind: "worker",
                id: format!("{} (registered to another party)", w.worker_id),
            });
        }
        sqlx::query(
            "INSERT INTO workers (worker_id, party, attributes_json, peer_addr, registered_at_ms, last_seen_ms) \
             VALUES (?, ?, ?, ?, ?, ?) \
             ON CONFLICT(worker_id) DO UPDATE SET attributes_json = excluded.attributes_json, \
             peer_addr = excluded.peer_addr, last_seen_ms = excluded.last_seen_ms",
        )
        .bind(&w.worker_id)
        .bind(&w.attributes.party)
        .bind(&attrs)
        .bind(&w.peer_addr)
        .bind(now_ms)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        audit::append(
            &mut tx,
            now_ms,
            "worker_register",
            &w.worker_id,
            &serde_json::json!({"attributes": w.attributes, "peer_addr": w.peer_addr, "by": actor}),
        )
        .await?;
        if let Some(c) = credential {
            if c.worker_id != w.worker_id || c.party != w.attributes.party {
                return Err(StoreError::Invalid {
                    field: "credential",
                    reason: "a worker credential names the worker and party it registers".into(),
                });
            }
            crate::accounts::replace_worker_credential(&mut tx, c, actor).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The party a worker id is registered to (`None`: never registered).
    ///
    /// # Errors
    /// `Db`.
    pub async fn worker_party(&self, worker_id: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT party FROM workers WHERE worker_id = ?")
                .bind(worker_id)
                .fetch_optional(&self.read)
                .await?,
        )
    }

    /// Records a heartbeat.
    pub async fn touch_worker(&self, worker_id: &str, now_ms: i64) -> Result<(), StoreError> {
        let r = sqlx::query("UPDATE workers SET last_seen_ms = ? WHERE worker_id = ?")
            .bind(now_ms)
            .bind(worker_id)
            .execute(&self.write)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                kind: "worker",
                id: worker_id.into(),
            });
        }
        Ok(())
    }

    /// Creates a dataset record.
    pub async fn create_dataset(&self, d: &DatasetRecord, now_ms: i64) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        let r = sqlx::query(
            "INSERT INTO datasets (dataset_id, owner_party, location, description, created_at_ms, declared_rows) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(dataset_id) DO NOTHING",
        )
        .bind(&d.dataset_id)
        .bind(&d.owner_party)
        .bind(&d.location)
        .bind(&d.description)
        .bind(now_ms)
        .bind(d.declared_rows.map(|r| i64::try_from(r).unwrap_or(i64::MAX)))
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::Conflict {
                kind: "dataset",
                id: d.dataset_id.clone(),
            });
        }
        audit::append(
            &mut tx,
            now_ms,
            "dataset_create",
            &d.dataset_id,
            &serde_json::json!(d),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Reads a dataset record.
    pub async fn dataset(&self, dataset_id: &str) -> Result<DatasetRecord, StoreError> {
        let r = sqlx::query(
            "SELECT dataset_id, owner_party, location, description, declared_rows FROM datasets WHERE dataset_id = ?",
        )
        .bind(dataset_id)
        .fetch_optional(&self.read)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            kind: "dataset",
            id: dataset_id.into(),
        })?;
        Ok(DatasetRecord {
            dataset_id: r.try_get(0)?,
            owner_party: r.try_get(1)?,
            location: r.try_get(2)?,
            description: r.try_get(3)?,
            declared_rows: r
                .try_get::<Option<i64>, _>(4)?
                .map(|v| u64::try_from(v).map_err(corrupt))
                .transpose()?,
        })
    }

    /// Creates a licence and its scene counters; `remainingCounts` starts at `counts`.
    pub async fn create_licence(&self, l: &LicenceRecord, now_ms: i64) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        insert_licence(&mut tx, l, now_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Reads a licence with its current remaining counts.
    pub async fn licence(&self, licence_id: &str) -> Result<LicenceRecord, StoreError> {
        let mut conn = self.read.acquire().await?;
        load_licence(&mut conn, licence_id).await
    }
}

/// Loads a licence on the given connection (inside a transaction when admitting).
pub(crate) async fn load_licence(
    conn: &mut sqlx::SqliteConnection,
    licence_id: &str,
) -> Result<LicenceRecord, StoreError> {
    let r = sqlx::query(
        "SELECT licence_id, licensor, licensee, dataset_id, policy_json, price_per_job_micros, \
         price_per_1k_rows_micros, operator_share_bps, monthly_price_micros FROM licences WHERE licence_id = ?",
    )
    .bind(licence_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::NotFound {
        kind: "licence",
        id: licence_id.into(),
    })?;
    let policy_json: String = r.try_get(4)?;
    let mut policy: UsagePolicy = serde_json::from_str(&policy_json).map_err(corrupt)?;
    let scenes = sqlx::query("SELECT scene, remaining FROM licence_scenes WHERE licence_id = ?")
        .bind(licence_id)
        .fetch_all(&mut *conn)
        .await?;
    for s in scenes {
        let scene: String = s.try_get(0)?;
        let remaining: Option<i64> = s.try_get(1)?;
        if let Some(ps) = policy.use_scenes.iter_mut().find(|p| p.use_sence == scene) {
            ps.remaining_counts = remaining
                .map(|r| u64::try_from(r).map_err(corrupt))
                .transpose()?;
        }
    }
    let bps: i64 = r.try_get(7)?;
    Ok(LicenceRecord {
        licence_id: r.try_get(0)?,
        licensor: r.try_get(1)?,
        licensee: r.try_get(2)?,
        dataset_id: r.try_get(3)?,
        policy,
        price: JobPrice {
            per_job_micros: r.try_get(5)?,
            per_1k_rows_micros: r.try_get(6)?,
            operator_share_bps: u32::try_from(bps).map_err(corrupt)?,
        },
        monthly_price_micros: r.try_get(8)?,
    })
}

/// Inserts a licence and its scene counters inside a transaction (`remainingCounts` starts
/// at `counts`), with its `licence_create` entry.
pub(crate) async fn insert_licence(
    tx: &mut sqlx::SqliteConnection,
    l: &LicenceRecord,
    now_ms: i64,
) -> Result<(), StoreError> {
    let exists = sqlx::query("SELECT 1 FROM datasets WHERE dataset_id = ?")
        .bind(&l.dataset_id)
        .fetch_optional(&mut *tx)
        .await?;
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
    let r = sqlx::query(
        "INSERT INTO licences (licence_id, licensor, licensee, dataset_id, policy_json, \
         price_per_job_micros, price_per_1k_rows_micros, operator_share_bps, created_at_ms, monthly_price_micros) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(licence_id) DO NOTHING",
    )
    .bind(&l.licence_id)
    .bind(&l.licensor)
    .bind(&l.licensee)
    .bind(&l.dataset_id)
    .bind(&policy_json)
    .bind(l.price.per_job_micros)
    .bind(l.price.per_1k_rows_micros)
    .bind(i64::from(l.price.operator_share_bps))
    .bind(now_ms)
    .bind(l.monthly_price_micros)
    .execute(&mut *tx)
    .await?;
    if r.rows_affected() == 0 {
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
        sqlx::query(
            "INSERT INTO licence_scenes (licence_id, scene, counts, remaining) VALUES (?, ?, ?, ?)",
        )
        .bind(&l.licence_id)
        .bind(&s.use_sence)
        .bind(counts)
        .bind(remaining)
        .execute(&mut *tx)
        .await?;
    }
    audit::append(
        tx,
        now_ms,
        "licence_create",
        &l.licence_id,
        &serde_json::json!({
            "licensor": l.licensor, "licensee": l.licensee, "dataset_id": l.dataset_id,
            "policy": l.policy, "price": l.price, "monthly_price_micros": l.monthly_price_micros,
        }),
    )
    .await?;
    Ok(())
}
