//! Access: the resource a call touches, read from the store and described as a
//! [`tessera_auth::Target`], then decided by the one table ([`tessera_auth::authorize`],
//! through [`AccountService::authorize`], which audits the denials the table says to). The
//! gateway calls one `check_*` per request before it calls any other service; nothing here
//! decides access itself.
//!
//! Also [`AccountService::viewer`]: whose rows a listing shows and which side of a job the
//! caller is on (`tessera_auth::Viewer`).

use tessera_auth::{Caller, Operation, Target, Viewer};
use tessera_store::StoreError;

use crate::{AccountService, JobRequest, SchedulerError};

/// `Ok(None)` for a store `NotFound`, the record otherwise.
fn found<T>(r: Result<T, StoreError>) -> Result<Option<T>, SchedulerError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

impl AccountService {
    /// The rows `caller` sees and the side of a job it is on.
    ///
    /// # Errors
    /// A store failure.
    pub async fn viewer(&self, caller: &Caller) -> Result<Viewer, SchedulerError> {
        let parties = match caller {
            Caller::User(p) if !p.is_operator() => self.store.owned_parties(&p.user).await?,
            _ => Default::default(),
        };
        Ok(Viewer::of(caller, parties))
    }

    /// `op` on nothing owned (operator-only operations, listings, the operator's info).
    ///
    /// # Errors
    /// [`SchedulerError::Forbidden`].
    pub async fn check(&self, op: Operation, caller: &Caller) -> Result<(), SchedulerError> {
        self.authorize(op, caller, &Target::default()).await
    }

    /// `op` acting for user `user` (a customer, a subscriber).
    ///
    /// # Errors
    /// [`SchedulerError::Forbidden`].
    pub async fn check_user(
        &self,
        op: Operation,
        caller: &Caller,
        user: &str,
    ) -> Result<(), SchedulerError> {
        let target = Target {
            user: Some(user),
            ..Target::default()
        };
        self.authorize(op, caller, &target).await
    }

    /// A licence term (`Subscribe`, `Unsubscribe`) for `customer` on licence `licence_id`: the
    /// caller acts for itself (the operator for anyone), and the licence must be one the
    /// caller may see; one it may not is `NotFound` exactly as an unknown id, so that neither
    /// its licensee nor its prices leak through the term's refusal.
    ///
    /// # Errors
    /// [`SchedulerError::Forbidden`]; `NotFound` as above.
    pub async fn check_term(
        &self,
        op: Operation,
        caller: &Caller,
        customer: &str,
        licence_id: &str,
    ) -> Result<(), SchedulerError> {
        self.check_user(op, caller, customer).await?;
        self.check_licence(Operation::GetLicence, caller, licence_id)
            .await
    }

    /// A deposit for `user`, into a voucher balance when `voucher`.
    ///
    /// # Errors
    /// [`SchedulerError::Forbidden`].
    pub async fn check_deposit(
        &self,
        caller: &Caller,
        user: &str,
        voucher: bool,
    ) -> Result<(), SchedulerError> {
        let target = Target {
            user: Some(user),
            voucher,
            ..Target::default()
        };
        self.authorize(Operation::Deposit, caller, &target).await
    }

    /// `op` on party `party` (creating a dataset or licence for it). An unknown party is
    /// denied to everyone but the operator, who is told it is not found.
    ///
    /// # Errors
    /// [`SchedulerError::Forbidden`]; [`SchedulerError::NotFound`] for an unknown party.
    pub async fn check_party(
        &self,
        op: Operation,
        caller: &Caller,
        party: &str,
    ) -> Result<(), SchedulerError> {
        let owner = found(self.store.party(party).await)?.map(|p| p.owner_user_id);
        let target = Target {
            party_owner: owner.as_deref(),
            ..Target::default()
        };
        self.authorize(op, caller, &target).await?;
        if owner.is_none() {
            return Err(SchedulerError::NotFound(format!(
                "party {party} (create it with its owner first: party create)"
            )));
        }
        Ok(())
    }

    /// `op` on dataset `dataset_id`: the owner of its party (a dataset the caller may not see
    /// is `NotFound`, like an unknown id).
    ///
    /// # Errors
    /// [`SchedulerError::NotFound`]; [`SchedulerError::Forbidden`].
    pub async fn check_dataset(
        &self,
        op: Operation,
        caller: &Caller,
        dataset_id: &str,
    ) -> Result<(), SchedulerError> {
        let dataset = self.store.dataset(dataset_id).await?;
        let owner = self.owner_of(&dataset.owner_party).await?;
        let target = Target {
            party_owner: owner.as_deref(),
            ..Target::default()
        };
        self.authorize_by_id(op, op, caller, &target, "dataset", dataset_id)
            .await
    }

    /// `op` on licence `licence_id`.
    ///
    /// # Errors
    /// [`SchedulerError::NotFound`] for an unknown licence; [`SchedulerError::Forbidden`].
    pub async fn check_licence(
        &self,
        op: Operation,
        caller: &Caller,
        licence_id: &str,
    ) -> Result<(), SchedulerError> {
        let licence = self.store.licence(licence_id).await?;
        let licensor_owner = self.owner_of(&licence.licensor).await?;
        let target = Target {
            licensee: Some(&licence.licensee),
            licensor_owner: licensor_owner.as_deref(),
            ..Target::default()
        };
        self.authorize_by_id(
            op,
            Operation::GetLicence,
            caller,
            &target,
            "licence",
            licence_id,
        )
        .await
    }

    /// `op` on job `job_id`: its buyer is the submitting user, its provider the owner of the
    /// licensor party.
    ///
    /// # Errors
    /// `NotFound` for an unknown job, and for a job the caller may not even see (alike, so
    /// that others' job ids cannot be probed); [`SchedulerError::Forbidden`].
    pub async fn check_job(
        &self,
        op: Operation,
        caller: &Caller,
        job_id: &str,
    ) -> Result<(), SchedulerError> {
        let job = self.store.job(job_id).await?;
        let licensor = found(self.store.licence(&job.licence_id).await)?.map(|l| l.licensor);
        let licensor_owner = match licensor {
            Some(l) => self.owner_of(&l).await?,
            None => None,
        };
        let target = Target {
            job_buyer: Some(&job.user),
            licensor_owner: licensor_owner.as_deref(),
            ..Target::default()
        };
        // An `fl` job's further providers see it as its first provider does: the rule is
        // decided (and a denial audited) once, on the target of the provider that passes.
        if tessera_auth::authorize(op, caller, &target).is_err() {
            for c in &job.co_licences {
                let owner = self.owner_of(&c.provider_party).await?;
                let co_target = Target {
                    licensor_owner: owner.as_deref(),
                    ..target
                };
                if tessera_auth::authorize(op, caller, &co_target).is_ok() {
                    return self
                        .authorize_by_id(op, Operation::GetJob, caller, &co_target, "job", job_id)
                        .await;
                }
            }
        }
        self.authorize_by_id(op, Operation::GetJob, caller, &target, "job", job_id)
            .await
    }

    /// `op` on bill `bill_id` (`YYYY-MM:customer`): its customer.
    ///
    /// # Errors
    /// [`SchedulerError::Forbidden`].
    pub async fn check_bill(
        &self,
        op: Operation,
        caller: &Caller,
        bill_id: &str,
    ) -> Result<(), SchedulerError> {
        let customer = bill_id.split_once(':').map(|(_, c)| c);
        let target = Target {
            user: customer,
            ..Target::default()
        };
        self.authorize_by_id(op, op, caller, &target, "bill", bill_id)
            .await
    }

    /// A worker's call about worker `worker_id` (heartbeat, task stream, reports).
    ///
    /// # Errors
    /// [`SchedulerError::Forbidden`].
    pub async fn check_worker(
        &self,
        op: Operation,
        caller: &Caller,
        worker_id: &str,
    ) -> Result<(), SchedulerError> {
        let target = Target {
            worker_id: Some(worker_id),
            ..Target::default()
        };
        self.authorize(op, caller, &target).await
    }

    /// A registration of worker `worker_id` (empty: a new id is drawn) for party `party`:
    /// with that party's registration token, or with the worker's own credential.
    ///
    /// # Errors
    /// [`SchedulerError::Forbidden`].
    pub async fn check_registration(
        &self,
        caller: &Caller,
        party: &str,
        worker_id: &str,
    ) -> Result<(), SchedulerError> {
        let target = Target {
            party: Some(party),
            worker_id: Some(worker_id),
            ..Target::default()
        };
        self.authorize(Operation::RegisterWorker, caller, &target)
            .await
    }

    /// A job submission: as the caller itself (an empty `user` is filled with it), under a
    /// licence licensed to it or one of its recorded groups, with a buyer party it owns and a
    /// dataset of that party. On success the request's groups are replaced by the caller's
    /// recorded groups — what the licence's `relUsers` is evaluated against; a request never
    /// names its own groups. An unknown licence or buyer dataset is left to admission, which
    /// refuses the job as not found (a recorded refusal).
    ///
    /// # Errors
    /// [`SchedulerError::Forbidden`] naming the rule that failed.
    pub async fn check_submission(
        &self,
        caller: &Caller,
        req: &mut JobRequest,
    ) -> Result<(), SchedulerError> {
        let Caller::User(principal) = caller else {
            return self.check(Operation::SubmitJob, caller).await;
        };
        if req.user.is_empty() {
            req.user = principal.user.clone();
        }
        let licensee = match found(self.store.licence(&req.licence_id).await)? {
            Some(l) => l.licensee,
            // Unknown: admission refuses it (a recorded refusal, not found).
            None => principal.user.clone(),
        };
        let buyer_party_owner = self.owner_of(&req.buyer_party).await?;
        // An unknown dataset is left to admission too (refused as not found); one of another
        // party is denied here.
        let dataset_in_buyer_party = found(self.store.dataset(&req.buyer_dataset_id).await)?
            .is_none_or(|d| d.owner_party == req.buyer_party);
        let target = Target {
            user: Some(&req.user),
            licensee: Some(&licensee),
            buyer_party_owner: buyer_party_owner.as_deref(),
            dataset_in_buyer_party,
            ..Target::default()
        };
        self.authorize(Operation::SubmitJob, caller, &target)
            .await?;
        // An `fl` job's further licences: each must be licensed to the caller as well.
        let further: Vec<String> = req
            .fl
            .as_ref()
            .map(|f| f.licences.iter().skip(1).cloned().collect())
            .unwrap_or_default();
        for id in &further {
            let licensee = match found(self.store.licence(id).await)? {
                Some(l) => l.licensee,
                None => principal.user.clone(),
            };
            let target = Target {
                licensee: Some(&licensee),
                ..target
            };
            self.authorize(Operation::SubmitJob, caller, &target)
                .await?;
        }
        req.user_groups = principal.groups.iter().cloned().collect();
        Ok(())
    }

    /// The owner of `party` (`None`: no such party, or one made before parties had owners).
    pub(crate) async fn owner_of(&self, party: &str) -> Result<Option<String>, SchedulerError> {
        Ok(found(self.store.party(party).await)?.map(|p| p.owner_user_id))
    }
}
