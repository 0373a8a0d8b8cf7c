//! The key broker's wrapped dataset keys (`tee` scene): stored once per dataset, with the
//! audit entry of their making in the same transaction. The store holds only what the
//! operator's master key wraps; it never sees a key in clear.

use crate::{Store, StoreError, audit};

impl Store {
    /// Stores `wrapped_json` as the wrapped key of `dataset_id` unless one is stored; the
    /// stored one is returned either way (a concurrent first call may have won), with whether
    /// this call stored it. A new key is audited as `tee_key_create` with `detail`.
    ///
    /// # Errors
    /// `Db`.
    pub async fn put_tee_key(
        &self,
        dataset_id: &str,
        wrapped_json: &str,
        now_ms: i64,
        detail: &serde_json::Value,
    ) -> Result<(String, bool), StoreError> {
        let mut tx = self.write.begin().await?;
        let existing: Option<String> =
            sqlx::query_scalar("SELECT wrapped_json FROM tee_dataset_keys WHERE dataset_id = ?")
                .bind(dataset_id)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(w) = existing {
            return Ok((w, false));
        }
        sqlx::query(
            "INSERT INTO tee_dataset_keys (dataset_id, wrapped_json, created_at_ms) \
             VALUES (?, ?, ?)",
        )
        .bind(dataset_id)
        .bind(wrapped_json)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        audit::append(&mut tx, now_ms, "tee_key_create", dataset_id, detail).await?;
        tx.commit().await?;
        Ok((wrapped_json.to_string(), true))
    }

    /// Every stored wrapped key: (dataset id, wrapped JSON), in dataset order.
    ///
    /// # Errors
    /// `Db`.
    pub async fn tee_keys(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT dataset_id, wrapped_json FROM tee_dataset_keys ORDER BY dataset_id",
        )
        .fetch_all(&mut *self.read.acquire().await?)
        .await?)
    }
}
