//! The key broker's wrapped dataset keys (`tee` scene): stored once per dataset, with the
//! audit entry of their making in the same transaction. The store holds only what the
//! operator's master key wraps; it never sees a key in clear.

use rusqlite::{OptionalExtension, params};

use crate::{Store, StoreError, audit};

impl Store {
    /// Stores `wrapped_json` as the wrapped key of `dataset_id` unless one is stored; the
    /// stored one is returned either way (a concurrent first call may have won), with whether
    /// this call stored it. A new key is audited as `tee_key_create` with `detail`.
    /// Group-committed (`writer`).
    ///
    /// # Errors
    /// `Db`; [`StoreError::NotCommitted`].
    pub async fn put_tee_key(
        &self,
        dataset_id: &str,
        wrapped_json: &str,
        now_ms: i64,
        detail: &serde_json::Value,
    ) -> Result<(String, bool), StoreError> {
        let (dataset_id, wrapped_json, detail) = (
            dataset_id.to_string(),
            wrapped_json.to_string(),
            detail.clone(),
        );
        self.write(move |conn| {
            let existing: Option<String> = conn
                .prepare_cached("SELECT wrapped_json FROM tee_dataset_keys WHERE dataset_id = ?")?
                .query_row(params![&dataset_id], |r| r.get(0))
                .optional()?;
            if let Some(w) = existing {
                return Ok((w, false));
            }
            conn.prepare_cached(
                "INSERT INTO tee_dataset_keys (dataset_id, wrapped_json, created_at_ms) \
                 VALUES (?, ?, ?)",
            )?
            .execute(params![&dataset_id, &wrapped_json, now_ms])?;
            audit::append(conn, now_ms, "tee_key_create", &dataset_id, &detail)?;
            Ok((wrapped_json, true))
        })
        .await
    }

    /// Every stored wrapped key: (dataset id, wrapped JSON), in dataset order.
    ///
    /// # Errors
    /// `Db`.
    pub async fn tee_keys(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT dataset_id, wrapped_json FROM tee_dataset_keys ORDER BY dataset_id",
            )?;
            let mut rows = stmt.query([])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push((r.get(0)?, r.get(1)?));
            }
            Ok(out)
        })
    }
}
