//! The T/AI 123.12 trade flow (appendix A.1–A.3) as an application service: each operation
//! validates its request (`tessera_trade::fields`), asks the one table whether the caller may
//! do it on the resource it names (`tessera_auth`, through [`AccountService::authorize`]),
//! and records the result in the store; each answer is the standard's `data` object, with
//! the standard's field names.
//!
//! Choices where the standard is silent (also in ARCHITECTURE.md):
//! - `owner` is a party the caller owns; `demander` is the calling user itself (empty: the
//!   caller); `dataID` names a dataset recorded on this node, owned by `owner`.
//! - Published data and published demands are visible to every user (a catalogue); an
//!   unpublished demand only to its demander, a confirmation, settlement or delivery only to
//!   its demander and the owner of its data's party — to anyone else it is `NotFound`, like
//!   an unknown id.
//! - The settlement's licence term starts at the settlement and lasts
//!   [`DEFAULT_TERM_MONTHS`] months; `/updateLicenses` may set another. `usage_restrictions`
//!   is [`tessera_trade::fields::DEFAULT_USAGE_RESTRICTIONS`].
//! - `private_key` (table A.36) is the licence's delivery key sealed to the buyer's X25519
//!   key registered with the demand (`public_key`, Tessera's extension); a demand without one
//!   cannot be settled.
//! - `/deliver` hands out the file the provider uploaded for the registration (Tessera's
//!   `/uploadData`), encrypted under the delivery key; controlled data is never delivered as
//!   a file: it is used through jobs under the policy of `/deliverDatasets`.
//! - `/deliverDatasets` creates the scheduler licence that carries the usage policy (its id
//!   is returned as `licenceID`, the id jobs name); the policy's window must lie inside the
//!   licence term and defaults to it.

use std::sync::{Arc, Weak};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::SigningKey;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tessera_accounting::JobPrice;
use tessera_auth::{Caller, Operation, Target};
use tessera_core::Clock;
use tessera_core::civil::{add_months, format_millis, parse_millis};
use tessera_policy::UsagePolicy;
use tessera_store::{
    ConfirmationRow, DemandRow, LicenceRecord, NewSettlement, PublicationRow, RegistrationRow,
    Store, StoreError,
};
use tessera_trade::fields::{
    self, ConfirmDemand, ControlledDataset, DataRef, DemandAction, PublishData, PublishDatasets,
    RegisterData, RegisterDemand, UpdateLicenses, price_number,
};
use tessera_trade::licence::{Licence, LicenceBody, LicenceTerm, verifying_key_text};
use tessera_trade::matching::{Offer, Want, rank};
use tessera_trade::proof::DeliveryProof;
use tessera_trade::seal::{BuyerPublicKey, DeliveryKey, seal_delivery_key, seal_package};
use tessera_trade::{
    CONTROLLED_OWNER, CONTROLLED_REGISTRATION_ID, NOT_PUBLISHED, PUBLISHED, SETTLED, TradeError,
    UNSETTLED,
};

use crate::{AccountService, Ids, Scheduler, SchedulerError};

/// Months a settled licence runs by default.
pub const DEFAULT_TERM_MONTHS: i64 = 12;
/// Largest data file `/uploadData` accepts, in bytes.
pub const MAX_UPLOAD_BYTES: usize = tessera_trade::seal::MAX_PACKAGE_BYTES;
/// Most published items matching considers.
pub const MATCH_CANDIDATES_MAX: u32 = 10_000;

fn invalid(e: TradeError) -> SchedulerError {
    SchedulerError::Invalid(e.to_string())
}

fn encode(what: &'static str, v: &impl Serialize) -> Result<String, SchedulerError> {
    serde_json::to_string(v).map_err(|source| SchedulerError::Encode { what, source })
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, SchedulerError> {
    serde_json::from_str(text)
        .map_err(|e| SchedulerError::Store(StoreError::Corrupt(format!("{what}: {e}"))))
}

fn not_found(kind: &str, id: &str) -> SchedulerError {
    SchedulerError::NotFound(format!("{kind} {id}"))
}

/// A store `NotFound` as the scheduler's, naming the record.
fn found<T>(r: Result<T, StoreError>) -> Result<T, SchedulerError> {
    r.map_err(|e| match e {
        StoreError::NotFound { kind, id } => not_found(kind, &id),
        e => e.into(),
    })
}

/// The trade flow.
#[derive(Debug, Clone)]
pub struct TradeService {
    store: Store,
    clock: Arc<dyn Clock>,
    ids: Arc<Ids>,
    accounts: AccountService,
    scheduler: Weak<Scheduler>,
}

impl TradeService {
    pub(crate) fn new(
        store: Store,
        clock: Arc<dyn Clock>,
        ids: Arc<Ids>,
        accounts: AccountService,
        scheduler: Weak<Scheduler>,
    ) -> Self {
        Self {
            store,
            clock,
            ids,
            accounts,
            scheduler,
        }
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    fn actor(caller: &Caller) -> String {
        match caller {
            Caller::User(p) => p.user.clone(),
            other => format!("{other:?}"),
        }
    }

    /// `op` on party `party` (the caller must own it; an unknown party is `NotFound`).
    async fn own_party(
        &self,
        op: Operation,
        caller: &Caller,
        party: &str,
    ) -> Result<(), SchedulerError> {
        self.accounts.check_party(op, caller, party).await
    }

    /// `op` acting as `user`.
    async fn as_user(
        &self,
        op: Operation,
        caller: &Caller,
        user: &str,
    ) -> Result<(), SchedulerError> {
        self.accounts.check_user(op, caller, user).await
    }

    /// `op` on a confirmation: its demander, or the owner of its data's party; anyone else
    /// is told it is not found.
    async fn confirmation_party(
        &self,
        op: Operation,
        caller: &Caller,
        c: &ConfirmationRow,
    ) -> Result<(), SchedulerError> {
        let owner = self.accounts.owner_of(&c.owner).await?;
        let target = Target {
            licensee: Some(&c.demander),
            licensor_owner: owner.as_deref(),
            ..Target::default()
        };
        self.accounts
            .authorize_by_id(op, op, caller, &target, "confirmation", &c.confirm_id)
            .await
    }

    async fn confirmation(&self, confirm_id: &str) -> Result<ConfirmationRow, SchedulerError> {
        found(self.store.trade_confirmation(confirm_id).await)
    }

    /// The licensor party's signing key, made on first use.
    async fn licensor_key(&self, party: &str) -> Result<SigningKey, SchedulerError> {
        let secret = self
            .store
            .licensor_key(party, self.ids.bytes32(), self.now())
            .await?;
        Ok(SigningKey::from_bytes(&secret))
    }

    /// One trade operation on a JSON body (the REST route's body, or its query parameters
    /// as an object of strings): the request parsed into the standard's shape (unknown fields
    /// refused by name), then the operation. The entry point of the `Trade` gRPC service.
    ///
    /// # Errors
    /// `Invalid` for a body that does not parse, naming the field; the operation's errors;
    /// `Invalid` for an operation that is not a trade operation.
    pub async fn call(
        &self,
        op: Operation,
        caller: &Caller,
        body: &[u8],
    ) -> Result<Value, SchedulerError> {
        use Operation as O;
        let body = if body.iter().all(u8::is_ascii_whitespace) {
            b"{}".as_slice()
        } else {
            body
        };
        fields::reject_duplicate_keys("body", body).map_err(invalid)?;
        fn parse<T: serde::de::DeserializeOwned>(
            op: Operation,
            body: &[u8],
        ) -> Result<T, SchedulerError> {
            let v: Value = serde_json::from_slice(body).map_err(|e| {
                SchedulerError::Invalid(format!("the {} body is not JSON: {e}", op.name()))
            })?;
            if !v.is_object() {
                return Err(SchedulerError::Invalid(format!(
                    "the {} body must be a JSON object",
                    op.name()
                )));
            }
            serde_json::from_value(v)
                .map_err(|e| SchedulerError::Invalid(format!("the {} body: {e}", op.name())))
        }
        match op {
            O::RegisterData => self.register_data(caller, parse(op, body)?).await,
            O::PublishData => self.publish_data(caller, parse(op, body)?).await,
            O::PublishDatasets => self.publish_datasets(caller, parse(op, body)?).await,
            O::QueryPublishedData => self.query_published_data(caller, parse(op, body)?).await,
            O::RevokePublishedData => self.revoke_published_data(caller, parse(op, body)?).await,
            O::RegisterDemand => self.register_demand(caller, parse(op, body)?).await,
            O::PublishDemand => self.publish_demand(caller, parse(op, body)?).await,
            O::QueryPublishedDemand => self.query_published_demand(caller, parse(op, body)?).await,
            O::RevokeDemand => self.revoke_demand(caller, parse(op, body)?).await,
            O::QueryMatches => self.query_matches(caller, parse(op, body)?).await,
            O::ConfirmDemand => self.confirm_demand(caller, parse(op, body)?).await,
            O::QueryDemandForSettlement => {
                self.query_demand_for_settlement(caller, parse(op, body)?)
                    .await
            }
            O::Settlement => self.settle(caller, parse(op, body)?).await,
            O::QuerySettlement => self.query_settlement(caller, parse(op, body)?).await,
            O::Deliver => self.deliver(caller, body).await,
            O::QueryDeliverResult => self.query_deliver_result(caller, parse(op, body)?).await,
            O::DeliverDatasets => self.deliver_datasets(caller, body).await,
            O::UpdateLicenses => self.update_licenses(caller, parse(op, body)?).await,
            O::UploadData => self.upload_data(caller, body).await,
            O::RevokeLicenses => self.revoke_licenses(caller, parse(op, body)?).await,
            other => Err(SchedulerError::Invalid(format!(
                "{} is not a trade operation",
                other.name()
            ))),
        }
    }

    /// `/registerData` (table A.2 → A.3).
    ///
    /// # Errors
    /// `Invalid` (a field, naming it; a dataset of another party); `NotFound`; `Forbidden`.
    pub async fn register_data(
        &self,
        caller: &Caller,
        r: RegisterData,
    ) -> Result<Value, SchedulerError> {
        let rec = r.validate().map_err(invalid)?;
        self.own_party(Operation::RegisterData, caller, &rec.owner)
            .await?;
        let registration_id = self.ids.next("reg-");
        found(
            self.store
                .trade_register(
                    &RegistrationRow {
                        registration_id: registration_id.clone(),
                        owner: rec.owner.clone(),
                        data_id: rec.data_id.clone(),
                        record_json: encode("registration", &rec)?,
                    },
                    &Self::actor(caller),
                    self.now(),
                )
                .await,
        )?;
        Ok(json!({ "registrationID": registration_id }))
    }

    /// `/publishData` (table A.5 → A.6).
    ///
    /// # Errors
    /// `Invalid`; `NotFound` (registration); `Forbidden`.
    pub async fn publish_data(
        &self,
        caller: &Caller,
        r: PublishData,
    ) -> Result<Value, SchedulerError> {
        let p = r.validate().map_err(invalid)?;
        self.own_party(Operation::PublishData, caller, &p.owner)
            .await?;
        if p.registration_id == CONTROLLED_REGISTRATION_ID {
            return Err(SchedulerError::Invalid(
                "controlled data is published with /publishDatasets".into(),
            ));
        }
        let reg = found(self.store.trade_registration(&p.registration_id).await)?;
        if reg.owner != p.owner {
            return Err(not_found("registration", &p.registration_id));
        }
        self.licensor_key(&reg.owner).await?;
        self.store
            .trade_publish(
                &PublicationRow {
                    registration_id: reg.registration_id,
                    data_id: reg.data_id,
                    owner: reg.owner,
                    controlled: false,
                    record_json: None,
                    free: p.terms.free,
                    price_micros: p.terms.price_micros,
                    status: PUBLISHED.into(),
                },
                &Self::actor(caller),
                self.now(),
            )
            .await?;
        Ok(json!({ "publish_status": PUBLISHED }))
    }

    /// `/publishDatasets` (table A.8 → A.9): controlled data, owned by the caller's party.
    ///
    /// # Errors
    /// `Invalid`; `NotFound` (dataset); `Forbidden`.
    pub async fn publish_datasets(
        &self,
        caller: &Caller,
        r: PublishDatasets,
    ) -> Result<Value, SchedulerError> {
        let (rec, terms) = r.validate().map_err(invalid)?;
        let dataset = found(self.store.dataset(&rec.data_id).await)?;
        self.own_party(Operation::PublishDatasets, caller, &dataset.owner_party)
            .await?;
        self.licensor_key(&dataset.owner_party).await?;
        self.store
            .trade_publish(
                &PublicationRow {
                    registration_id: CONTROLLED_REGISTRATION_ID.into(),
                    data_id: rec.data_id.clone(),
                    owner: dataset.owner_party,
                    controlled: true,
                    record_json: Some(encode("controlled dataset", &rec)?),
                    free: terms.free,
                    price_micros: terms.price_micros,
                    status: PUBLISHED.into(),
                },
                &Self::actor(caller),
                self.now(),
            )
            .await?;
        Ok(json!({ "publish_status": PUBLISHED }))
    }

    /// The publication a reference names (a registered item's `dataID` is its registration's).
    async fn publication(&self, d: &DataRef) -> Result<PublicationRow, SchedulerError> {
        let data_id = if d.registration_id == CONTROLLED_REGISTRATION_ID {
            d.data_id.clone().unwrap_or_default()
        } else {
            let reg = found(self.store.trade_registration(&d.registration_id).await)?;
            if let Some(given) = &d.data_id
                && *given != reg.data_id
            {
                return Err(not_found(
                    "publication",
                    &format!("{}/{given}", d.registration_id),
                ));
            }
            reg.data_id
        };
        self.store
            .trade_publication(&d.registration_id, &data_id)
            .await
            .map_err(|e| match e {
                // Name only what the caller named: the dataset behind a registration is not
                // shown to whoever asks for an unpublished one.
                StoreError::NotFound { .. } => not_found(
                    "publication",
                    &match &d.data_id {
                        Some(given) => format!("{}/{given}", d.registration_id),
                        None => d.registration_id.clone(),
                    },
                ),
                e => e.into(),
            })
    }

    /// Refuses when the publication of a confirmation's data was revoked.
    async fn still_published(
        &self,
        registration_id: &str,
        data_id: &str,
    ) -> Result<(), SchedulerError> {
        let p = found(self.store.trade_publication(registration_id, data_id).await)?;
        if p.status != PUBLISHED {
            return Err(SchedulerError::Invalid(format!(
                "the publication of {data_id} was revoked: no settlement, delivery or policy under it"
            )));
        }
        Ok(())
    }

    /// `/queryPublishedData` (table A.11 → A.12), with Tessera's extra fields: what matching
    /// and buyers need (`key_words`, `data_category`, `data_type`, `description`, `dataID`)
    /// and the licensor's ed25519 public key (`licensor_public_key`) that its licences verify
    /// under.
    ///
    /// # Errors
    /// `Invalid`; `NotFound`.
    pub async fn query_published_data(
        &self,
        caller: &Caller,
        d: fields::PublishedDataRef,
    ) -> Result<Value, SchedulerError> {
        let d = d.validate().map_err(invalid)?;
        self.accounts
            .check(Operation::QueryPublishedData, caller)
            .await?;
        let p = self.publication(&d).await?;
        let key = self.licensor_key(&p.owner).await?;
        let (owner, extra) = if p.controlled {
            let rec: ControlledDataset = decode(
                "controlled dataset",
                p.record_json.as_deref().unwrap_or("null"),
            )?;
            (
                CONTROLLED_OWNER.to_string(),
                json!({"key_words": rec.key_words, "data_category": [], "data_type": "dataset",
                       "description": rec.description.unwrap_or_default(), "protocol": rec.protocol,
                       "provider": p.owner}),
            )
        } else {
            let reg = found(self.store.trade_registration(&p.registration_id).await)?;
            let rec: fields::DataRegistration = decode("registration", &reg.record_json)?;
            (
                p.owner.clone(),
                json!({"key_words": rec.key_words, "data_category": rec.data_category,
                       "data_type": rec.data_type, "description": rec.description,
                       "resource_url": rec.resource_url}),
            )
        };
        let mut out = json!({
            "owner": owner,
            "publish_status": p.status,
            "free": if p.free { "true" } else { "false" },
            "price": price_number(p.price_micros),
            "registrationID": p.registration_id,
            "dataID": p.data_id,
            "licensor_public_key": verifying_key_text(&key.verifying_key()),
        });
        if let (Some(o), Some(e)) = (out.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                o.insert(k.clone(), v.clone());
            }
        }
        Ok(out)
    }

    /// `/revokePublishedData` (table A.14 → A.15): refuses new confirmations, settlements and
    /// deliveries, and ends the running jobs under the licences its controlled deliveries made
    /// (failed with their counts released, not the buyer's doing; their admissions are refused
    /// from now on). Publishing again lifts the revocation for licences already issued.
    ///
    /// # Errors
    /// `Invalid`; `NotFound`; `Forbidden`.
    pub async fn revoke_published_data(
        &self,
        caller: &Caller,
        d: fields::PublishedDataRef,
    ) -> Result<Value, SchedulerError> {
        let d = d.validate().map_err(invalid)?;
        let p = self.publication(&d).await?;
        self.own_party(Operation::RevokePublishedData, caller, &p.owner)
            .await?;
        let actor = Self::actor(caller);
        let licences = self
            .store
            .trade_revoke_publication(&p.registration_id, &p.data_id, &actor, self.now())
            .await?;
        let reason = format!("withdrawn: {actor} revoked the publication this licence came from");
        let ended = self.end_under(&licences, &reason).await?;
        Ok(json!({ "publish_status": NOT_PUBLISHED, "ended_jobs": ended }))
    }

    /// Tessera's `/revokeLicenses`: the licensor party's owner revokes a licence it issued
    /// (`licensesID`: with every policy delivered under it) or one delivered policy
    /// (`policyId`), for good. Admission refuses the jobs of the licences concerned from now
    /// on (`Refusal::Withdrawn`), and the jobs running under them end at once as the
    /// provider's doing (failed, counts released, holds voided; a job past its delivery point
    /// ends charged). A licence, delivery or policy naming a revoked licence is refused.
    /// Revoking again changes nothing and answers the same.
    ///
    /// # Errors
    /// `Invalid` (a field; a superseded licence: revoke its successor); `NotFound` (an unknown
    /// number, or one of another party's data); `Forbidden`.
    pub async fn revoke_licenses(
        &self,
        caller: &Caller,
        r: fields::RevokeLicenses,
    ) -> Result<Value, SchedulerError> {
        use fields::Revoked;
        use tessera_store::RevocationKind;
        let r = r.validate().map_err(invalid)?;
        self.own_party(Operation::RevokeLicenses, caller, &r.owner)
            .await?;
        let (kind, subject, licensor) = match &r.subject {
            Revoked::Licence(id) => {
                let row = found(self.store.trade_licence(id).await)?;
                (RevocationKind::Licence, id, row.licensor)
            }
            Revoked::Policy(id) => {
                let row = found(self.store.trade_policy(id).await)?;
                (RevocationKind::Policy, id, row.licensor)
            }
        };
        if licensor != r.owner {
            // Another party's licence is, to this owner, an unknown number.
            return Err(not_found(kind.as_str(), subject));
        }
        let actor = Self::actor(caller);
        let (licences, _) = self
            .store
            .trade_revoke(kind, subject, &r.reason, &actor, self.now())
            .await?;
        let why = if r.reason.is_empty() {
            String::new()
        } else {
            format!(": {}", r.reason)
        };
        let reason = format!(
            "withdrawn: {actor} revoked {} {subject}{why}",
            kind.as_str()
        );
        let ended = self.end_under(&licences, &reason).await?;
        Ok(json!({
            "revoked": subject,
            "kind": kind.as_str(),
            "licences": licences,
            "ended_jobs": ended,
        }))
    }

    /// Ends the live jobs under `licences` as the provider's doing, each with `reason`.
    async fn end_under(
        &self,
        licences: &[String],
        reason: &str,
    ) -> Result<Vec<String>, SchedulerError> {
        let Some(s) = self.scheduler.upgrade() else {
            return Ok(Vec::new());
        };
        let mut cancelled = Vec::new();
        for l in licences {
            for job_id in self.store.live_jobs_of_licence(l).await? {
                match s.withdraw(&job_id, reason).await {
                    Ok(_) => cancelled.push(job_id),
                    // Delivered jobs end charged; a cancellation there is refused.
                    Err(e) => {
                        tracing::warn!(job = %job_id, error = %e, "revocation could not cancel a job")
                    }
                }
            }
        }
        Ok(cancelled)
    }

    /// `/registerDemand` (table A.17 → A.18).
    ///
    /// # Errors
    /// `Invalid`; `Forbidden`.
    pub async fn register_demand(
        &self,
        caller: &Caller,
        mut r: RegisterDemand,
    ) -> Result<Value, SchedulerError> {
        if let (Caller::User(p), None) = (caller, &r.demander) {
            r.demander = Some(p.user.clone());
        }
        let rec = r.validate().map_err(invalid)?;
        self.as_user(Operation::RegisterDemand, caller, &rec.demander)
            .await?;
        let demand_id = self.ids.next("dem-");
        self.store
            .trade_register_demand(
                &DemandRow {
                    demand_id: demand_id.clone(),
                    demander: rec.demander.clone(),
                    record_json: encode("demand", &rec)?,
                    status: "registered".into(),
                },
                self.now(),
            )
            .await?;
        Ok(json!({ "demandID": demand_id }))
    }

    async fn own_demand(
        &self,
        op: Operation,
        caller: &Caller,
        a: DemandAction,
    ) -> Result<DemandRow, SchedulerError> {
        let (demander, demand_id) = a.validate().map_err(invalid)?;
        self.as_user(op, caller, &demander).await?;
        let d = found(self.store.trade_demand(&demand_id).await)?;
        if d.demander != demander {
            return Err(not_found("demand", &demand_id));
        }
        Ok(d)
    }

    /// `/publishDemand` (table A.20 → A.21).
    ///
    /// # Errors
    /// `Invalid` (a revoked demand); `NotFound`; `Forbidden`.
    pub async fn publish_demand(
        &self,
        caller: &Caller,
        a: DemandAction,
    ) -> Result<Value, SchedulerError> {
        let d = self.own_demand(Operation::PublishDemand, caller, a).await?;
        self.store
            .trade_set_demand_status(&d.demand_id, "published", self.now())
            .await?;
        Ok(json!({ "publish_status": PUBLISHED }))
    }

    /// `/revokeDemand` (table A.26 → A.27).
    ///
    /// # Errors
    /// `Invalid` (a confirmed demand); `NotFound`; `Forbidden`.
    pub async fn revoke_demand(
        &self,
        caller: &Caller,
        a: DemandAction,
    ) -> Result<Value, SchedulerError> {
        let d = self.own_demand(Operation::RevokeDemand, caller, a).await?;
        self.store
            .trade_set_demand_status(&d.demand_id, "revoked", self.now())
            .await?;
        Ok(json!({ "publish_status": NOT_PUBLISHED }))
    }

    /// A demand the caller may see: a published one, or its own.
    async fn visible_demand(
        &self,
        op: Operation,
        caller: &Caller,
        demand_id: &str,
    ) -> Result<DemandRow, SchedulerError> {
        self.accounts.check(op, caller).await?;
        let d = found(self.store.trade_demand(demand_id).await)?;
        let own = match caller {
            Caller::User(p) => p.is_operator() || p.user == d.demander,
            _ => false,
        };
        if d.status != "published" && !own {
            return Err(not_found("demand", demand_id));
        }
        Ok(d)
    }

    /// `/queryPublishedDemand` (table A.23 → A.24).
    ///
    /// # Errors
    /// `Invalid`; `NotFound`.
    pub async fn query_published_demand(
        &self,
        caller: &Caller,
        r: fields::DemandRef,
    ) -> Result<Value, SchedulerError> {
        let demand_id = r.validate().map_err(invalid)?;
        let d = self
            .visible_demand(Operation::QueryPublishedDemand, caller, &demand_id)
            .await?;
        let rec: fields::Demand = decode("demand", &d.record_json)?;
        Ok(json!({
            "publish_status": if d.status == "published" { PUBLISHED } else { NOT_PUBLISHED },
            "data_category": rec.data_category,
            "key_words": rec.key_words,
            "description": rec.description.unwrap_or_default(),
            "data_type": rec.data_type,
            "demandID": d.demand_id,
            "demander": d.demander,
        }))
    }

    /// Tessera's `/queryMatches`: the published data matching a demand, best first
    /// (`tessera_trade::matching`).
    ///
    /// # Errors
    /// `Invalid`; `NotFound`.
    pub async fn query_matches(
        &self,
        caller: &Caller,
        r: fields::DemandRef,
    ) -> Result<Value, SchedulerError> {
        let demand_id = r.validate().map_err(invalid)?;
        let d = self
            .visible_demand(Operation::QueryMatches, caller, &demand_id)
            .await?;
        let rec: fields::Demand = decode("demand", &d.record_json)?;
        struct Item {
            registration_id: String,
            data_id: String,
            data_type: String,
            categories: Vec<String>,
            key_words: Vec<String>,
            description: String,
        }
        let mut items = Vec::new();
        for p in self.store.trade_published(MATCH_CANDIDATES_MAX).await? {
            let item = if p.controlled {
                let c: ControlledDataset = decode(
                    "controlled dataset",
                    p.record_json.as_deref().unwrap_or("null"),
                )?;
                Item {
                    registration_id: p.registration_id,
                    data_id: p.data_id,
                    data_type: "dataset".into(),
                    categories: Vec::new(),
                    key_words: c.key_words,
                    description: c.description.unwrap_or_default(),
                }
            } else {
                let reg = found(self.store.trade_registration(&p.registration_id).await)?;
                let r: fields::DataRegistration = decode("registration", &reg.record_json)?;
                Item {
                    registration_id: p.registration_id,
                    data_id: p.data_id,
                    data_type: r.data_type,
                    categories: r.data_category,
                    key_words: r.key_words,
                    description: r.description,
                }
            };
            items.push(item);
        }
        let offers: Vec<Offer<'_>> = items
            .iter()
            .map(|i| Offer {
                registration_id: &i.registration_id,
                data_id: &i.data_id,
                data_type: &i.data_type,
                data_category: &i.categories,
                key_words: &i.key_words,
                description: &i.description,
            })
            .collect();
        let matches = rank(
            &Want {
                data_type: &rec.data_type,
                data_category: &rec.data_category,
                key_words: &rec.key_words,
            },
            &offers,
        );
        Ok(json!({ "demandID": d.demand_id, "matches": matches }))
    }

    /// `/confirmDemand` (table A.29 → A.30): binds one published dataset to the caller's
    /// published demand, at its current price.
    ///
    /// # Errors
    /// `Invalid` (unpublished demand or data); `NotFound`; `AlreadyExists` (confirmed
    /// already); `Forbidden`.
    pub async fn confirm_demand(
        &self,
        caller: &Caller,
        mut r: ConfirmDemand,
    ) -> Result<Value, SchedulerError> {
        if let (Caller::User(p), None) = (caller, &r.demander) {
            r.demander = Some(p.user.clone());
        }
        let c = r.validate().map_err(invalid)?;
        self.as_user(Operation::ConfirmDemand, caller, &c.demander)
            .await?;
        let demand = found(self.store.trade_demand(&c.demand_id).await)?;
        if demand.demander != c.demander {
            return Err(not_found("demand", &c.demand_id));
        }
        let rec: fields::Demand = decode("demand", &demand.record_json)?;
        if rec.public_key.is_none() {
            return Err(SchedulerError::Invalid(format!(
                "demand {} has no public_key, so no delivery key could be sealed to its buyer: register the demand again with one",
                c.demand_id
            )));
        }
        let p = self.publication(&c.data).await?;
        let confirm_id = self.ids.next("conf-");
        let row = found(
            self.store
                .trade_confirm(
                    &confirm_id,
                    &c.demand_id,
                    &p.registration_id,
                    &p.data_id,
                    self.now(),
                )
                .await,
        )?;
        Ok(json!({
            "confirmID": row.confirm_id,
            "owner": row.owner,
            "demander": row.demander,
            "dataID": row.data_id,
            "demandID": row.demand_id,
            "price": price_number(row.price_micros),
            "registrationID": row.registration_id,
        }))
    }

    /// `/queryDemandForSettlement` (table A.32 → A.33).
    ///
    /// # Errors
    /// `Invalid`; `NotFound` (also for a confirmation the caller is not party to).
    pub async fn query_demand_for_settlement(
        &self,
        caller: &Caller,
        r: fields::ConfirmRef,
    ) -> Result<Value, SchedulerError> {
        let confirm_id = r.validate().map_err(invalid)?;
        let c = self.confirmation(&confirm_id).await?;
        self.confirmation_party(Operation::QueryDemandForSettlement, caller, &c)
            .await?;
        let settled = self.store.trade_settlement(&confirm_id).await?.is_some();
        Ok(json!({
            "owner": c.owner,
            "demander": c.demander,
            "registrationID": c.registration_id,
            "dataID": c.data_id,
            "demandID": c.demand_id,
            "price": price_number(c.price_micros),
            "settlement_status": if settled { SETTLED } else { UNSETTLED },
        }))
    }

    /// The answer of `/settlement` and `/querySettlement` for a settled confirmation. The
    /// payment proof shows the buyer (and the operator) how it paid; the data's owner sees the
    /// amount and its own account only.
    async fn settlement_answer(
        &self,
        confirm_id: &str,
        buyer_view: bool,
    ) -> Result<Value, SchedulerError> {
        let Some(s) = self.store.trade_settlement(confirm_id).await? else {
            return Ok(json!({ "settlement_status": UNSETTLED }));
        };
        let licence = found(self.store.trade_licence(&s.licenses_id).await)?;
        let mut proof = decode::<Value>("payment proof", &s.payment_json)?;
        if !buyer_view {
            proof = json!({
                "amount_micros": proof["amount_micros"],
                "provider_account": proof["provider_account"],
            });
        }
        Ok(json!({
            "payment_proof": proof,
            "settlement_status": SETTLED,
            "licenses": decode::<Value>("licence", &licence.licence_json)?,
            "private_key": decode::<Value>("sealed key", &s.sealed_key_json)?,
        }))
    }

    /// `/settlement` (table A.35 → A.36, A.37): the demander pays the confirmed price (a
    /// prepaid order: recharge voucher, cash, credit line), and receives the licence signed by
    /// the licensor's key and the delivery key sealed to its registered public key. A retry
    /// answers the first settlement.
    ///
    /// # Errors
    /// `Invalid` (no buyer key on the demand); `NotFound`; refusals (insufficient funds,
    /// frozen account); `Forbidden`.
    pub async fn settle(
        &self,
        caller: &Caller,
        r: fields::ConfirmRef,
    ) -> Result<Value, SchedulerError> {
        let confirm_id = r.validate().map_err(invalid)?;
        let c = self.confirmation(&confirm_id).await?;
        let owner = self.accounts.owner_of(&c.owner).await?;
        let target = Target {
            user: Some(&c.demander),
            licensee: Some(&c.demander),
            licensor_owner: owner.as_deref(),
            ..Target::default()
        };
        self.accounts
            .authorize_by_id(
                Operation::Settlement,
                Operation::QueryDemandForSettlement,
                caller,
                &target,
                "confirmation",
                &confirm_id,
            )
            .await?;
        if self.store.trade_settlement(&confirm_id).await?.is_some() {
            return self.settlement_answer(&confirm_id, true).await;
        }
        self.still_published(&c.registration_id, &c.data_id).await?;
        if c.registration_id != CONTROLLED_REGISTRATION_ID
            && let Err(StoreError::NotFound { .. }) =
                self.store.trade_file(&c.registration_id).await
        {
            return Err(SchedulerError::Invalid(format!(
                "registration {} has no data file to deliver yet (the provider uploads it with /uploadData): nothing was paid",
                c.registration_id
            )));
        }
        let demand = found(self.store.trade_demand(&c.demand_id).await)?;
        let rec: fields::Demand = decode("demand", &demand.record_json)?;
        let buyer_key = rec
            .public_key
            .as_deref()
            .ok_or_else(|| {
                SchedulerError::Invalid(format!(
                    "demand {} has no public_key: register the demand with the buyer's X25519 public key to receive the delivery key",
                    c.demand_id
                ))
            })
            .and_then(|k| BuyerPublicKey::parse(k).map_err(invalid))?;
        let resource_url = if c.registration_id == CONTROLLED_REGISTRATION_ID {
            format!("tessera:controlled/{}", c.data_id)
        } else {
            let reg = found(self.store.trade_registration(&c.registration_id).await)?;
            let rec: fields::DataRegistration = decode("registration", &reg.record_json)?;
            rec.resource_url
        };
        let zone = self.store.zone().clone();
        let now = self.now();
        let start_local = zone
            .local(now)
            .map_err(|e| SchedulerError::Invalid(e.to_string()))?;
        let start_local = start_local - start_local.rem_euclid(1000);
        let end_local = add_months(start_local, DEFAULT_TERM_MONTHS)
            .map_err(|e| SchedulerError::Invalid(e.to_string()))?;
        let term = LicenceTerm {
            start_date: format_millis(start_local),
            end_date: format_millis(end_local),
        };
        let key = self.licensor_key(&c.owner).await?;
        let licenses_id = self.ids.next("lics-");
        let licence = Licence::issue(
            LicenceBody {
                licenses_id: licenses_id.clone(),
                licensor: c.owner.clone(),
                licensee: c.demander.clone(),
                registration_id: c.registration_id.clone(),
                data_id: c.data_id.clone(),
                resource_url,
                usage_restrictions: fields::DEFAULT_USAGE_RESTRICTIONS.to_string(),
                license_term: term,
            },
            &key,
        )
        .map_err(invalid)?;
        let delivery_key = DeliveryKey::generate(self.ids.bytes32());
        let sealed = seal_delivery_key(&buyer_key, &delivery_key, &licenses_id, self.ids.bytes32())
            .map_err(invalid)?;
        let term_start = zone
            .instant(start_local)
            .map_err(|e| SchedulerError::Invalid(e.to_string()))?;
        let term_end = zone
            .instant(end_local)
            .map_err(|e| SchedulerError::Invalid(e.to_string()))?;
        self.store
            .trade_settle(
                &NewSettlement {
                    confirm_id: &confirm_id,
                    licenses_id: &licenses_id,
                    licence_json: &encode("licence", &licence)?,
                    sealed_key_json: &encode("sealed key", &sealed)?,
                    delivery_key: delivery_key.as_bytes(),
                    term_start_ms: term_start,
                    term_end_ms: term_end,
                    operator_share_bps: self.trade_share_bps(),
                },
                now,
            )
            .await?;
        self.settlement_answer(&confirm_id, true).await
    }

    fn trade_share_bps(&self) -> u32 {
        self.scheduler
            .upgrade()
            .map(|s| s.config().trade_operator_share_bps)
            .unwrap_or(0)
    }

    /// `/querySettlement` (table A.39 → A.40).
    ///
    /// # Errors
    /// `Invalid`; `NotFound`.
    pub async fn query_settlement(
        &self,
        caller: &Caller,
        r: fields::ConfirmRef,
    ) -> Result<Value, SchedulerError> {
        let confirm_id = r.validate().map_err(invalid)?;
        let c = self.confirmation(&confirm_id).await?;
        self.confirmation_party(Operation::QuerySettlement, caller, &c)
            .await?;
        let buyer_view = match caller {
            Caller::User(p) => p.is_operator() || p.user == c.demander,
            _ => false,
        };
        self.settlement_answer(&confirm_id, buyer_view).await
    }

    /// A licence presented by a caller: it must be one this node issued, still valid, equal
    /// to what was issued, and verify under its licensor's key.
    async fn presented(
        &self,
        licence: &Licence,
    ) -> Result<tessera_store::TradeLicenceRow, SchedulerError> {
        let row = found(self.store.trade_licence(&licence.licenses_id).await)?;
        let issued: Licence = decode("licence", &row.licence_json)?;
        let key = self.licensor_key(&row.licensor).await?;
        licence
            .verify(&key.verifying_key())
            .map_err(|e| SchedulerError::Invalid(format!("licenses: {e}")))?;
        if issued != *licence {
            return Err(SchedulerError::Invalid(
                "licenses: not the licence this node issued under that number".into(),
            ));
        }
        if row.status == "revoked" {
            return Err(SchedulerError::Invalid(format!(
                "licenses: licence {} was revoked by its licensor",
                row.licenses_id
            )));
        }
        if row.status != "valid" {
            return Err(SchedulerError::Invalid(format!(
                "licenses: licence {} was superseded by {}",
                row.licenses_id,
                row.superseded_by.as_deref().unwrap_or("another")
            )));
        }
        let (start, end) = issued.license_term.check().map_err(invalid)?;
        let now_local = self
            .store
            .zone()
            .local(self.now())
            .map_err(|e| SchedulerError::Invalid(e.to_string()))?;
        if now_local < start || now_local >= end {
            return Err(SchedulerError::Invalid(format!(
                "licenses: outside its term {} – {}",
                issued.license_term.start_date, issued.license_term.end_date
            )));
        }
        Ok(row)
    }

    /// `/deliver` (table A.42 → A.43): the licensee presents its licence and receives the
    /// uploaded data file encrypted under the licence's delivery key (`data_file`, base64)
    /// and a delivery proof signed by the licensor's key.
    ///
    /// # Errors
    /// `Invalid` (a licence that does not verify, is superseded or expired; controlled data);
    /// `NotFound` (no file uploaded); `Forbidden`.
    pub async fn deliver(&self, caller: &Caller, body: &[u8]) -> Result<Value, SchedulerError> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Deliver {
            licenses: Option<Licence>,
        }
        let d: Deliver = fields::parse_body("/deliver body", body).map_err(invalid)?;
        let licence = d
            .licenses
            .ok_or_else(|| invalid(TradeError::MissingField("licenses")))?;
        self.as_user(Operation::Deliver, caller, &licence.licensee)
            .await?;
        let row = self.presented(&licence).await?;
        if row.registration_id == CONTROLLED_REGISTRATION_ID {
            return Err(SchedulerError::Invalid(
                "controlled data is not delivered as a file: it is used through jobs under a policy (/deliverDatasets)".into(),
            ));
        }
        self.still_published(&row.registration_id, &row.data_id)
            .await?;
        let (sha_data, file) = found(self.store.trade_file(&row.registration_id).await)?;
        let key = DeliveryKey::from_bytes(self.store.trade_delivery_key(&row.confirm_id).await?);
        let package = seal_package(
            &key,
            &licence.licenses_id,
            &licence.digital_watermarking,
            &file,
            self.ids.bytes32(),
        )
        .map_err(invalid)?;
        let delivery_id = self.ids.next("dlv-");
        let now = self.now();
        let signer = self.licensor_key(&row.licensor).await?;
        let proof = DeliveryProof {
            delivery_id: delivery_id.clone(),
            licenses_id: licence.licenses_id.clone(),
            confirm_id: row.confirm_id.clone(),
            data_id: row.data_id.clone(),
            licensee: row.licensee.clone(),
            sha256_data: sha_data,
            sha256_package: hex::encode(Sha256::digest(&package)),
            bytes: u64::try_from(package.len()).unwrap_or(u64::MAX),
            delivered_at: self.store.zone().format_rfc3339(now),
            licensor_public_key: String::new(),
            signature: String::new(),
        }
        .sign(&signer);
        let proof_json = encode("delivery proof", &proof)?;
        self.store
            .trade_record_delivery(
                &delivery_id,
                &row.confirm_id,
                &licence.licenses_id,
                &row.data_id,
                &proof_json,
                now,
            )
            .await?;
        Ok(json!({ "data_file": B64.encode(&package), "delivery_proof": proof }))
    }

    /// `/queryDeliverResult` (table A.45 → A.46).
    ///
    /// # Errors
    /// `Invalid`; `NotFound` (nothing delivered yet, or not the caller's).
    pub async fn query_deliver_result(
        &self,
        caller: &Caller,
        r: fields::ConfirmRef,
    ) -> Result<Value, SchedulerError> {
        let confirm_id = r.validate().map_err(invalid)?;
        let c = self.confirmation(&confirm_id).await?;
        self.confirmation_party(Operation::QueryDeliverResult, caller, &c)
            .await?;
        let proof = found(self.store.trade_delivery(&confirm_id).await)?;
        Ok(json!({ "delivery_proof": decode::<Value>("delivery proof", &proof)? }))
    }

    /// `/deliverDatasets` (table A.48 → A.51, A.52): the licensor sets the usage policy of a
    /// controlled dataset for a licence it issued; the node creates the licence jobs run
    /// under (`licenceID` in the answer). Tessera's optional `price_per_job`,
    /// `price_per_1k_rows` (currency units) and `operator_share_bps` price its jobs (default
    /// 0: paid for by the settlement).
    ///
    /// # Errors
    /// `Invalid` (the policy, naming the field; a licence that does not verify or is not for
    /// this controlled dataset; a window outside the term); `NotFound`; `Forbidden`.
    pub async fn deliver_datasets(
        &self,
        caller: &Caller,
        body: &[u8],
    ) -> Result<Value, SchedulerError> {
        let mut v: serde_json::Map<String, Value> =
            fields::parse_body("/deliverDatasets body", body).map_err(invalid)?;
        let licence: Licence = match v.remove("licenses") {
            None | Some(Value::Null) => return Err(invalid(TradeError::MissingField("licenses"))),
            Some(l) => serde_json::from_value(l)
                .map_err(|e| SchedulerError::Invalid(format!("licenses: {e}")))?,
        };
        let data_id = match v.remove("dataID") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
            None | Some(Value::Null) => return Err(invalid(TradeError::MissingField("dataID"))),
            Some(_) => return Err(SchedulerError::Invalid("field `dataID`: a string".into())),
        };
        let price = |name: &'static str, v: Option<Value>| -> Result<i64, SchedulerError> {
            match v {
                None | Some(Value::Null) => Ok(0),
                Some(Value::Number(n)) => {
                    let body =
                        json!({"owner": "x", "registrationID": "x", "free": false, "price": n});
                    let p: PublishData = serde_json::from_value(body)
                        .map_err(|e| SchedulerError::Invalid(format!("{name}: {e}")))?;
                    p.validate().map(|p| p.terms.price_micros).map_err(|_| {
                        SchedulerError::Invalid(format!(
                            "field `{name}`: a non-negative amount with at most six decimals"
                        ))
                    })
                }
                Some(_) => Err(SchedulerError::Invalid(format!("field `{name}`: a number"))),
            }
        };
        let per_job = price("price_per_job", v.remove("price_per_job"))?;
        let per_1k = price("price_per_1k_rows", v.remove("price_per_1k_rows"))?;
        let share = match v.remove("operator_share_bps") {
            None | Some(Value::Null) => 0,
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n <= 10_000)
                .ok_or_else(|| {
                    SchedulerError::Invalid("field `operator_share_bps`: 0 to 10000".into())
                })?,
            Some(_) => {
                return Err(SchedulerError::Invalid(
                    "field `operator_share_bps`: a number".into(),
                ));
            }
        };
        // The rest is the usage policy of tables A.48–A.50.
        let owner_user = self.accounts.owner_of(&licence.licensor).await?;
        let target = Target {
            party_owner: owner_user.as_deref(),
            ..Target::default()
        };
        self.accounts
            .authorize(Operation::DeliverDatasets, caller, &target)
            .await?;
        let (term_start, term_end) = licence.license_term.check().map_err(invalid)?;
        let mut policy_value = Value::Object(v);
        if let Some(o) = policy_value.as_object_mut() {
            o.entry("startDate")
                .or_insert_with(|| Value::String(licence.license_term.start_date.clone()));
            o.entry("endDate")
                .or_insert_with(|| Value::String(licence.license_term.end_date.clone()));
        }
        let policy = UsagePolicy::from_json(&policy_value.to_string())
            .map_err(|e| SchedulerError::Invalid(e.to_string()))?;
        let row = self.presented(&licence).await?;
        if row.registration_id != CONTROLLED_REGISTRATION_ID || row.data_id != data_id {
            return Err(SchedulerError::Invalid(format!(
                "licenses: licence {} is not for controlled dataset {data_id}",
                row.licenses_id
            )));
        }
        self.still_published(&row.registration_id, &row.data_id)
            .await?;
        if let Ok(d) = self.store.dataset(&data_id).await {
            crate::validate::scenes_fit_dataset(&policy, &data_id, &d.location)?;
        }
        let start = policy.start_date.clone().unwrap_or_default();
        let end = policy.end_date.clone().unwrap_or_default();
        let (ps, pe) = (parse_millis(&start), parse_millis(&end));
        match (ps, pe) {
            (Ok(s), Ok(e)) if s >= term_start && e <= term_end => {}
            _ => {
                return Err(SchedulerError::Invalid(format!(
                    "startDate/endDate must lie inside the licence term {} – {}",
                    licence.license_term.start_date, licence.license_term.end_date
                )));
            }
        }
        policy
            .check_can_admit(self.now(), self.store.zone())
            .map_err(|e| SchedulerError::Invalid(e.to_string()))?;
        let price = JobPrice {
            per_job_micros: per_job,
            per_1k_rows_micros: per_1k,
            operator_share_bps: share,
        };
        price
            .validate()
            .map_err(|e| SchedulerError::Invalid(e.to_string()))?;
        let licence_id = self.ids.next("lic-");
        let policy_id = self.ids.next("pol-");
        let record = LicenceRecord {
            licence_id: licence_id.clone(),
            licensor: row.licensor.clone(),
            licensee: row.licensee.clone(),
            dataset_id: data_id.clone(),
            policy: policy.clone(),
            price,
            monthly_price_micros: 0,
        };
        let now = self.now();
        self.store
            .trade_deliver_policy(&policy_id, &row.licenses_id, &record, &start, &end, now)
            .await?;
        Ok(json!({
            "policyId": policy_id,
            "policyName": policy.policy_name,
            "dataId": data_id,
            "startDate": start,
            "endDate": end,
            "status": "ACTIVE",
            "createTime": self.store.zone().format_instant(now),
            "licenceID": licence_id,
        }))
    }

    /// `/updateLicenses` (table A.54 → A.55): reissues a valid licence of the owner's data
    /// (optionally with a new term) under a new number; the old one is superseded at once
    /// (deliveries and policies naming it are refused), and the policies made from it move
    /// to the new one.
    ///
    /// # Errors
    /// `Invalid` (several valid licences and no `licensesID`; a bad term); `NotFound`;
    /// `Forbidden`.
    pub async fn update_licenses(
        &self,
        caller: &Caller,
        r: UpdateLicenses,
    ) -> Result<Value, SchedulerError> {
        let u = r.validate().map_err(invalid)?;
        self.own_party(Operation::UpdateLicenses, caller, &u.owner)
            .await?;
        let valid: Vec<_> = self
            .store
            .trade_valid_licences(&u.data_id)
            .await?
            .into_iter()
            .filter(|l| l.licensor == u.owner)
            .collect();
        let old = match &u.licenses_id {
            Some(id) => match valid.into_iter().find(|l| l.licenses_id == *id) {
                Some(l) => l,
                None => {
                    // Say why an owner's own licence is not reissued.
                    return Err(match self.store.trade_licence(id).await {
                        Ok(l) if l.licensor == u.owner && l.data_id == u.data_id => {
                            SchedulerError::Invalid(format!(
                                "field `licensesID`: licence {id} is {} and cannot be reissued",
                                l.status
                            ))
                        }
                        _ => not_found("valid licence", id),
                    });
                }
            },
            None => match valid.len() {
                0 => return Err(not_found("valid licence of dataset", &u.data_id)),
                1 => valid
                    .into_iter()
                    .next()
                    .ok_or_else(|| not_found("licence", &u.data_id))?,
                n => {
                    return Err(SchedulerError::Invalid(format!(
                        "dataset {} has {n} valid licences: name one with licensesID",
                        u.data_id
                    )));
                }
            },
        };
        let issued: Licence = decode("licence", &old.licence_json)?;
        if let Some(term) = &u.license_term {
            // The buyer paid for the old term: a reissue may extend it, never cut it.
            let (old_start, old_end) = issued.license_term.check().map_err(invalid)?;
            let (new_start, new_end) = term.check().map_err(invalid)?;
            if new_start > old_start || new_end < old_end {
                return Err(SchedulerError::Invalid(format!(
                    "field `license_term`: a reissued licence may only extend the term {} – {} the buyer paid for",
                    issued.license_term.start_date, issued.license_term.end_date
                )));
            }
        }
        let key = self.licensor_key(&old.licensor).await?;
        let new_id = self.ids.next("lics-");
        let licence = Licence::issue(
            LicenceBody {
                licenses_id: new_id.clone(),
                licensor: issued.licensor,
                licensee: issued.licensee,
                registration_id: issued.registration_id,
                data_id: issued.data_id,
                resource_url: issued.resource_url,
                usage_restrictions: issued.usage_restrictions,
                license_term: u.license_term.unwrap_or(issued.license_term),
            },
            &key,
        )
        .map_err(invalid)?;
        self.store
            .trade_supersede_licence(
                &old.licenses_id,
                &new_id,
                &encode("licence", &licence)?,
                &Self::actor(caller),
                self.now(),
            )
            .await?;
        Ok(json!({ "licenses": licence }))
    }

    /// Tessera's `/uploadData`: the provider stores the file `/deliver` hands out for a
    /// registration (`data_file`, base64, at most [`MAX_UPLOAD_BYTES`]).
    ///
    /// # Errors
    /// `Invalid`; `NotFound`; `Forbidden`.
    pub async fn upload_data(&self, caller: &Caller, body: &[u8]) -> Result<Value, SchedulerError> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Upload {
            #[serde(rename = "registrationID")]
            registration_id: Option<String>,
            data_file: Option<String>,
        }
        let u: Upload = fields::parse_body("/uploadData body", body).map_err(invalid)?;
        let registration_id = u
            .registration_id
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| invalid(TradeError::MissingField("registrationID")))?;
        let file = u
            .data_file
            .ok_or_else(|| invalid(TradeError::MissingField("data_file")))?;
        if file.len() > MAX_UPLOAD_BYTES / 3 * 4 + 4 {
            return Err(SchedulerError::Invalid(format!(
                "field `data_file`: larger than {MAX_UPLOAD_BYTES} bytes"
            )));
        }
        let bytes = B64
            .decode(file.trim())
            .map_err(|_| SchedulerError::Invalid("field `data_file`: not base64".into()))?;
        let reg = found(self.store.trade_registration(&registration_id).await)?;
        self.own_party(Operation::UploadData, caller, &reg.owner)
            .await?;
        if self.store.trade_sold(&registration_id).await? {
            return Err(SchedulerError::Invalid(format!(
                "registration {registration_id} has been sold: its file is what the buyers paid for and cannot be replaced (register a new version)"
            )));
        }
        let sha = hex::encode(Sha256::digest(&bytes));
        self.store
            .trade_put_file(
                &registration_id,
                &sha,
                &bytes,
                &Self::actor(caller),
                self.now(),
            )
            .await?;
        Ok(json!({ "registrationID": registration_id, "sha256": sha, "bytes": bytes.len() }))
    }
}
