//! Listings for clients: jobs (with live progress where the job runs), datasets, licences and
//! workers (with whether each is live now), one bounded page at a time.
//!
//! A page is asked for with a size (0: [`PAGE_SIZE_DEFAULT`]; at most [`PAGE_SIZE_MAX`]) and
//! the token the previous page returned (empty for the first); a page returns its rows and the
//! token of the next page (empty on the last). Tokens are opaque to callers.

use tessera_auth::Viewer;
use tessera_core::JobState;
pub use tessera_store::lists::{JobFilter, LicenceFilter};
use tessera_store::lists::{PAGE_ROWS_MAX, Page, PageRequest};

use crate::{DatasetRecord, JobView, LicenceRecord, RecordService, Scheduler, SchedulerError};

/// Rows in a page when the caller names no size.
pub const PAGE_SIZE_DEFAULT: u32 = 100;
/// Most rows in one page.
pub const PAGE_SIZE_MAX: u32 = PAGE_ROWS_MAX;

/// Which page a caller asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageQuery {
    /// Rows wanted (0: [`PAGE_SIZE_DEFAULT`]).
    pub size: u32,
    /// The previous page's `next_token`, or empty for the first page.
    pub token: String,
}

/// A page of rows and the token of the next page (empty on the last page).
#[derive(Debug, Clone, PartialEq)]
pub struct Listed<T> {
    /// The rows.
    pub items: Vec<T>,
    /// Pass back as [`PageQuery::token`] for the next page; empty when there is none.
    pub next_token: String,
}

/// A registered worker and whether it is live (connected and heard from within the heartbeat
/// timeout) now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerListing {
    /// The stored registration.
    pub record: tessera_store::WorkerRecord,
    /// Live now (else lost).
    pub live: bool,
    /// Tasks of live jobs placed on it that have not reported, now.
    pub running: usize,
}

impl PageQuery {
    /// The store's page request.
    ///
    /// # Errors
    /// [`SchedulerError::Invalid`] for a size above [`PAGE_SIZE_MAX`] or a token that is not
    /// one this service handed out.
    fn request(&self) -> Result<PageRequest, SchedulerError> {
        let limit = match self.size {
            0 => PAGE_SIZE_DEFAULT,
            n if n > PAGE_SIZE_MAX => {
                return Err(SchedulerError::Invalid(format!(
                    "page_size must be at most {PAGE_SIZE_MAX}, not {n}"
                )));
            }
            n => n,
        };
        let after = if self.token.is_empty() {
            0
        } else {
            self.token
                .parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    SchedulerError::Invalid(format!("page_token {:?} is not valid", self.token))
                })?
        };
        Ok(PageRequest { after, limit })
    }
}

fn listed<T, U>(page: Page<T>, f: impl FnMut(T) -> U) -> Listed<U> {
    Listed {
        items: page.items.into_iter().map(f).collect(),
        next_token: page.next.map(|n| n.to_string()).unwrap_or_default(),
    }
}

impl Scheduler {
    /// A page of jobs matching `filter`, oldest first; a running job carries its live
    /// progress.
    ///
    /// # Errors
    /// `Invalid` for a bad page; the store's errors.
    pub async fn list_jobs(
        &self,
        filter: &JobFilter,
        page: &PageQuery,
    ) -> Result<Listed<JobView>, SchedulerError> {
        let p = self.store.list_jobs(filter, page.request()?).await?;
        let live = self.jobs.lock().await;
        Ok(listed(p, |job| match live.get(&job.job_id) {
            // A live job as its view shows it (`running` from its first progress report,
            // before the store records it at the delivery point), as `job get` does.
            Some(j) => JobView {
                job: j.view.borrow().job.clone(),
                progress: j.progress.clone(),
                refusals: Vec::new(),
            },
            None => JobView {
                job,
                progress: Vec::new(),
                refusals: Vec::new(),
            },
        }))
    }

    /// A page of registered workers (of `party` when not empty; of `viewer`'s parties only),
    /// in registration order, each with whether it is live now (else lost) and the tasks
    /// running on it (counted from the live jobs). Workers silent for [`crate::WORKER_FORGET_MS`] are left out.
    ///
    /// # Errors
    /// `Invalid` for a bad page; the store's errors.
    pub async fn list_workers(
        &self,
        party: &str,
        viewer: &Viewer,
        page: &PageQuery,
    ) -> Result<Listed<WorkerListing>, SchedulerError> {
        let viewer = rows_of(viewer)?;
        let now = self.now();
        let seen_after = now.saturating_sub(crate::WORKER_FORGET_MS);
        let p = self
            .store
            .list_workers(party, viewer, seen_after, page.request()?)
            .await?;
        let timeout = self.config.heartbeat_timeout_ms;
        let running = self.running_tasks().await;
        let workers = self.workers.lock().await;
        Ok(listed(p, |record| WorkerListing {
            live: workers
                .get(&record.worker_id)
                .is_some_and(|w| w.is_live(now, timeout)),
            running: running.get(&record.worker_id).copied().unwrap_or(0),
            record,
        }))
    }

    /// The calendar zone the operator reckons in (`+08:00`, `UTC`, an IANA name).
    pub fn time_zone(&self) -> String {
        self.store.zone().name().to_string()
    }
}

impl RecordService {
    /// A page of datasets (of `owner_party` when not empty; of `viewer`'s parties only),
    /// oldest first.
    ///
    /// # Errors
    /// `Invalid` for a bad page; the store's errors.
    pub async fn list_datasets(
        &self,
        owner_party: &str,
        viewer: &Viewer,
        page: &PageQuery,
    ) -> Result<Listed<DatasetRecord>, SchedulerError> {
        let viewer = rows_of(viewer)?;
        let p = self
            .store()
            .list_datasets(owner_party, viewer, page.request()?)
            .await?;
        Ok(listed(p, |d| d))
    }

    /// A page of licences matching `filter`, with their remaining counts, oldest first.
    ///
    /// # Errors
    /// `Invalid` for a bad page; the store's errors.
    pub async fn list_licences(
        &self,
        filter: &LicenceFilter,
        page: &PageQuery,
    ) -> Result<Listed<LicenceRecord>, SchedulerError> {
        let p = self.store().list_licences(filter, page.request()?).await?;
        Ok(listed(p, |l| l))
    }
}

/// The store's row filter for `viewer`: `""` (every row) for the operator, else the user.
///
/// # Errors
/// `Forbidden` for a caller that is no user (the table lets none list).
pub fn rows_of(viewer: &Viewer) -> Result<&str, SchedulerError> {
    match viewer {
        Viewer::All => Ok(""),
        Viewer::Own { user, .. } => Ok(user),
        Viewer::Nobody => Err(SchedulerError::Forbidden("only users see listings".into())),
    }
}

/// A job state named by its text form (`running`, `failed`, ...), for filters.
///
/// # Errors
/// [`SchedulerError::Invalid`] naming the known states.
pub fn parse_state(text: &str) -> Result<JobState, SchedulerError> {
    text.parse::<JobState>()
        .map_err(|e| SchedulerError::Invalid(format!("state: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_queries_are_bounded_and_tokens_checked() {
        let q = |size, token: &str| {
            PageQuery {
                size,
                token: token.into(),
            }
            .request()
        };
        assert_eq!(
            q(0, "").expect("default"),
            PageRequest {
                after: 0,
                limit: PAGE_SIZE_DEFAULT
            }
        );
        assert_eq!(q(PAGE_SIZE_MAX, "17").expect("max").after, 17);
        assert!(q(PAGE_SIZE_MAX + 1, "").is_err());
        for bad in ["x", "-3", "0", "1.5"] {
            assert!(q(10, bad).is_err(), "{bad}");
        }
    }
}
