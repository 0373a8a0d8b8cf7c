//! Datasets and licences: the records a job runs under. The service validates a request,
//! checks it against what is stored (a dataset is licensed by its owner only) and records it
//! with its audit entry.

use std::sync::Arc;

use tessera_accounting::JobPrice;
use tessera_core::Clock;
use tessera_policy::UsagePolicy;
use tessera_store::{DatasetRecord, LicenceRecord, Store};

use crate::validate::{DESCRIPTION_CHARS_MAX, dataset_location, required};
use crate::{Ids, SchedulerError};

/// A dataset as a provider declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDataset {
    /// New dataset id.
    pub dataset_id: String,
    /// The party that owns it (and alone may license it).
    pub owner_party: String,
    /// File name inside the owning worker's dataset directory (CSV or Parquet).
    pub location: String,
    /// Free text (cut at 1,024 characters).
    pub description: String,
    /// Rows the owner declares; a job's hold (and so its maximum charge) is sized on it.
    pub declared_rows: Option<u64>,
}

/// A licence as its licensor grants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLicence {
    /// The provider party.
    pub licensor: String,
    /// The licensee: a user id, or a group the operator records users in.
    pub licensee: String,
    /// The dataset licensed.
    pub dataset_id: String,
    /// Usage policy as JSON in T/AI 123.12 shape (tables A.48-A.50).
    pub policy_json: String,
    /// Per-job and per-1,000-rows price and the operator's share.
    pub price: JobPrice,
    /// Monthly price of a licence term, micros (0: none; operations manual §1.4.5).
    pub monthly_price_micros: i64,
}

/// Datasets and licences.
#[derive(Debug, Clone)]
pub struct RecordService {
    store: Store,
    clock: Arc<dyn Clock>,
    ids: Arc<Ids>,
}

impl RecordService {
    pub(crate) fn new(store: Store, clock: Arc<dyn Clock>, ids: Arc<Ids>) -> Self {
        Self { store, clock, ids }
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// Records a dataset.
    ///
    /// # Errors
    /// `Invalid` for a malformed field or a location that is not a plain file name; the
    /// store's `Conflict` when the id is taken.
    pub async fn create_dataset(&self, d: NewDataset) -> Result<DatasetRecord, SchedulerError> {
        required("dataset_id", &d.dataset_id)?;
        required("owner_party", &d.owner_party)?;
        dataset_location("location", &d.location)?;
        if let Some(rows) = d.declared_rows
            && i64::try_from(rows).is_err()
        {
            return Err(SchedulerError::Invalid(format!(
                "declared_rows {rows} is out of range"
            )));
        }
        let record = DatasetRecord {
            dataset_id: d.dataset_id,
            owner_party: d.owner_party,
            location: d.location,
            description: d.description.chars().take(DESCRIPTION_CHARS_MAX).collect(),
            declared_rows: d.declared_rows,
        };
        self.store
            .create_dataset(&record, self.clock.now_ms())
            .await?;
        Ok(record)
    }

    /// Grants a licence on a dataset; only the dataset's owner can license it.
    ///
    /// # Errors
    /// `Invalid` for a malformed field, policy or price, a licensee that is neither a user nor
    /// a recorded group, or a licensor who does not own the dataset; the store's `NotFound`
    /// for an unknown dataset.
    pub async fn create_licence(&self, l: NewLicence) -> Result<LicenceRecord, SchedulerError> {
        required("licensor", &l.licensor)?;
        required("licensee", &l.licensee)?;
        required("dataset_id", &l.dataset_id)?;
        let policy = UsagePolicy::from_json(&l.policy_json)
            .map_err(|e| SchedulerError::Invalid(e.to_string()))?;
        // A policy whose validity window is already over could never admit a job.
        policy
            .check_can_admit(self.clock.now_ms(), self.store.zone())
            .map_err(|e| SchedulerError::Invalid(e.to_string()))?;
        l.price
            .validate()
            .map_err(|e| SchedulerError::Invalid(e.to_string()))?;
        if !self.store.user_or_group_exists(&l.licensee).await? {
            return Err(SchedulerError::Invalid(format!(
                "licensee {} is neither a user nor a group with recorded members",
                l.licensee
            )));
        }
        let dataset = self.store.dataset(&l.dataset_id).await?;
        if dataset.owner_party != l.licensor {
            return Err(SchedulerError::Invalid(format!(
                "dataset {} belongs to {}, who alone can license it",
                dataset.dataset_id, dataset.owner_party
            )));
        }
        crate::validate::scenes_fit_dataset(&policy, &dataset.dataset_id, &dataset.location)?;
        crate::validate::amount("monthly_price_micros", l.monthly_price_micros)?;
        crate::validate::amount("price_per_job_micros", l.price.per_job_micros)?;
        crate::validate::amount("price_per_1k_rows_micros", l.price.per_1k_rows_micros)?;
        let licence_id = self.ids.next("lic-");
        let record = LicenceRecord {
            licence_id: licence_id.clone(),
            licensor: l.licensor,
            licensee: l.licensee,
            dataset_id: l.dataset_id,
            policy,
            price: l.price,
            monthly_price_micros: l.monthly_price_micros,
        };
        self.store
            .create_licence(&record, self.clock.now_ms())
            .await?;
        self.licence(&licence_id).await
    }

    /// A licence with its current remaining counts.
    ///
    /// # Errors
    /// The store's `NotFound` for an unknown licence.
    pub async fn licence(&self, licence_id: &str) -> Result<LicenceRecord, SchedulerError> {
        Ok(self.store.licence(licence_id).await?)
    }

    /// Why `licence_id` admits no more jobs, if it was withdrawn (a revoked licence, policy
    /// or publication of the trade flow); `None`: in force.
    ///
    /// # Errors
    /// The store's.
    pub async fn withdrawn(&self, licence_id: &str) -> Result<Option<String>, SchedulerError> {
        Ok(self.store.licence_withdrawn(licence_id).await?)
    }
}
