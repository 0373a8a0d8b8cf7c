//! The T/AI 123.12 trade flow's records (migration `0904`): registrations, publications,
//! demands, confirmations, settlements with their licences, deliveries, the policies of
//! controlled deliveries, uploaded data files and the licensors' signing keys.
//!
//! The store persists what the trade service decided and enforces the flow's uniqueness
//! rules in SQL: one confirmation per demand, one settlement per confirmation (a retry
//! answers the first), one valid licence per settlement. Every change appends an audit entry
//! whose subject is the dataset id (so a data item's log is its entries), or the demand id
//! for a demand's own changes. A settlement's money moves in the same transaction as its
//! licence, through `accounting::settle::data_purchase`.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use tessera_accounting::ledger::AccountKind;
use tessera_accounting::settle::{self, DataPurchase};

use crate::bills::add_line;
use tessera_accounting::freeze::ManualFreeze;

use crate::limits;
use crate::records::{LicenceRecord, insert_licence};
use crate::{RuleRefusal, Store, StoreError, audit, ledger};

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// A registration (`/registerData`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegistrationRow {
    /// Registration number.
    pub registration_id: String,
    /// Provider party.
    pub owner: String,
    /// Dataset id.
    pub data_id: String,
    /// The validated request, JSON with the standard's names.
    pub record_json: String,
}

/// A publication (`/publishData`, `/publishDatasets`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PublicationRow {
    /// Registration number (the controlled one for controlled data).
    pub registration_id: String,
    /// Dataset id.
    pub data_id: String,
    /// The party that owns the data.
    pub owner: String,
    /// Controlled data of the trusted data space.
    pub controlled: bool,
    /// For controlled data: the validated `/publishDatasets` record, JSON.
    pub record_json: Option<String>,
    /// Free of charge.
    pub free: bool,
    /// Price, micro-units.
    pub price_micros: i64,
    /// `YES` or `NO`.
    pub status: String,
}

/// A demand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DemandRow {
    /// Demand number.
    pub demand_id: String,
    /// The buyer.
    pub demander: String,
    /// The validated request, JSON.
    pub record_json: String,
    /// `registered`, `published` or `revoked`.
    pub status: String,
}

/// A confirmation (`/confirmDemand`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfirmationRow {
    /// Confirmation number.
    pub confirm_id: String,
    /// Demand number.
    pub demand_id: String,
    /// Registration number.
    pub registration_id: String,
    /// Dataset id.
    pub data_id: String,
    /// Provider party.
    pub owner: String,
    /// Buyer.
    pub demander: String,
    /// Price, micro-units.
    pub price_micros: i64,
}

/// A settlement (`/settlement`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SettlementRow {
    /// Confirmation number.
    pub confirm_id: String,
    /// The licence issued.
    pub licenses_id: String,
    /// The payment proof, JSON (transfer ids, amounts, accounts).
    pub payment_json: String,
    /// The delivery key sealed to the buyer, JSON.
    pub sealed_key_json: String,
    /// When.
    pub settled_at_ms: i64,
}

/// A licence of table A.37 as issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TradeLicenceRow {
    /// Licence number.
    pub licenses_id: String,
    /// Its confirmation.
    pub confirm_id: String,
    /// Registration number.
    pub registration_id: String,
    /// Dataset id.
    pub data_id: String,
    /// Licensor party.
    pub licensor: String,
    /// Licensee user.
    pub licensee: String,
    /// The signed licence, JSON.
    pub licence_json: String,
    /// `valid`, `superseded` or `revoked` (by its data's owner, `/revokeLicenses`).
    pub status: String,
    /// The licence that replaced it.
    pub superseded_by: Option<String>,
}

/// What a settlement writes, decided by the trade service.
#[derive(Debug, Clone)]
pub struct NewSettlement<'a> {
    /// Confirmation settled.
    pub confirm_id: &'a str,
    /// The signed licence's number and JSON.
    pub licenses_id: &'a str,
    /// The signed licence, JSON.
    pub licence_json: &'a str,
    /// The delivery key sealed to the buyer, JSON.
    pub sealed_key_json: &'a str,
    /// The delivery key (kept by the node to seal packages).
    pub delivery_key: &'a [u8; 32],
    /// The licence term, for the bill line's service period (UTC ms).
    pub term_start_ms: i64,
    /// End of the term.
    pub term_end_ms: i64,
    /// The operator's share of the price.
    pub operator_share_bps: u32,
}

fn publication_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<PublicationRow> {
    Ok(PublicationRow {
        registration_id: r.get(0)?,
        data_id: r.get(1)?,
        owner: r.get(2)?,
        controlled: r.get::<_, i64>(3)? == 1,
        record_json: r.get(4)?,
        free: r.get::<_, i64>(5)? == 1,
        price_micros: r.get(6)?,
        status: r.get(7)?,
    })
}

const PUBLICATION_COLUMNS: &str =
    "registration_id, data_id, owner, controlled, record_json, free, price_micros, status";

fn confirmation_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<ConfirmationRow> {
    Ok(ConfirmationRow {
        confirm_id: r.get(0)?,
        demand_id: r.get(1)?,
        registration_id: r.get(2)?,
        data_id: r.get(3)?,
        owner: r.get(4)?,
        demander: r.get(5)?,
        price_micros: r.get(6)?,
    })
}

fn settlement_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<SettlementRow> {
    Ok(SettlementRow {
        confirm_id: r.get(0)?,
        licenses_id: r.get(1)?,
        payment_json: r.get(2)?,
        sealed_key_json: r.get(3)?,
        settled_at_ms: r.get(4)?,
    })
}

const CONFIRMATION_COLUMNS: &str =
    "confirm_id, demand_id, registration_id, data_id, owner, demander, price_micros";

fn licence_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<TradeLicenceRow> {
    Ok(TradeLicenceRow {
        licenses_id: r.get(0)?,
        confirm_id: r.get(1)?,
        registration_id: r.get(2)?,
        data_id: r.get(3)?,
        licensor: r.get(4)?,
        licensee: r.get(5)?,
        licence_json: r.get(6)?,
        status: r.get(7)?,
        superseded_by: r.get(8)?,
    })
}

const LICENCE_COLUMNS: &str = "licenses_id, confirm_id, registration_id, data_id, licensor, licensee, licence_json, status, superseded_by";
/// The columns of [`LICENCE_COLUMNS`] read from `trade_licences l`, the status `revoked` when
/// the licence is in `trade_revocations`.
const LICENCE_SELECT: &str = "SELECT l.licenses_id, l.confirm_id, l.registration_id, l.data_id, l.licensor, l.licensee, \
     l.licence_json, CASE WHEN r.subject IS NULL THEN l.status ELSE 'revoked' END, l.superseded_by \
     FROM trade_licences l LEFT JOIN trade_revocations r ON r.subject = l.licenses_id AND r.kind = 'licence'";

impl Store {
    /// The licensor party's ed25519 signing key, created from `fresh` on first use (the node
    /// signs licences on the licensor's behalf; the key lives in the database beside the
    /// node's own, see ARCHITECTURE.md "Known gaps").
    ///
    /// # Errors
    /// `Db`, or a stored key of the wrong length (`Corrupt`).
    pub async fn licensor_key(
        &self,
        party: &str,
        fresh: [u8; 32],
        now_ms: i64,
    ) -> Result<[u8; 32], StoreError> {
        let party = party.to_string();
        self.write(move |conn| {
            let existing: Option<Vec<u8>> = conn
                .prepare_cached("SELECT secret_key FROM trade_licensor_keys WHERE party = ?")?
                .query_row(params![party], |r| r.get(0))
                .optional()?;
            let key = match existing {
                Some(k) => k.try_into().map_err(|_| corrupt("licensor key length"))?,
                None => {
                    conn.prepare_cached(
                        "INSERT INTO trade_licensor_keys (party, secret_key, created_at_ms) VALUES (?, ?, ?)",
                    )?
                    .execute(params![party, fresh.as_slice(), now_ms])?;
                    let public = ed25519_public(&fresh);
                    audit::append(
                        conn,
                        now_ms,
                        "trade_licensor_key",
                        &party,
                        &serde_json::json!({"public_key": public}),
                    )?;
                    fresh
                }
            };
            Ok(key)
        })
        .await
    }

    /// Records a registration (`/registerData`).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown dataset; [`StoreError::Invalid`] when the
    /// dataset is not the owner's; `Conflict` for a taken registration number; `Db`.
    pub async fn trade_register(
        &self,
        row: &RegistrationRow,
        actor: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let row = row.clone();
        let actor = actor.to_string();
        self.write(move |conn| {
            dataset_owned_by(conn, &row.data_id, &row.owner)?;
            let n = conn
                .prepare_cached(
                    "INSERT INTO trade_registrations (registration_id, owner, data_id, record_json, created_by, created_at_ms) \
                     VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(registration_id) DO NOTHING",
                )?
                .execute(params![
                    row.registration_id,
                    row.owner,
                    row.data_id,
                    row.record_json,
                    actor,
                    now_ms
                ])?;
            if n == 0 {
                return Err(StoreError::Conflict {
                    kind: "registration",
                    id: row.registration_id.clone(),
                });
            }
            audit::append(
                conn,
                now_ms,
                "trade_register",
                &row.data_id,
                &serde_json::json!({"registrationID": row.registration_id, "owner": row.owner, "by": actor,
                    "record": serde_json::from_str::<serde_json::Value>(&row.record_json).map_err(corrupt)?}),
            )?;
            Ok(())
        })
        .await
    }

    /// A registration.
    ///
    /// # Errors
    /// `NotFound`, `Db`.
    pub async fn trade_registration(
        &self,
        registration_id: &str,
    ) -> Result<RegistrationRow, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT registration_id, owner, data_id, record_json FROM trade_registrations WHERE registration_id = ?",
            )?
            .query_row(params![registration_id], |r| {
                Ok(RegistrationRow {
                    registration_id: r.get(0)?,
                    owner: r.get(1)?,
                    data_id: r.get(2)?,
                    record_json: r.get(3)?,
                })
            })
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                kind: "registration",
                id: registration_id.into(),
            })
        })
    }

    /// Publishes (or publishes again) data: `/publishData` (registered) and
    /// `/publishDatasets` (controlled, `record_json` set). Terms may change while no
    /// confirmation binds the data at the old price; confirmed prices never change.
    ///
    /// # Errors
    /// `NotFound` / `Invalid` for a controlled dataset that is not the owner's; `Db`.
    pub async fn trade_publish(
        &self,
        p: &PublicationRow,
        actor: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let p = p.clone();
        let actor = actor.to_string();
        self.write(move |conn| {
            if p.controlled {
                dataset_owned_by(conn, &p.data_id, &p.owner)?;
            }
            conn.prepare_cached(
                "INSERT INTO trade_publications (registration_id, data_id, owner, controlled, record_json, free, \
                 price_micros, status, updated_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, 'YES', ?) \
                 ON CONFLICT(registration_id, data_id) DO UPDATE SET record_json = excluded.record_json, \
                 free = excluded.free, price_micros = excluded.price_micros, status = 'YES', \
                 updated_at_ms = excluded.updated_at_ms",
            )?
            .execute(params![
                p.registration_id,
                p.data_id,
                p.owner,
                i64::from(p.controlled),
                p.record_json,
                i64::from(p.free),
                p.price_micros,
                now_ms
            ])?;
            audit::append(
                conn,
                now_ms,
                "trade_publish",
                &p.data_id,
                &serde_json::json!({"registrationID": p.registration_id, "owner": p.owner,
                    "controlled": p.controlled, "free": p.free, "price_micros": p.price_micros, "by": actor}),
            )?;
            Ok(())
        })
        .await
    }

    /// A publication.
    ///
    /// # Errors
    /// `NotFound`, `Db`.
    pub async fn trade_publication(
        &self,
        registration_id: &str,
        data_id: &str,
    ) -> Result<PublicationRow, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(&format!(
                "SELECT {PUBLICATION_COLUMNS} FROM trade_publications WHERE registration_id = ? AND data_id = ?"
            ))?
            .query_row(params![registration_id, data_id], publication_of)
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                kind: "publication",
                id: format!("{registration_id}/{data_id}"),
            })
        })
    }

    /// Every publication whose status is `YES`, at most `limit`, in key order.
    ///
    /// # Errors
    /// `Db`.
    pub async fn trade_published(&self, limit: u32) -> Result<Vec<PublicationRow>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {PUBLICATION_COLUMNS} FROM trade_publications WHERE status = 'YES' \
                 ORDER BY registration_id, data_id LIMIT ?"
            ))?;
            let mut rows = stmt.query(params![i64::from(limit)])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(publication_of(r)?);
            }
            Ok(out)
        })
    }

    /// Revokes a publication (`/revokePublishedData`): new confirmations are refused; the
    /// scheduler licences made from its controlled deliveries are returned so that the caller
    /// can cancel their running jobs (their admissions are refused from now on).
    ///
    /// # Errors
    /// `NotFound`, `Db`.
    pub async fn trade_revoke_publication(
        &self,
        registration_id: &str,
        data_id: &str,
        actor: &str,
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let registration_id = registration_id.to_string();
        let data_id = data_id.to_string();
        let actor = actor.to_string();
        self.write(move |conn| {
            let n = conn
                .prepare_cached(
                    "UPDATE trade_publications SET status = 'NO', updated_at_ms = ? WHERE registration_id = ? AND data_id = ?",
                )?
                .execute(params![now_ms, registration_id, data_id])?;
            if n == 0 {
                return Err(StoreError::NotFound {
                    kind: "publication",
                    id: format!("{registration_id}/{data_id}"),
                });
            }
            let mut licences: Vec<String> = Vec::new();
            {
                let mut stmt = conn.prepare_cached(
                    "SELECT p.licence_id FROM trade_policies p JOIN trade_licences l ON l.licenses_id = p.licenses_id \
                     WHERE l.registration_id = ? AND l.data_id = ? ORDER BY p.licence_id",
                )?;
                let mut rows = stmt.query(params![registration_id, data_id])?;
                while let Some(r) = rows.next()? {
                    licences.push(r.get(0)?);
                }
            }
            audit::append(
                conn,
                now_ms,
                "trade_revoke_publication",
                &data_id,
                &serde_json::json!({"registrationID": registration_id, "by": actor, "licences": licences}),
            )?;
            Ok(licences)
        })
        .await
    }

    /// Records a demand (`/registerDemand`).
    ///
    /// # Errors
    /// `Conflict` for a taken number; `Db`.
    pub async fn trade_register_demand(
        &self,
        row: &DemandRow,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let row = row.clone();
        self.write(move |conn| {
            let n = conn
                .prepare_cached(
                    "INSERT INTO trade_demands (demand_id, demander, record_json, status, created_at_ms, updated_at_ms) \
                     VALUES (?, ?, ?, 'registered', ?, ?) ON CONFLICT(demand_id) DO NOTHING",
                )?
                .execute(params![row.demand_id, row.demander, row.record_json, now_ms, now_ms])?;
            if n == 0 {
                return Err(StoreError::Conflict {
                    kind: "demand",
                    id: row.demand_id.clone(),
                });
            }
            audit::append(
                conn,
                now_ms,
                "trade_demand",
                &row.demand_id,
                &serde_json::json!({"demander": row.demander,
                    "record": serde_json::from_str::<serde_json::Value>(&row.record_json).map_err(corrupt)?}),
            )?;
            Ok(())
        })
        .await
    }

    /// A demand.
    ///
    /// # Errors
    /// `NotFound`, `Db`.
    pub async fn trade_demand(&self, demand_id: &str) -> Result<DemandRow, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT demand_id, demander, record_json, status FROM trade_demands WHERE demand_id = ?",
            )?
            .query_row(params![demand_id], |r| {
                Ok(DemandRow {
                    demand_id: r.get(0)?,
                    demander: r.get(1)?,
                    record_json: r.get(2)?,
                    status: r.get(3)?,
                })
            })
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                kind: "demand",
                id: demand_id.into(),
            })
        })
    }

    /// Moves a demand to `published` or `revoked`. A revoked demand stays revoked; a
    /// confirmed one cannot be revoked.
    ///
    /// # Errors
    /// `NotFound`; `Invalid` naming `demandID` for a move the rules refuse; `Db`.
    pub async fn trade_set_demand_status(
        &self,
        demand_id: &str,
        status: &'static str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let demand_id = demand_id.to_string();
        self.write(move |conn| {
            let current: Option<String> = conn
                .prepare_cached("SELECT status FROM trade_demands WHERE demand_id = ?")?
                .query_row(params![demand_id], |r| r.get(0))
                .optional()?;
            let current = current.ok_or_else(|| StoreError::NotFound {
                kind: "demand",
                id: demand_id.clone(),
            })?;
            if current == "revoked" && status != "revoked" {
                return Err(StoreError::Invalid {
                    field: "demandID",
                    reason: format!("demand {demand_id} was revoked"),
                });
            }
            let confirmed: Option<String> = conn
                .prepare_cached("SELECT confirm_id FROM trade_confirmations WHERE demand_id = ?")?
                .query_row(params![demand_id], |r| r.get(0))
                .optional()?;
            if status == "revoked"
                && let Some(c) = confirmed
            {
                return Err(StoreError::Invalid {
                    field: "demandID",
                    reason: format!(
                        "demand {demand_id} is confirmed ({c}) and can no longer be revoked"
                    ),
                });
            }
            conn.prepare_cached(
                "UPDATE trade_demands SET status = ?, updated_at_ms = ? WHERE demand_id = ?",
            )?
            .execute(params![status, now_ms, demand_id])?;
            audit::append(
                conn,
                now_ms,
                "trade_demand_status",
                &demand_id,
                &serde_json::json!({"status": status}),
            )?;
            Ok(())
        })
        .await
    }

    /// Binds one published dataset to one published demand (`/confirmDemand`) at the
    /// publication's current price.
    ///
    /// # Errors
    /// `NotFound` (demand, publication); `Invalid` naming the field when the demand or the
    /// data is not published; `Conflict` when the demand is confirmed already; `Db`.
    pub async fn trade_confirm(
        &self,
        confirm_id: &str,
        demand_id: &str,
        registration_id: &str,
        data_id: &str,
        now_ms: i64,
    ) -> Result<ConfirmationRow, StoreError> {
        let confirm_id = confirm_id.to_string();
        let demand_id = demand_id.to_string();
        let registration_id = registration_id.to_string();
        let data_id = data_id.to_string();
        self.write(move |conn| {
            let (demander, status): (String, String) = conn
                .prepare_cached("SELECT demander, status FROM trade_demands WHERE demand_id = ?")?
                .query_row(params![demand_id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?
                .ok_or_else(|| StoreError::NotFound {
                    kind: "demand",
                    id: demand_id.clone(),
                })?;
            if status != "published" {
                return Err(StoreError::Invalid {
                    field: "demandID",
                    reason: format!("demand {demand_id} is {status}, not published"),
                });
            }
            let p = conn
                .prepare_cached(&format!(
                    "SELECT {PUBLICATION_COLUMNS} FROM trade_publications WHERE registration_id = ? AND data_id = ?"
                ))?
                .query_row(params![registration_id, data_id], publication_of)
                .optional()?
                .ok_or_else(|| StoreError::NotFound {
                    kind: "publication",
                    id: format!("{registration_id}/{data_id}"),
                })?;
            if p.status != "YES" {
                return Err(StoreError::Invalid {
                    field: "registrationID",
                    reason: format!("{registration_id}/{data_id} is not published"),
                });
            }
            let n = conn
                .prepare_cached(
                    "INSERT INTO trade_confirmations (confirm_id, demand_id, registration_id, data_id, owner, demander, \
                     price_micros, created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(demand_id) DO NOTHING",
                )?
                .execute(params![
                    confirm_id,
                    demand_id,
                    registration_id,
                    data_id,
                    p.owner,
                    demander,
                    p.price_micros,
                    now_ms
                ])?;
            if n == 0 {
                return Err(StoreError::Conflict {
                    kind: "confirmation of demand",
                    id: demand_id.clone(),
                });
            }
            let row = ConfirmationRow {
                confirm_id: confirm_id.clone(),
                demand_id: demand_id.clone(),
                registration_id: registration_id.clone(),
                data_id: data_id.clone(),
                owner: p.owner,
                demander,
                price_micros: p.price_micros,
            };
            audit::append(
                conn,
                now_ms,
                "trade_confirm",
                &data_id,
                &serde_json::json!(row),
            )?;
            Ok(row)
        })
        .await
    }

    /// A confirmation.
    ///
    /// # Errors
    /// `NotFound`, `Db`.
    pub async fn trade_confirmation(
        &self,
        confirm_id: &str,
    ) -> Result<ConfirmationRow, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(&format!(
                "SELECT {CONFIRMATION_COLUMNS} FROM trade_confirmations WHERE confirm_id = ?"
            ))?
            .query_row(params![confirm_id], confirmation_of)
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                kind: "confirmation",
                id: confirm_id.into(),
            })
        })
    }

    /// A confirmation's settlement, if any.
    ///
    /// # Errors
    /// `Db`.
    pub async fn trade_settlement(
        &self,
        confirm_id: &str,
    ) -> Result<Option<SettlementRow>, StoreError> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT confirm_id, licenses_id, payment_json, sealed_key_json, settled_at_ms \
                     FROM trade_settlements WHERE confirm_id = ?",
                )?
                .query_row(params![confirm_id], settlement_of)
                .optional()?)
        })
    }

    /// The delivery key of a settled confirmation (secret: for sealing packages only).
    ///
    /// # Errors
    /// `NotFound`, `Corrupt`, `Db`.
    pub async fn trade_delivery_key(&self, confirm_id: &str) -> Result<[u8; 32], StoreError> {
        self.read(|conn| {
            let k: Option<Vec<u8>> = conn
                .prepare_cached("SELECT delivery_key FROM trade_settlements WHERE confirm_id = ?")?
                .query_row(params![confirm_id], |r| r.get(0))
                .optional()?;
            k.ok_or_else(|| StoreError::NotFound {
                kind: "settlement",
                id: confirm_id.into(),
            })?
            .try_into()
            .map_err(|_| corrupt("delivery key length"))
        })
    }

    /// Settles a confirmation (`/settlement`) in one transaction: the price paid by the buyer
    /// as a prepaid order (recharge voucher, cash, credit line) and split to the licensor and
    /// the operator, the bill line, the settlement, the licence. A confirmation already
    /// settled answers its first settlement (the new licence is discarded): nothing moves
    /// twice.
    ///
    /// # Errors
    /// `NotFound`; `Refused` (frozen account, insufficient funds: nothing written); `Db`.
    pub async fn trade_settle(
        &self,
        s: &NewSettlement<'_>,
        now_ms: i64,
    ) -> Result<SettlementRow, StoreError> {
        let confirm_id = s.confirm_id.to_string();
        let licenses_id = s.licenses_id.to_string();
        let licence_json = s.licence_json.to_string();
        let sealed_key_json = s.sealed_key_json.to_string();
        let delivery_key = *s.delivery_key;
        let term_start_ms = s.term_start_ms;
        let term_end_ms = s.term_end_ms;
        let operator_share_bps = s.operator_share_bps;
        let zone = self.zone.clone();
        self.write(move |conn| {
            let c = conn
                .prepare_cached(&format!(
                    "SELECT {CONFIRMATION_COLUMNS} FROM trade_confirmations WHERE confirm_id = ?"
                ))?
                .query_row(params![confirm_id], confirmation_of)
                .optional()?
                .ok_or_else(|| StoreError::NotFound {
                    kind: "confirmation",
                    id: confirm_id.clone(),
                })?;
            let existing = conn
                .prepare_cached(
                    "SELECT confirm_id, licenses_id, payment_json, sealed_key_json, settled_at_ms \
                     FROM trade_settlements WHERE confirm_id = ?",
                )?
                .query_row(params![confirm_id], settlement_of)
                .optional()?;
            if let Some(r) = existing {
                return Ok(r);
            }
            let customer = c.demander.as_str();
            let paid = if c.price_micros > 0 {
                let freeze = limits::load_context(conn, customer)?;
                if let ManualFreeze::Frozen(why) = &freeze.manual {
                    return Err(StoreError::Refused(RuleRefusal::AccountFrozen {
                        customer: customer.to_string(),
                        reason: why.clone(),
                    }));
                }
                let funds = ledger::customer_funds(conn, customer)?;
                settle::data_purchase(
                    &DataPurchase {
                        confirm_id: &c.confirm_id,
                        customer,
                        provider: &c.owner,
                        registration_id: &c.registration_id,
                        data_id: &c.data_id,
                        price_micros: c.price_micros,
                        operator_share_bps,
                        term_start: term_start_ms,
                        term_end: term_end_ms,
                        now: now_ms,
                    },
                    &funds,
                )
                .map_err(|e| StoreError::Refused(e.into()))?
            } else {
                settle::DataSettlement {
                    transfers: Vec::new(),
                    line: None,
                    paid_from: Vec::new(),
                }
            };
            for t in &paid.transfers {
                ledger::post(conn, t, now_ms)?;
            }
            if let Some(line) = &paid.line {
                add_line(conn, line, now_ms, &zone)?;
            }
            let payment = serde_json::json!({
                "ledger_transfers": paid.transfers.iter().map(|t| serde_json::json!({
                    "id": t.id, "debit": t.debit, "credit": t.credit, "amount_micros": t.amount_micros,
                })).collect::<Vec<_>>(),
                "amount_micros": c.price_micros,
                "paid_from": paid.paid_from.iter().map(|(a, m)| serde_json::json!({"account": a.name(), "amount_micros": m})).collect::<Vec<_>>(),
                "bill_line_id": paid.line.as_ref().map(|l| l.line_id.clone()),
                "provider_account": AccountKind::ProviderReceivable(c.owner.clone()).name(),
            });
            let payment_json = payment.to_string();
            conn.prepare_cached(
                "INSERT INTO trade_settlements (confirm_id, licenses_id, payment_json, sealed_key_json, delivery_key, settled_at_ms) \
                 VALUES (?, ?, ?, ?, ?, ?)",
            )?
            .execute(params![
                confirm_id,
                licenses_id,
                payment_json,
                sealed_key_json,
                delivery_key.as_slice(),
                now_ms
            ])?;
            conn.prepare_cached(&format!(
                "INSERT INTO trade_licences ({LICENCE_COLUMNS}, issued_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, 'valid', NULL, ?)"
            ))?
            .execute(params![
                licenses_id,
                confirm_id,
                c.registration_id,
                c.data_id,
                c.owner,
                c.demander,
                licence_json,
                now_ms
            ])?;
            audit::append(
                conn,
                now_ms,
                "trade_settle",
                &c.data_id,
                &serde_json::json!({"confirmID": c.confirm_id, "licensesID": licenses_id,
                    "payment": payment, "licence": serde_json::from_str::<serde_json::Value>(&licence_json).map_err(corrupt)?}),
            )?;
            Ok(SettlementRow {
                confirm_id,
                licenses_id,
                payment_json,
                sealed_key_json,
                settled_at_ms: now_ms,
            })
        })
        .await
    }

    /// A licence of table A.37 by number.
    ///
    /// # Errors
    /// `NotFound`, `Db`.
    pub async fn trade_licence(&self, licenses_id: &str) -> Result<TradeLicenceRow, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(&format!("{LICENCE_SELECT} WHERE l.licenses_id = ?"))?
                .query_row(params![licenses_id], licence_of)
                .optional()?
                .ok_or_else(|| StoreError::NotFound {
                    kind: "licence",
                    id: licenses_id.into(),
                })
        })
    }

    /// The valid licences of a dataset, at most 1,000.
    ///
    /// # Errors
    /// `Db`.
    pub async fn trade_valid_licences(
        &self,
        data_id: &str,
    ) -> Result<Vec<TradeLicenceRow>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "{LICENCE_SELECT} WHERE l.data_id = ? AND l.status = 'valid' AND r.subject IS NULL \
                 ORDER BY l.issued_at_ms, l.licenses_id LIMIT 1000"
            ))?;
            let mut rows = stmt.query(params![data_id])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(licence_of(r)?);
            }
            Ok(out)
        })
    }

    /// Replaces a valid licence by a reissued one (`/updateLicenses`): the old one is
    /// `superseded` (a delivery or policy naming it is refused from now on), the new one
    /// valid, for the same settlement.
    ///
    /// # Errors
    /// `NotFound`; `Invalid` naming `licensesID` when the old one is not valid; `Db`.
    pub async fn trade_supersede_licence(
        &self,
        old_id: &str,
        new_id: &str,
        new_json: &str,
        actor: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let old_id = old_id.to_string();
        let new_id = new_id.to_string();
        let new_json = new_json.to_string();
        let actor = actor.to_string();
        self.write(move |conn| {
            let old = conn
                .prepare_cached(&format!("{LICENCE_SELECT} WHERE l.licenses_id = ?"))?
                .query_row(params![old_id], licence_of)
                .optional()?
                .ok_or_else(|| StoreError::NotFound {
                    kind: "licence",
                    id: old_id.clone(),
                })?;
            if old.status == "revoked" {
                return Err(StoreError::Invalid {
                    field: "licensesID",
                    reason: format!("licence {old_id} was revoked"),
                });
            }
            let n = conn
                .prepare_cached(
                    "UPDATE trade_licences SET status = 'superseded', superseded_by = ? WHERE licenses_id = ? AND status = 'valid'",
                )?
                .execute(params![new_id, old_id])?;
            if n == 0 {
                return Err(StoreError::Invalid {
                    field: "licensesID",
                    reason: format!("licence {old_id} is no longer valid"),
                });
            }
            conn.prepare_cached(&format!(
                "INSERT INTO trade_licences ({LICENCE_COLUMNS}, issued_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, 'valid', NULL, ?)"
            ))?
            .execute(params![
                new_id,
                old.confirm_id,
                old.registration_id,
                old.data_id,
                old.licensor,
                old.licensee,
                new_json,
                now_ms
            ])?;
            conn.prepare_cached("UPDATE trade_policies SET licenses_id = ? WHERE licenses_id = ?")?
                .execute(params![new_id, old_id])?;
            conn.prepare_cached("UPDATE trade_settlements SET licenses_id = ? WHERE confirm_id = ?")?
                .execute(params![new_id, old.confirm_id])?;
            audit::append(
                conn,
                now_ms,
                "trade_licence_update",
                &old.data_id,
                &serde_json::json!({"old": old_id, "new": new_id, "by": actor,
                    "licence": serde_json::from_str::<serde_json::Value>(&new_json).map_err(corrupt)?}),
            )?;
            Ok(())
        })
        .await
    }

    /// Stores the data file of a registration (Tessera's `/uploadData`), replacing an
    /// earlier upload.
    ///
    /// # Errors
    /// `NotFound` for an unknown registration; `Db`.
    pub async fn trade_put_file(
        &self,
        registration_id: &str,
        sha256_hex: &str,
        bytes: &[u8],
        actor: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let registration_id = registration_id.to_string();
        let sha256_hex = sha256_hex.to_string();
        let bytes = bytes.to_vec();
        let actor = actor.to_string();
        self.write(move |conn| {
            let data_id: Option<String> = conn
                .prepare_cached("SELECT data_id FROM trade_registrations WHERE registration_id = ?")?
                .query_row(params![registration_id], |r| r.get(0))
                .optional()?;
            let data_id = data_id.ok_or_else(|| StoreError::NotFound {
                kind: "registration",
                id: registration_id.clone(),
            })?;
            conn.prepare_cached(
                "INSERT INTO trade_files (registration_id, sha256, bytes, uploaded_at_ms) VALUES (?, ?, ?, ?) \
                 ON CONFLICT(registration_id) DO UPDATE SET sha256 = excluded.sha256, bytes = excluded.bytes, \
                 uploaded_at_ms = excluded.uploaded_at_ms",
            )?
            .execute(params![registration_id, sha256_hex, bytes, now_ms])?;
            audit::append(
                conn,
                now_ms,
                "trade_upload",
                &data_id,
                &serde_json::json!({"registrationID": registration_id, "sha256": sha256_hex,
                    "bytes": bytes.len(), "by": actor}),
            )?;
            Ok(())
        })
        .await
    }

    /// Whether any confirmation of a registration has been settled (its file is then frozen).
    ///
    /// # Errors
    /// `Db`.
    pub async fn trade_sold(&self, registration_id: &str) -> Result<bool, StoreError> {
        self.read(|conn| {
            let n: i64 = conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM trade_settlements s JOIN trade_confirmations c ON c.confirm_id = s.confirm_id \
                     WHERE c.registration_id = ?",
                )?
                .query_row(params![registration_id], |r| r.get(0))?;
            Ok(n > 0)
        })
    }

    /// The data file of a registration: (SHA-256 hex, bytes).
    ///
    /// # Errors
    /// `NotFound` when nothing was uploaded; `Db`.
    pub async fn trade_file(&self, registration_id: &str) -> Result<(String, Vec<u8>), StoreError> {
        self.read(|conn| {
            conn.prepare_cached("SELECT sha256, bytes FROM trade_files WHERE registration_id = ?")?
                .query_row(params![registration_id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?
                .ok_or_else(|| StoreError::NotFound {
                    kind: "data file of registration",
                    id: registration_id.into(),
                })
        })
    }

    /// Records a delivery and its proof (`/deliver`).
    ///
    /// # Errors
    /// `Db`.
    pub async fn trade_record_delivery(
        &self,
        delivery_id: &str,
        confirm_id: &str,
        licenses_id: &str,
        data_id: &str,
        proof_json: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let delivery_id = delivery_id.to_string();
        let confirm_id = confirm_id.to_string();
        let licenses_id = licenses_id.to_string();
        let data_id = data_id.to_string();
        let proof_json = proof_json.to_string();
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO trade_deliveries (delivery_id, confirm_id, licenses_id, proof_json, delivered_at_ms) \
                 VALUES (?, ?, ?, ?, ?)",
            )?
            .execute(params![delivery_id, confirm_id, licenses_id, proof_json, now_ms])?;
            audit::append(
                conn,
                now_ms,
                "trade_deliver",
                &data_id,
                &serde_json::json!({"confirmID": confirm_id, "licensesID": licenses_id,
                    "proof": serde_json::from_str::<serde_json::Value>(&proof_json).map_err(corrupt)?}),
            )?;
            Ok(())
        })
        .await
    }

    /// The latest delivery proof of a confirmation.
    ///
    /// # Errors
    /// `NotFound` when nothing was delivered; `Db`.
    pub async fn trade_delivery(&self, confirm_id: &str) -> Result<String, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT proof_json FROM trade_deliveries WHERE confirm_id = ? ORDER BY delivered_at_ms DESC, delivery_id DESC LIMIT 1",
            )?
            .query_row(params![confirm_id], |r| r.get(0))
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                kind: "delivery of confirmation",
                id: confirm_id.into(),
            })
        })
    }

    /// A controlled delivery (`/deliverDatasets`): the scheduler licence carrying the usage
    /// policy, and its policy record, in one transaction.
    ///
    /// # Errors
    /// As [`Store::create_licence`]; `Db`.
    pub async fn trade_deliver_policy(
        &self,
        policy_id: &str,
        licenses_id: &str,
        licence: &LicenceRecord,
        start_date: &str,
        end_date: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let policy_id = policy_id.to_string();
        let licenses_id = licenses_id.to_string();
        let licence = licence.clone();
        let start_date = start_date.to_string();
        let end_date = end_date.to_string();
        self.write(move |conn| {
            insert_licence(conn, &licence, now_ms)?;
            conn.prepare_cached(
                "INSERT INTO trade_policies (policy_id, licenses_id, data_id, licence_id, policy_name, start_date, \
                 end_date, created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )?
            .execute(params![
                policy_id,
                licenses_id,
                licence.dataset_id,
                licence.licence_id,
                licence.policy.policy_name,
                start_date,
                end_date,
                now_ms
            ])?;
            audit::append(
                conn,
                now_ms,
                "trade_deliver_policy",
                &licence.dataset_id,
                &serde_json::json!({"policyId": policy_id, "licensesID": licenses_id, "licence_id": licence.licence_id}),
            )?;
            Ok(())
        })
        .await
    }
}

fn dataset_owned_by(conn: &Connection, data_id: &str, owner: &str) -> Result<(), StoreError> {
    let party: Option<String> = conn
        .prepare_cached("SELECT owner_party FROM datasets WHERE dataset_id = ?")?
        .query_row(params![data_id], |r| r.get(0))
        .optional()?;
    match party {
        None => Err(StoreError::NotFound {
            kind: "dataset",
            id: data_id.into(),
        }),
        Some(p) if p != owner => Err(StoreError::Invalid {
            field: "dataID",
            reason: format!("dataset {data_id} is not {owner}'s"),
        }),
        Some(_) => Ok(()),
    }
}

fn ed25519_public(secret: &[u8; 32]) -> String {
    use std::fmt::Write as _;
    let key = ed25519_dalek::SigningKey::from_bytes(secret);
    key.verifying_key()
        .as_bytes()
        .iter()
        .fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The query behind [`withdrawn`]: the trade licence, publication and revocation of one
/// licence (`?` its id).
pub(crate) const WITHDRAWN: &str = "SELECT l.licenses_id, l.status, p.status, l.registration_id, l.data_id, tp.policy_id, \
             (SELECT r.kind || ' ' || r.subject || ' by ' || r.revoked_by || CASE WHEN r.reason = '' THEN '' ELSE ': ' || r.reason END FROM trade_revocations r \
              WHERE (r.kind = 'licence' AND r.subject = l.licenses_id) OR (r.kind = 'policy' AND r.subject = tp.policy_id) \
              ORDER BY r.revoked_at_ms LIMIT 1) \
             FROM trade_policies tp \
             JOIN trade_licences l ON l.licenses_id = tp.licenses_id \
             LEFT JOIN trade_publications p ON p.registration_id = l.registration_id AND p.data_id = l.data_id \
             WHERE tp.licence_id = ?";

/// Why a licence made by a controlled delivery may no longer admit jobs: its publication was
/// revoked, or its trade licence is no longer valid (`None`: it may, or it was not made by
/// the trade flow).
pub(crate) fn withdrawn(conn: &Connection, licence_id: &str) -> Result<Option<String>, StoreError> {
    let r = conn
        .prepare_cached(WITHDRAWN)?
        .query_row(params![licence_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, String>(4)?,
                r.get::<_, Option<String>>(6)?,
            ))
        })
        .optional()?;
    let Some((licenses_id, licence_status, publication, data_id, revocation)) = r else {
        return Ok(None);
    };
    if let Some(revocation) = revocation {
        return Ok(Some(format!(
            "revoked ({revocation}): licence {licence_id} admits no more jobs"
        )));
    }
    if publication.as_deref() != Some("YES") {
        return Ok(Some(format!(
            "the publication of dataset {data_id} was revoked: licence {licence_id} admits no more jobs"
        )));
    }
    if licence_status != "valid" {
        return Ok(Some(format!(
            "trade licence {licenses_id} behind licence {licence_id} is {licence_status}"
        )));
    }
    Ok(None)
}

impl Store {
    /// The jobs still admitted or running under a licence, at most 10,000.
    ///
    /// # Errors
    /// `Db`.
    pub async fn live_jobs_of_licence(&self, licence_id: &str) -> Result<Vec<String>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT job_id FROM jobs WHERE licence_id = ? AND state IN ('admitted', 'running') \
                 ORDER BY created_at_ms LIMIT 10000",
            )?;
            let mut rows = stmt.query(params![licence_id])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(r.get(0)?);
            }
            Ok(out)
        })
    }

    /// Why a licence admits no more jobs, if it was withdrawn: a revoked licence or policy,
    /// or a revoked publication (the reason admission gives, `Refusal::Withdrawn`).
    ///
    /// # Errors
    /// `Db`.
    pub async fn licence_withdrawn(&self, licence_id: &str) -> Result<Option<String>, StoreError> {
        self.read(|conn| withdrawn(conn, licence_id))
    }

    /// A delivered policy (`/deliverDatasets`) by its id, with the licensor of its licence.
    ///
    /// # Errors
    /// `NotFound`; `Db`.
    pub async fn trade_policy(&self, policy_id: &str) -> Result<TradePolicyRow, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT tp.policy_id, tp.licenses_id, tp.data_id, tp.licence_id, l.licensor FROM trade_policies tp \
                 JOIN trade_licences l ON l.licenses_id = tp.licenses_id WHERE tp.policy_id = ?",
            )?
            .query_row(params![policy_id], |r| {
                Ok(TradePolicyRow {
                    policy_id: r.get(0)?,
                    licenses_id: r.get(1)?,
                    data_id: r.get(2)?,
                    licence_id: r.get(3)?,
                    licensor: r.get(4)?,
                })
            })
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                kind: "policy",
                id: policy_id.into(),
            })
        })
    }

    /// Revokes a trade licence (`kind = "licence"`, `subject` its `licensesID`: every policy
    /// delivered under it with it) or one delivered policy (`"policy"`, its `policyId`), for
    /// good; returns the scheduler licences whose jobs must end and whether this call revoked
    /// it (a second call revokes nothing more and answers the same licences). The audit
    /// entry `trade_revoke` (subject: the dataset) names who, why and the licences.
    ///
    /// # Errors
    /// `NotFound`; `Invalid` naming `licensesID` for a superseded licence (revoke the one
    /// that replaced it); `Db`.
    pub async fn trade_revoke(
        &self,
        kind: RevocationKind,
        subject: &str,
        reason: &str,
        actor: &str,
        now_ms: i64,
    ) -> Result<(Vec<String>, bool), StoreError> {
        let subject = subject.to_string();
        let reason = reason.to_string();
        let actor = actor.to_string();
        self.write(move |conn| {
            let (data_id, licences): (String, Vec<String>) = match kind {
                RevocationKind::Licence => {
                    let row = conn
                        .prepare_cached(&format!("{LICENCE_SELECT} WHERE l.licenses_id = ?"))?
                        .query_row(params![subject], licence_of)
                        .optional()?
                        .ok_or_else(|| StoreError::NotFound {
                            kind: "licence",
                            id: subject.clone(),
                        })?;
                    if row.status == "superseded" {
                        return Err(StoreError::Invalid {
                            field: "licensesID",
                            reason: format!(
                                "licence {subject} was superseded by {}: revoke that one",
                                row.superseded_by.as_deref().unwrap_or("another")
                            ),
                        });
                    }
                    let mut licences = Vec::new();
                    let mut stmt = conn.prepare_cached(
                        "SELECT licence_id FROM trade_policies WHERE licenses_id = ? ORDER BY licence_id",
                    )?;
                    let mut rows = stmt.query(params![subject])?;
                    while let Some(r) = rows.next()? {
                        licences.push(r.get(0)?);
                    }
                    (row.data_id, licences)
                }
                RevocationKind::Policy => {
                    let (data_id, licence_id): (String, String) = conn
                        .prepare_cached(
                            "SELECT data_id, licence_id FROM trade_policies WHERE policy_id = ?",
                        )?
                        .query_row(params![subject], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()?
                        .ok_or_else(|| StoreError::NotFound {
                            kind: "policy",
                            id: subject.clone(),
                        })?;
                    (data_id, vec![licence_id])
                }
            };
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO trade_revocations (subject, kind, data_id, reason, revoked_by, revoked_at_ms) \
                     VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(subject) DO NOTHING",
                )?
                .execute(params![subject, kind.as_str(), data_id, reason, actor, now_ms])?
                == 1;
            if inserted {
                audit::append(
                    conn,
                    now_ms,
                    "trade_revoke",
                    &data_id,
                    &serde_json::json!({"kind": kind.as_str(), "subject": subject, "reason": reason,
                        "by": actor, "licences": licences}),
                )?;
            }
            Ok((licences, inserted))
        })
        .await
    }
}

/// What `/revokeLicenses` revokes ([`Store::trade_revoke`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationKind {
    /// A trade licence (table A.37) and every policy delivered under it.
    Licence,
    /// One delivered policy (table A.48).
    Policy,
}

impl RevocationKind {
    /// The text stored and audited.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Licence => "licence",
            Self::Policy => "policy",
        }
    }
}

/// A delivered policy ([`Store::trade_policy`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TradePolicyRow {
    /// Policy id (`policyId`).
    pub policy_id: String,
    /// The trade licence it was delivered under.
    pub licenses_id: String,
    /// Dataset id.
    pub data_id: String,
    /// The scheduler licence jobs name.
    pub licence_id: String,
    /// Licensor party.
    pub licensor: String,
}
