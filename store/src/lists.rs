//! Listings of jobs, datasets, licences and workers, one bounded page at a time.
//!
//! Pages follow insertion order (SQLite's `rowid`): a page asks for the rows after a cursor
//! (0 for the first page) and gets at most `limit` of them plus the cursor of the next page,
//! if there is one. New rows never shift a page already read. Each record is read with the
//! same function that reads it alone, so a listed record is exactly what a `get` returns.

use rusqlite::{ToSql, params};
use tessera_core::{JobState, WorkerAttributes};

use crate::{DatasetRecord, JobRecord, LicenceRecord, Store, StoreError, WorkerRecord};

/// Most rows one page may hold.
pub const PAGE_ROWS_MAX: u32 = 1000;

/// Which page: rows after `after` (a cursor from a previous [`Page`], 0 for the first), at
/// most `limit` of them (1 ..= [`PAGE_ROWS_MAX`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// Cursor: the `next` of the previous page, or 0.
    pub after: i64,
    /// Rows wanted.
    pub limit: u32,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The rows, in insertion order.
    pub items: Vec<T>,
    /// The cursor of the next page, when there are more rows.
    pub next: Option<i64>,
}

/// Filters of a job listing; an empty text or `None` matches every job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// The submitting user.
    pub user: String,
    /// The state.
    pub state: Option<JobState>,
    /// The licence.
    pub licence_id: String,
    /// Only the jobs this user may see (submitted by it, or of a party it owns as buyer or
    /// licensor); empty: every job.
    pub viewer: String,
}

/// Filters of a licence listing; an empty text matches every licence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LicenceFilter {
    /// The provider party.
    pub licensor: String,
    /// The buyer user.
    pub licensee: String,
    /// The licensed dataset.
    pub dataset_id: String,
    /// Only the licences this user may see (of a party it owns, or licensed to it or a group
    /// it is recorded in); empty: every licence.
    pub viewer: String,
}

impl PageRequest {
    fn checked(self) -> Result<(i64, i64), StoreError> {
        if self.limit == 0 || self.limit > PAGE_ROWS_MAX {
            return Err(StoreError::Invalid {
                field: "page_size",
                reason: format!("must be 1 ..= {PAGE_ROWS_MAX}, not {}", self.limit),
            });
        }
        if self.after < 0 {
            return Err(StoreError::Invalid {
                field: "page_token",
                reason: "must not be negative".into(),
            });
        }
        Ok((self.after, i64::from(self.limit)))
    }
}

/// Splits `limit + 1` fetched `(rowid, id)` rows into this page's ids and the next cursor.
fn split(mut rows: Vec<(i64, String)>, limit: i64) -> (Vec<String>, Option<i64>) {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let next = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|r| r.0)
    } else {
        None
    };
    (rows.into_iter().map(|r| r.1).collect(), next)
}

/// The `(rowid, id)` rows of `sql` for `page`: its parameters are the cursor, then `binds`,
/// then the number of rows to fetch (`limit + 1`).
fn ids(
    store: &Store,
    sql: &str,
    binds: &[&str],
    page: PageRequest,
) -> Result<(Vec<String>, Option<i64>), StoreError> {
    let (after, limit) = page.checked()?;
    let fetch = limit + 1;
    let mut args: Vec<&dyn ToSql> = Vec::with_capacity(binds.len() + 2);
    args.push(&after);
    for b in binds {
        args.push(b);
    }
    args.push(&fetch);
    let rows = store.read(|conn| {
        let mut stmt = conn.prepare_cached(sql)?;
        let mut rows = stmt.query(args.as_slice())?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push((r.get::<_, i64>(0)?, r.get::<_, String>(1)?));
        }
        Ok(out)
    })?;
    Ok(split(rows, limit))
}

impl Store {
    /// A page of jobs matching `filter`, oldest first.
    ///
    /// # Errors
    /// `Invalid` for a page size outside 1 ..= [`PAGE_ROWS_MAX`] or a negative cursor; `Db`.
    pub async fn list_jobs(
        &self,
        filter: &JobFilter,
        page: PageRequest,
    ) -> Result<Page<JobRecord>, StoreError> {
        let state = filter.state.map(|s| s.as_str()).unwrap_or("");
        let (ids, next) = ids(
            self,
            "SELECT rowid, job_id FROM jobs WHERE rowid > ?1 \
             AND (?2 = '' OR user_id = ?2) AND (?3 = '' OR state = ?3) \
             AND (?4 = '' OR licence_id = ?4 \
                  OR EXISTS (SELECT 1 FROM json_each(CASE WHEN co_licences = '' THEN '[]' ELSE co_licences END) c \
                             WHERE json_extract(c.value, '$.licence_id') = ?4)) \
             AND (?5 = '' OR user_id = ?5 \
                  OR buyer_party IN (SELECT party_id FROM parties WHERE owner_user_id = ?5) \
                  OR licence_id IN (SELECT licence_id FROM licences WHERE licensor IN \
                      (SELECT party_id FROM parties WHERE owner_user_id = ?5)) \
                  OR EXISTS (SELECT 1 FROM json_each(CASE WHEN co_licences = '' THEN '[]' ELSE co_licences END) c \
                             WHERE json_extract(c.value, '$.licence_id') IN \
                             (SELECT licence_id FROM licences WHERE licensor IN \
                              (SELECT party_id FROM parties WHERE owner_user_id = ?5)))) \
             ORDER BY rowid LIMIT ?6",
            &[&filter.user, state, &filter.licence_id, &filter.viewer],
            page,
        )?;
        let mut items = Vec::with_capacity(ids.len());
        for id in ids {
            items.push(self.job(&id).await?);
        }
        Ok(Page { items, next })
    }

    /// A page of datasets (of `owner_party` when not empty; only of parties `viewer` owns when
    /// it is not empty), oldest first.
    ///
    /// # Errors
    /// As [`Store::list_jobs`].
    pub async fn list_datasets(
        &self,
        owner_party: &str,
        viewer: &str,
        page: PageRequest,
    ) -> Result<Page<DatasetRecord>, StoreError> {
        let (ids, next) = ids(
            self,
            "SELECT rowid, dataset_id FROM datasets WHERE rowid > ?1 \
             AND (?2 = '' OR owner_party = ?2) \
             AND (?3 = '' OR owner_party IN \
                  (SELECT party_id FROM parties WHERE owner_user_id = ?3)) \
             ORDER BY rowid LIMIT ?4",
            &[owner_party, viewer],
            page,
        )?;
        let mut items = Vec::with_capacity(ids.len());
        for id in ids {
            items.push(self.dataset(&id).await?);
        }
        Ok(Page { items, next })
    }

    /// A page of licences matching `filter` (with their current remaining counts), oldest
    /// first.
    ///
    /// # Errors
    /// As [`Store::list_jobs`].
    pub async fn list_licences(
        &self,
        filter: &LicenceFilter,
        page: PageRequest,
    ) -> Result<Page<LicenceRecord>, StoreError> {
        let (ids, next) = ids(
            self,
            "SELECT rowid, licence_id FROM licences WHERE rowid > ?1 \
             AND (?2 = '' OR licensor = ?2) AND (?3 = '' OR licensee = ?3) \
             AND (?4 = '' OR dataset_id = ?4) \
             AND (?5 = '' OR licensee = ?5 \
                  OR licensee IN (SELECT group_id FROM group_members WHERE user_id = ?5) \
                  OR licensor IN (SELECT party_id FROM parties WHERE owner_user_id = ?5)) \
             ORDER BY rowid LIMIT ?6",
            &[
                &filter.licensor,
                &filter.licensee,
                &filter.dataset_id,
                &filter.viewer,
            ],
            page,
        )?;
        let mut items = Vec::with_capacity(ids.len());
        for id in ids {
            items.push(self.licence(&id).await?);
        }
        Ok(Page { items, next })
    }

    /// A page of registered workers (of `party` when not empty; only of parties `viewer` owns
    /// when it is not empty) last seen after `seen_after_ms`, in registration order.
    ///
    /// # Errors
    /// As [`Store::list_jobs`]; `Corrupt` for stored attributes that do not parse.
    pub async fn list_workers(
        &self,
        party: &str,
        viewer: &str,
        seen_after_ms: i64,
        page: PageRequest,
    ) -> Result<Page<WorkerRecord>, StoreError> {
        let (after, limit) = page.checked()?;
        let (mut items, cursors) = self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT rowid, worker_id, attributes_json, peer_addr, last_seen_ms FROM workers \
                 WHERE rowid > ?1 AND (?2 = '' OR party = ?2) AND last_seen_ms > ?4 \
                 AND (?5 = '' OR party IN (SELECT party_id FROM parties WHERE owner_user_id = ?5)) \
                 ORDER BY rowid LIMIT ?3",
            )?;
            let mut rows = stmt.query(params![after, party, limit + 1, seen_after_ms, viewer])?;
            let mut items = Vec::new();
            let mut cursors = Vec::new();
            while let Some(r) = rows.next()? {
                let attrs: String = r.get(2)?;
                let attributes: WorkerAttributes = serde_json::from_str(&attrs)
                    .map_err(|e| StoreError::Corrupt(format!("worker attributes: {e}")))?;
                cursors.push(r.get::<_, i64>(0)?);
                items.push(WorkerRecord {
                    worker_id: r.get(1)?,
                    attributes,
                    peer_addr: r.get(3)?,
                    last_seen_ms: r.get(4)?,
                });
            }
            Ok((items, cursors))
        })?;
        let keep = usize::try_from(limit).unwrap_or(usize::MAX);
        let next = if items.len() > keep {
            items.truncate(keep);
            cursors.get(keep.saturating_sub(1)).copied()
        } else {
            None
        };
        Ok(Page { items, next })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset(i: usize, party: &str) -> DatasetRecord {
        DatasetRecord {
            dataset_id: format!("ds-{i:03}"),
            owner_party: party.into(),
            location: format!("d{i}.csv"),
            description: String::new(),
            declared_rows: Some(i as u64),
        }
    }

    #[tokio::test]
    async fn pages_cover_every_row_once_in_order_and_filters_apply() {
        let store = Store::open_temporary().await.expect("store");
        for i in 0..25 {
            let party = if i % 5 == 0 { "p5" } else { "other" };
            store
                .create_dataset(&dataset(i, party), 1)
                .await
                .expect("ds");
        }
        let mut seen = Vec::new();
        let mut after = 0;
        let mut pages = 0;
        loop {
            let p = store
                .list_datasets("", "", PageRequest { after, limit: 10 })
                .await
                .expect("page");
            assert!(p.items.len() <= 10);
            pages += 1;
            seen.extend(p.items.into_iter().map(|d| d.dataset_id));
            match p.next {
                Some(n) => after = n,
                None => break,
            }
        }
        assert_eq!(pages, 3);
        let want: Vec<String> = (0..25).map(|i| format!("ds-{i:03}")).collect();
        assert_eq!(seen, want);
        let p5 = store
            .list_datasets(
                "p5",
                "",
                PageRequest {
                    after: 0,
                    limit: 100,
                },
            )
            .await
            .expect("filtered");
        assert_eq!(p5.items.len(), 5);
        assert!(p5.items.iter().all(|d| d.owner_party == "p5"));
        assert_eq!(p5.next, None);
        for limit in [0, PAGE_ROWS_MAX + 1] {
            assert!(
                store
                    .list_datasets("", "", PageRequest { after: 0, limit })
                    .await
                    .is_err(),
                "{limit}"
            );
        }
        let jobs = store
            .list_jobs(&JobFilter::default(), PageRequest { after: 0, limit: 5 })
            .await
            .expect("no jobs");
        assert!(jobs.items.is_empty() && jobs.next.is_none());
    }

    #[tokio::test]
    async fn a_viewer_sees_only_its_parties_and_its_or_its_groups_licences() {
        use tessera_accounting::JobPrice;
        use tessera_auth::{Role, Roles};
        use tessera_policy::UsagePolicy;
        let store = Store::open_temporary().await.expect("store");
        let provider = Roles::of(&[Role::Provider]);
        let buyer = Roles::of(&[Role::Buyer]);
        for (u, r) in [("pat", provider), ("ann", buyer), ("bob", buyer)] {
            store.create_user(u, r, 1, "test").await.expect("user");
        }
        store
            .create_party("pp", "pat", 1, "test")
            .await
            .expect("party");
        store
            .create_party("pa", "ann", 1, "test")
            .await
            .expect("party");
        store
            .add_group_member("team", "bob", 1, "test")
            .await
            .expect("group");
        for (i, party) in [(0, "pp"), (1, "pa"), (2, "unowned")] {
            store
                .create_dataset(&dataset(i, party), 1)
                .await
                .expect("ds");
        }
        let policy = UsagePolicy::from_json(
            r#"{"policyName":"p","relUsers":[{"userId":"ann","userName":"A","isGroup":0}],
                "useScenes":[{"useSence":"psi"}]}"#,
        )
        .expect("policy");
        for (id, licensee) in [("l-ann", "ann"), ("l-team", "team")] {
            store
                .create_licence(
                    &LicenceRecord {
                        licence_id: id.into(),
                        licensor: "pp".into(),
                        licensee: licensee.into(),
                        dataset_id: "ds-000".into(),
                        policy: policy.clone(),
                        price: JobPrice {
                            per_job_micros: 1,
                            per_1k_rows_micros: 0,
                            operator_share_bps: 0,
                        },
                        monthly_price_micros: 0,
                    },
                    2,
                )
                .await
                .expect("licence");
        }
        let all = PageRequest {
            after: 0,
            limit: 100,
        };
        let datasets = |v: &'static str| {
            let store = store.clone();
            async move {
                let p = store.list_datasets("", v, all).await.expect("list");
                p.items
                    .into_iter()
                    .map(|d| d.dataset_id)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(datasets("pat").await, ["ds-000"]);
        assert_eq!(datasets("ann").await, ["ds-001"]);
        assert!(datasets("bob").await.is_empty());
        assert_eq!(datasets("").await.len(), 3);
        let licences = |v: &'static str| {
            let store = store.clone();
            async move {
                let filter = LicenceFilter {
                    viewer: v.into(),
                    ..LicenceFilter::default()
                };
                let p = store.list_licences(&filter, all).await.expect("list");
                p.items
                    .into_iter()
                    .map(|l| l.licence_id)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(licences("pat").await, ["l-ann", "l-team"]);
        assert_eq!(licences("ann").await, ["l-ann"]);
        assert_eq!(licences("bob").await, ["l-team"]);
        assert!(licences("nobody").await.is_empty());
    }
}
