//! The records tables re-derived from the audit chain: each licence scene's counters, each job
//! row, each bill and each bill line is rebuilt from the entries that recorded the decisions
//! changing it, and compared field by field with the stored row (issue 8 item 11).
//!
//! | table | entries it is re-derived from |
//! |---|---|
//! | `licence_scenes` | `licence_create` (counts, initial remaining), `admit` (reserves one), `complete` (`count`: committed → used, released → remaining) |
//! | `jobs` | `admit` / `refuse`, `dispatch` (admitted → running), `deliver`, `complete` |
//! | `bills` | the first `bill_line` of a bill (customer, period, created), `bill_close` |
//! | `bill_lines` | `bill_line` (the whole line, its bill, its correction period; arrival = the entry's time) |
//! | `users` | `user_create` (roles, created), `user_disable` (the first one stamps), `user_enable` |
//! | `group_members` | `group_add`, `group_remove` |
//! | `parties` | `party_create` (owner, created) |
//! | `tokens` | `token_issue` (kind, owner, hash, label, times), `token_revoke` (the first one stamps) |
//! | `worker_credentials` | `worker_credential_issue` (worker, party, hash, issued), `worker_credential_revoke` |
//!
//! Every write to these tables appends its entry in the same transaction, so a stored row that
//! differs from its re-derivation was changed behind the store's back. Values are compared as
//! SQL literals: SQLite's `quote()` of the stored value, and the chain's JSON value rendered
//! the same way (`NULL`, `7`, `'text'`), so a field rewritten with a value of another type is
//! reported, never a failed read.
//!
//! Older entries: a field an entry does not hold is not checked (the row is counted as
//! checked in part). Admissions recorded before the job's `mode`, `protocol`, `buyer_party`,
//! `provider_party` and `output_name` were added to the entry leave those unchecked; ends
//! recorded before `result_location` was added leave it unchecked, and ends recorded before
//! the result file, failure origin, empty-key counts and the provider's result file were kept
//! leave those unchecked. A
//! request's full text (`request_json`) and `updated_at_ms` of rows changed by no entry are
//! not re-derived; nor are tasks, usage events, licence terms or statements.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::Connection;
use serde::Serialize;
use serde_json::Value;

use crate::audit::{AuditEntry, AuditProblem, Findings};
use crate::{Store, StoreError};

/// A table re-derived from the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordTable {
    /// A licence scene's counters.
    LicenceScenes,
    /// Jobs.
    Jobs,
    /// Monthly bills.
    Bills,
    /// Bill lines.
    BillLines,
    /// Users.
    Users,
    /// Recorded group memberships.
    GroupMembers,
    /// Parties and their owners.
    Parties,
    /// API and registration tokens (hashes).
    Tokens,
    /// Worker credentials (hashes).
    WorkerCredentials,
}

/// The account tables, in the order they are compared.
const ACCOUNT_TABLES: [RecordTable; 5] = [
    RecordTable::Users,
    RecordTable::GroupMembers,
    RecordTable::Parties,
    RecordTable::Tokens,
    RecordTable::WorkerCredentials,
];

impl RecordTable {
    /// The table's name in the schema.
    pub fn name(self) -> &'static str {
        match self {
            Self::LicenceScenes => "licence_scenes",
            Self::Jobs => "jobs",
            Self::Bills => "bills",
            Self::BillLines => "bill_lines",
            Self::Users => "users",
            Self::GroupMembers => "group_members",
            Self::Parties => "parties",
            Self::Tokens => "tokens",
            Self::WorkerCredentials => "worker_credentials",
        }
    }

    /// How findings name a row.
    fn row_name(self, key: &RowKey) -> String {
        match self {
            Self::LicenceScenes => format!("licence {} scene {}", key.0, key.1),
            Self::Jobs => format!("job {}", key.0),
            Self::Bills => format!("bill {}", key.0),
            Self::BillLines => format!("bill line {}", key.0),
            Self::Users => format!("user {}", key.0),
            Self::GroupMembers => format!("group {} member {}", key.0, key.1),
            Self::Parties => format!("party {}", key.0),
            Self::Tokens => format!("token {}", key.0),
            Self::WorkerCredentials => format!("worker credential {}", key.0),
        }
    }

    /// The primary key's columns.
    fn key_columns(self) -> &'static [&'static str] {
        match self {
            Self::LicenceScenes => &["licence_id", "scene"],
            Self::Jobs => &["job_id"],
            Self::Bills => &["bill_id"],
            Self::BillLines => &["line_id"],
            Self::Users => &["user_id"],
            Self::GroupMembers => &["group_id", "user_id"],
            Self::Parties => &["party_id"],
            Self::Tokens | Self::WorkerCredentials => &["token_id"],
        }
    }

    /// The compared fields: (name in findings, column).
    fn columns(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::LicenceScenes => &[
                ("counts", "counts"),
                ("remaining_counts", "remaining"),
                ("reserved_counts", "reserved"),
                ("used_counts", "used"),
            ],
            Self::Jobs => JOB_COLUMNS,
            Self::Bills => &[
                ("customer", "customer"),
                ("period", "period"),
                ("state", "state"),
                ("created_at_ms", "created_at_ms"),
                ("closed_at_ms", "closed_at_ms"),
            ],
            Self::BillLines => LINE_COLUMNS,
            Self::Users => &[
                ("roles", "roles"),
                ("created_at_ms", "created_at_ms"),
                ("disabled_at_ms", "disabled_at_ms"),
            ],
            Self::GroupMembers => &[("added_at_ms", "added_at_ms")],
            Self::Parties => &[
                ("owner_user_id", "owner_user_id"),
                ("created_at_ms", "created_at_ms"),
            ],
            Self::Tokens => &[
                ("kind", "kind"),
                ("user_id", "user_id"),
                ("party_id", "party_id"),
                ("secret_sha256", "secret_sha256"),
                ("label", "label"),
                ("created_at_ms", "created_at_ms"),
                ("expires_at_ms", "expires_at_ms"),
                ("revoked_at_ms", "revoked_at_ms"),
            ],
            Self::WorkerCredentials => &[
                ("worker_id", "worker_id"),
                ("party", "party"),
                ("secret_sha256", "secret_sha256"),
                ("issued_at_ms", "issued_at_ms"),
                ("revoked_at_ms", "revoked_at_ms"),
            ],
        }
    }
}

impl std::fmt::Display for RecordTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

const JOB_COLUMNS: &[(&str, &str)] = &[
    ("licence_id", "licence_id"),
    ("scene", "scene"),
    ("user_id", "user_id"),
    ("mode", "mode"),
    ("protocol", "protocol"),
    ("mpc_triples", "mpc_triples"),
    ("state", "state"),
    ("count_state", "count_state"),
    ("reasons_json", "reasons_json"),
    ("request_id", "request_id"),
    ("buyer_party", "buyer_party"),
    ("provider_party", "provider_party"),
    ("output_name", "output_name"),
    ("co_licences", "co_licences"),
    ("created_at_ms", "created_at_ms"),
    ("updated_at_ms", "updated_at_ms"),
    ("delivered_at_ms", "delivered_at_ms"),
    ("delivered_rows", "delivered_rows"),
    ("finished_at_ms", "finished_at_ms"),
    ("charge_micros", "charge_micros"),
    ("error", "error"),
    ("error_role", "error_role"),
    ("error_party", "error_party"),
    ("error_kind", "error_kind"),
    ("result_size", "result_size"),
    ("result_location", "result_location"),
    ("result_bytes", "result_bytes"),
    ("result_rows", "result_rows"),
    ("result_sha256", "result_sha256"),
    ("buyer_empty_keys", "buyer_empty_keys"),
    ("provider_empty_keys", "provider_empty_keys"),
    ("provider_result_location", "provider_result_location"),
    ("provider_result_bytes", "provider_result_bytes"),
    ("provider_result_rows", "provider_result_rows"),
    ("provider_result_sha256", "provider_result_sha256"),
];

/// Bill line columns and where a `bill_line` entry holds each (a JSON pointer into its
/// detail); `arrival_time_ms` is the entry's time.
const LINE_COLUMNS: &[(&str, &str)] = &[
    ("bill_id", "bill_id"),
    ("customer", "customer"),
    ("job_id", "job_id"),
    ("kind", "kind"),
    ("product", "product"),
    ("provider", "provider"),
    ("corrects_period", "corrects_period"),
    ("event_time_ms", "event_time_ms"),
    ("arrival_time_ms", "arrival_time_ms"),
    ("service_start_ms", "service_start_ms"),
    ("service_end_ms", "service_end_ms"),
    ("original_micros", "original_micros"),
    ("platform_discount_micros", "platform_discount_micros"),
    ("customer_discount_micros", "customer_discount_micros"),
    ("coupon_micros", "coupon_micros"),
    ("deduction_voucher_micros", "deduction_voucher_micros"),
    ("recharge_voucher_micros", "recharge_voucher_micros"),
    ("cash_micros", "cash_micros"),
    ("credit_micros", "credit_micros"),
    ("arrears_micros", "arrears_micros"),
    ("provider_micros", "provider_micros"),
    ("operator_micros", "operator_micros"),
    ("note", "note"),
];

/// Where a `bill_line` entry's detail holds each line column.
const LINE_POINTERS: &[(&str, &str)] = &[
    ("bill_id", "/bill_id"),
    ("customer", "/line/customer"),
    ("job_id", "/line/job_id"),
    ("kind", "/line/kind"),
    ("product", "/line/product"),
    ("provider", "/line/provider"),
    ("corrects_period", "/corrects_period"),
    ("event_time_ms", "/line/event_time_ms"),
    ("service_start_ms", "/line/service_start_ms"),
    ("service_end_ms", "/line/service_end_ms"),
    ("original_micros", "/line/amounts/original"),
    (
        "platform_discount_micros",
        "/line/amounts/platform_discount",
    ),
    (
        "customer_discount_micros",
        "/line/amounts/customer_discount",
    ),
    ("coupon_micros", "/line/amounts/coupon"),
    (
        "deduction_voucher_micros",
        "/line/amounts/deduction_voucher",
    ),
    ("recharge_voucher_micros", "/line/amounts/recharge_voucher"),
    ("cash_micros", "/line/amounts/cash"),
    ("credit_micros", "/line/amounts/credit"),
    ("arrears_micros", "/line/amounts/arrears"),
    ("provider_micros", "/line/split/provider_micros"),
    ("operator_micros", "/line/split/operator_micros"),
    ("note", "/line/note"),
];

/// A row's primary key (the second part empty for one-column keys).
pub type RowKey = (String, String);

/// One stored row: its key and every compared field as an SQL literal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredRow {
    /// Primary key.
    pub key: RowKey,
    /// Field name → SQL literal of the stored value.
    pub fields: BTreeMap<String, String>,
}

/// The records tables as stored, for [`crate::audit::verify_all`].
#[derive(Debug, Clone, Default)]
pub struct RecordTables {
    /// `licence_scenes`.
    pub licence_scenes: Vec<StoredRow>,
    /// `jobs`.
    pub jobs: Vec<StoredRow>,
    /// `bills`.
    pub bills: Vec<StoredRow>,
    /// `bill_lines`.
    pub bill_lines: Vec<StoredRow>,
    /// The account tables (`users`, `group_members`, `parties`, `tokens`,
    /// `worker_credentials`), in [`ACCOUNT_TABLES`] order.
    pub accounts: Vec<(RecordTable, Vec<StoredRow>)>,
}

/// Rows re-derived from the chain and compared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RecordsChecked {
    /// Licence scenes whose counters were compared.
    pub licence_scenes: u64,
    /// Job rows compared.
    pub jobs: u64,
    /// Bills compared.
    pub bills: u64,
    /// Bill lines compared.
    pub bill_lines: u64,
    /// Rows of the account tables (users, group members, parties, tokens, worker
    /// credentials) compared.
    pub accounts: u64,
    /// Rows of those compared only in part: their entries predate some fields (see the
    /// module's documentation).
    pub partly_checked: u64,
}

impl Store {
    /// The records tables as SQL literals, for verification, on `conn` (the verification's
    /// read transaction: one snapshot).
    ///
    /// # Errors
    /// The database's.
    pub(crate) fn record_tables_on(conn: &Connection) -> Result<RecordTables, StoreError> {
        Ok(RecordTables {
            licence_scenes: Self::stored_rows(conn, RecordTable::LicenceScenes)?,
            jobs: Self::stored_rows(conn, RecordTable::Jobs)?,
            bills: Self::stored_rows(conn, RecordTable::Bills)?,
            bill_lines: Self::stored_rows(conn, RecordTable::BillLines)?,
            accounts: {
                let mut v = Vec::new();
                for t in ACCOUNT_TABLES {
                    v.push((t, Self::stored_rows(conn, t)?));
                }
                v
            },
        })
    }

    fn stored_rows(conn: &Connection, table: RecordTable) -> Result<Vec<StoredRow>, StoreError> {
        let keys = table.key_columns();
        let columns = table.columns();
        let mut select: Vec<String> = keys
            .iter()
            .map(|k| format!("COALESCE(CAST({k} AS TEXT), '')"))
            .collect();
        select.extend(columns.iter().map(|(_, c)| format!("quote({c})")));
        let sql = format!(
            "SELECT {} FROM {} ORDER BY rowid",
            select.join(", "),
            table.name()
        );
        // One text per table (a handful): cached like any other statement.
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let second = if keys.len() > 1 {
                r.get(1)?
            } else {
                String::new()
            };
            let mut fields = BTreeMap::new();
            for (i, (name, _)) in columns.iter().enumerate() {
                fields.insert((*name).to_string(), r.get(keys.len() + i)?);
            }
            out.push(StoredRow {
                key: (r.get(0)?, second),
                fields,
            });
        }
        Ok(out)
    }
}

/// An SQL literal of a blob given as hex, as SQLite's `quote()` writes it (`X'0A1B'`).
fn blob_lit(hex: &str) -> String {
    format!("X'{}'", hex.to_ascii_uppercase())
}

/// An SQL literal of text, as SQLite's `quote()` writes it.
fn text_lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// An SQL literal of a JSON value: `NULL`, a number, or quoted text (arrays and objects as
/// their compact JSON text, the form the store writes them in).
fn lit(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Bool(b) => i64::from(*b).to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => text_lit(s),
        other => text_lit(&other.to_string()),
    }
}

fn opt_int_lit(v: Option<i64>) -> String {
    v.map_or_else(|| "NULL".into(), |v| v.to_string())
}

/// A row re-derived from the chain: each known field's SQL literal with the entry that last
/// set it. A field the entries do not hold is absent (not checked).
#[derive(Debug, Clone, Default)]
struct Derived {
    /// The entry that created the row.
    seq: u64,
    fields: BTreeMap<&'static str, (String, u64)>,
}

impl Derived {
    fn set(&mut self, field: &'static str, value: String, seq: u64) {
        self.fields.insert(field, (value, seq));
    }

    /// Sets `field` from the entry's value at `pointer`, or forgets it when the entry does
    /// not hold one (an older entry): it is not checked then.
    fn copy(&mut self, field: &'static str, detail: &Value, pointer: &str, seq: u64) {
        match detail.pointer(pointer) {
            Some(v) => self.set(field, lit(v), seq),
            None => {
                self.fields.remove(field);
            }
        }
    }

    fn get(&self, field: &str) -> Option<&str> {
        self.fields.get(field).map(|(v, _)| v.as_str())
    }
}

/// A licence scene's counters as the chain gives them.
#[derive(Debug, Clone)]
struct SceneCounts {
    seq: u64,
    last_seq: u64,
    counts: Option<i64>,
    remaining: Option<i64>,
    reserved: i64,
    used: i64,
}

/// A job as the chain gives it, with the scene its count was reserved on.
#[derive(Debug, Clone)]
struct DerivedJob {
    scene: RowKey,
    /// The further licences' scenes (an `fl` job's), counted with the job's own.
    co_scenes: Vec<RowKey>,
    row: Derived,
}

/// Everything re-derived from the chain.
#[derive(Default)]
struct Chain {
    scenes: BTreeMap<RowKey, SceneCounts>,
    jobs: BTreeMap<RowKey, DerivedJob>,
    bills: BTreeMap<RowKey, Derived>,
    lines: BTreeMap<RowKey, Derived>,
    /// Rows of the account tables.
    accounts: BTreeMap<RecordTable, BTreeMap<RowKey, Derived>>,
    /// Rows that could not be re-derived (already reported): not compared.
    underivable: BTreeSet<(RecordTable, RowKey)>,
}

fn key(id: &str) -> RowKey {
    (id.to_string(), String::new())
}

/// The saturating conversion the store applies to a policy's counts.
fn stored_count(c: u64) -> i64 {
    i64::try_from(c).unwrap_or(i64::MAX)
}

impl Chain {
    fn underivable(
        &mut self,
        found: &mut Findings,
        table: RecordTable,
        key: RowKey,
        seq: u64,
        reason: String,
    ) {
        found.push(AuditProblem::RecordUnderivable {
            table,
            row: table.row_name(&key),
            seq,
            reason,
        });
        self.underivable.insert((table, key));
    }

    fn apply(&mut self, e: &AuditEntry, found: &mut Findings) {
        let table = match e.kind.as_str() {
            "licence_create" => RecordTable::LicenceScenes,
            "admit" | "refuse" | "dispatch" | "deliver" | "complete" => RecordTable::Jobs,
            "bill_line" => RecordTable::BillLines,
            "bill_close" => RecordTable::Bills,
            "user_create" | "user_disable" | "user_enable" => RecordTable::Users,
            "group_add" | "group_remove" => RecordTable::GroupMembers,
            "party_create" => RecordTable::Parties,
            "token_issue" | "token_revoke" => RecordTable::Tokens,
            "worker_credential_issue" | "worker_credential_revoke" => {
                RecordTable::WorkerCredentials
            }
            _ => return,
        };
        let seq = u64::try_from(e.seq).unwrap_or(0);
        let detail: Value = match serde_json::from_str(&e.detail_json) {
            Ok(v) => v,
            Err(err) => {
                let reason = format!("entry {seq} ({}) is not readable JSON: {err}", e.kind);
                self.underivable(found, table, key(&e.subject), seq, reason);
                return;
            }
        };
        match e.kind.as_str() {
            "licence_create" => self.licence_created(e, seq, &detail, found),
            "admit" | "refuse" => self.admission(e, seq, &detail, found),
            "dispatch" => self.dispatched(e, seq),
            "deliver" => self.delivered(e, seq, &detail, found),
            "complete" => self.completed(e, seq, &detail, found),
            "bill_line" => self.bill_line(e, seq, &detail, found),
            "bill_close" => self.bill_closed(e, seq, found),
            _ => self.account(table, e, seq, &detail),
        }
    }

    /// An entry of the account tables: a row created with its fields, a membership removed,
    /// or a first disable / revocation stamped (a second one changes nothing, as in the
    /// store).
    fn account(&mut self, table: RecordTable, e: &AuditEntry, seq: u64, d: &Value) {
        let at = e.at_ms.to_string();
        let text = |p: &str| d.pointer(p).and_then(Value::as_str).unwrap_or_default();
        let rows = self.accounts.entry(table).or_default();
        let mut created = Derived {
            seq,
            ..Derived::default()
        };
        let row_key = match e.kind.as_str() {
            "group_add" | "group_remove" => (e.subject.clone(), text("/user").to_string()),
            _ => key(&e.subject),
        };
        match e.kind.as_str() {
            "user_create" => {
                created.copy("roles", d, "/roles", seq);
                created.set("created_at_ms", at, seq);
                created.set("disabled_at_ms", "NULL".into(), seq);
            }
            "group_add" => created.set("added_at_ms", at, seq),
            "group_remove" => {
                rows.remove(&row_key);
                return;
            }
            "user_enable" => {
                if let Some(row) = rows.get_mut(&row_key) {
                    row.set("disabled_at_ms", "NULL".into(), seq);
                }
                return;
            }
            "party_create" => {
                created.copy("owner_user_id", d, "/owner", seq);
                created.set("created_at_ms", at, seq);
            }
            "token_issue" => {
                created.copy("kind", d, "/kind", seq);
                created.copy("user_id", d, "/user", seq);
                created.copy("party_id", d, "/party", seq);
                created.set("secret_sha256", blob_lit(text("/secret_sha256")), seq);
                created.copy("label", d, "/label", seq);
                created.set("created_at_ms", at, seq);
                created.copy("expires_at_ms", d, "/expires_at_ms", seq);
                created.set("revoked_at_ms", "NULL".into(), seq);
            }
            "worker_credential_issue" => {
                created.copy("worker_id", d, "/worker", seq);
                created.copy("party", d, "/party", seq);
                created.set("secret_sha256", blob_lit(text("/secret_sha256")), seq);
                created.set("issued_at_ms", at, seq);
                created.set("revoked_at_ms", "NULL".into(), seq);
            }
            stamp => {
                let field = if stamp == "user_disable" {
                    "disabled_at_ms"
                } else {
                    "revoked_at_ms"
                };
                if let Some(row) = rows.get_mut(&row_key)
                    && row.get(field) == Some("NULL")
                {
                    row.set(field, at, seq);
                }
                return;
            }
        }
        rows.insert(row_key, created);
    }

    fn licence_created(&mut self, e: &AuditEntry, seq: u64, d: &Value, found: &mut Findings) {
        let Some(scenes) = d.pointer("/policy/useScenes").and_then(Value::as_array) else {
            let reason = format!("entry {seq} records licence {} without scenes", e.subject);
            self.underivable(
                found,
                RecordTable::LicenceScenes,
                (e.subject.clone(), String::new()),
                seq,
                reason,
            );
            return;
        };
        for s in scenes {
            let Some(name) = s.get("useSence").and_then(Value::as_str) else {
                continue;
            };
            let counts = s.get("counts").and_then(Value::as_u64);
            let remaining = s.get("remainingCounts").and_then(Value::as_u64).or(counts);
            self.scenes.insert(
                (e.subject.clone(), name.to_string()),
                SceneCounts {
                    seq,
                    last_seq: seq,
                    counts: counts.map(stored_count),
                    remaining: remaining.map(stored_count),
                    reserved: 0,
                    used: 0,
                },
            );
        }
    }

    fn admission(&mut self, e: &AuditEntry, seq: u64, d: &Value, found: &mut Findings) {
        let job = key(&e.subject);
        if self.jobs.contains_key(&job) {
            let reason = format!("entry {seq} records its admission a second time");
            self.underivable(found, RecordTable::Jobs, job, seq, reason);
            return;
        }
        let admitted = e.kind == "admit";
        let text = |p: &str| d.pointer(p).and_then(Value::as_str).unwrap_or_default();
        let scene = (text("/licence_id").to_string(), text("/scene").to_string());
        let mut row = Derived {
            seq,
            ..Derived::default()
        };
        row.copy("licence_id", d, "/licence_id", seq);
        row.copy("scene", d, "/scene", seq);
        row.copy("user_id", d, "/user", seq);
        row.copy("request_id", d, "/request_id", seq);
        row.copy("mode", d, "/mode", seq);
        row.copy("protocol", d, "/protocol", seq);
        row.copy("mpc_triples", d, "/mpc_triples", seq);
        row.copy("buyer_party", d, "/buyer_party", seq);
        row.copy("provider_party", d, "/provider_party", seq);
        row.copy("output_name", d, "/output_name", seq);
        row.copy("co_licences", d, "/co_licences", seq);
        // `co_licences` is the column's text: a JSON array of {licence_id, provider_party}.
        let co_scenes: Vec<RowKey> = serde_json::from_str::<Vec<crate::jobs::CoLicence>>(
            d.pointer("/co_licences")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .unwrap_or("[]"),
        )
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.licence_id, scene.1.clone()))
        .collect();
        if d.pointer("/reasons").is_some_and(Value::is_array) {
            row.copy("reasons_json", d, "/reasons", seq);
        }
        let at = e.at_ms.to_string();
        let (state, count) = if admitted {
            ("admitted", "reserved")
        } else {
            ("refused", "none")
        };
        row.set("state", text_lit(state), seq);
        row.set("count_state", text_lit(count), seq);
        row.set("created_at_ms", at.clone(), seq);
        row.set("updated_at_ms", at.clone(), seq);
        let finished = if admitted { "NULL".into() } else { at };
        row.set("finished_at_ms", finished, seq);
        for (field, initial) in [
            ("delivered_at_ms", "NULL"),
            ("delivered_rows", "NULL"),
            ("charge_micros", "0"),
            ("error", "''"),
            ("error_role", "''"),
            ("error_party", "''"),
            ("error_kind", "''"),
            ("result_size", "NULL"),
            ("result_location", "''"),
            ("result_bytes", "NULL"),
            ("result_rows", "NULL"),
            ("result_sha256", "''"),
            ("buyer_empty_keys", "NULL"),
            ("provider_empty_keys", "NULL"),
            ("provider_result_location", "''"),
            ("provider_result_bytes", "NULL"),
            ("provider_result_rows", "NULL"),
            ("provider_result_sha256", "''"),
        ] {
            row.set(field, initial.to_string(), seq);
        }
        if admitted {
            self.reserve(&scene, &e.subject, seq, found);
            for s in &co_scenes {
                self.reserve(s, &e.subject, seq, found);
            }
        }
        self.jobs.insert(
            job,
            DerivedJob {
                scene,
                co_scenes,
                row,
            },
        );
    }

    /// One count reserved on `scene` by the admission of `job`.
    fn reserve(&mut self, scene: &RowKey, job: &str, seq: u64, found: &mut Findings) {
        let t = RecordTable::LicenceScenes;
        if self.underivable.contains(&(t, scene.clone())) {
            return;
        }
        let Some(c) = self.scenes.get_mut(scene) else {
            let reason = format!(
                "entry {seq} admits job {job} on it, but no licence_create entry records it"
            );
            self.underivable(found, t, scene.clone(), seq, reason);
            return;
        };
        let remaining = match c.remaining {
            None => Some(None),
            Some(r) if r > 0 => Some(Some(r - 1)),
            Some(_) => None,
        };
        match (remaining, c.reserved.checked_add(1)) {
            (Some(remaining), Some(reserved)) => {
                c.remaining = remaining;
                c.reserved = reserved;
                c.last_seq = seq;
            }
            _ => {
                let reason = format!("entry {seq} admits job {job} on it when no count remains");
                self.underivable(found, t, scene.clone(), seq, reason);
            }
        }
    }

    fn dispatched(&mut self, e: &AuditEntry, seq: u64) {
        // The store marks only an admitted job running (and audits the dispatch anyway).
        if let Some(job) = self.jobs.get_mut(&key(&e.subject))
            && job.row.get("state") == Some("'admitted'")
        {
            job.row.set("state", text_lit("running"), seq);
            job.row.set("updated_at_ms", e.at_ms.to_string(), seq);
        }
    }

    /// The job an entry is about, reported when the chain never admitted it.
    fn job_of(&mut self, e: &AuditEntry, seq: u64, found: &mut Findings) -> Option<RowKey> {
        let job = key(&e.subject);
        if self.underivable.contains(&(RecordTable::Jobs, job.clone())) {
            return None;
        }
        if self.jobs.contains_key(&job) {
            return Some(job);
        }
        let reason = format!(
            "entry {seq} ({}) is about it, but the chain records no admission",
            e.kind
        );
        self.underivable(found, RecordTable::Jobs, job, seq, reason);
        None
    }

    fn delivered(&mut self, e: &AuditEntry, seq: u64, d: &Value, found: &mut Findings) {
        let Some(job) = self
            .job_of(e, seq, found)
            .and_then(|k| self.jobs.get_mut(&k))
        else {
            return;
        };
        let at = e.at_ms.to_string();
        // The delivery moves an admitted job to running (since dispatch writes nothing;
        // older chains recorded `dispatch` entries, handled above).
        if job.row.get("state") == Some("'admitted'") {
            job.row.set("state", text_lit("running"), seq);
        }
        job.row.set("delivered_at_ms", at.clone(), seq);
        job.row.set("updated_at_ms", at, seq);
        job.row.copy("delivered_rows", d, "/delivered_rows", seq);
    }

    fn completed(&mut self, e: &AuditEntry, seq: u64, d: &Value, found: &mut Findings) {
        let Some(k) = self.job_of(e, seq, found) else {
            return;
        };
        let Some(job) = self.jobs.get_mut(&k) else {
            return;
        };
        if job.row.get("count_state") != Some("'reserved'") {
            let reason = format!("entry {seq} ends it, but it was not running");
            self.underivable(found, RecordTable::Jobs, k, seq, reason);
            return;
        }
        let row = &mut job.row;
        let at = e.at_ms.to_string();
        row.set("finished_at_ms", at.clone(), seq);
        row.set("updated_at_ms", at, seq);
        for (field, pointer) in [
            ("state", "/state"),
            ("count_state", "/count"),
            ("error", "/error"),
            ("result_size", "/result_size"),
            ("charge_micros", "/charge_micros"),
            ("result_location", "/result_location"),
        ] {
            row.copy(field, d, pointer, seq);
        }
        end_object(
            row,
            d,
            "result_file",
            &[
                ("result_bytes", "/bytes", "NULL"),
                ("result_rows", "/rows", "NULL"),
                ("result_sha256", "/sha256_hex", "''"),
            ],
            seq,
        );
        end_object(
            row,
            d,
            "provider_result_file",
            &[
                ("provider_result_location", "/name", "''"),
                ("provider_result_bytes", "/bytes", "NULL"),
                ("provider_result_rows", "/rows", "NULL"),
                ("provider_result_sha256", "/sha256_hex", "''"),
            ],
            seq,
        );
        end_object(
            row,
            d,
            "failure",
            &[
                ("error_role", "/role", "''"),
                ("error_party", "/party", "''"),
                ("error_kind", "/kind", "''"),
            ],
            seq,
        );
        end_object(
            row,
            d,
            "empty_keys",
            &[
                ("buyer_empty_keys", "/buyer", "NULL"),
                ("provider_empty_keys", "/provider", "NULL"),
            ],
            seq,
        );
        let count = d.pointer("/count").and_then(Value::as_str).unwrap_or("");
        let scenes: Vec<RowKey> = std::iter::once(job.scene.clone())
            .chain(job.co_scenes.iter().cloned())
            .collect();
        for scene in &scenes {
            self.settle_count(scene, &e.subject, count, seq, found);
        }
    }

    /// The reserved count of `job` on `scene` committed (used) or released (remaining again).
    fn settle_count(
        &mut self,
        scene: &RowKey,
        job: &str,
        count: &str,
        seq: u64,
        found: &mut Findings,
    ) {
        let t = RecordTable::LicenceScenes;
        if self.underivable.contains(&(t, scene.clone())) {
            return;
        }
        let Some(c) = self.scenes.get_mut(scene) else {
            return;
        };
        let settled = match count {
            "committed" => c.used.checked_add(1).map(|u| (u, c.remaining)),
            "released" => match c.remaining {
                None => Some((c.used, None)),
                Some(r) => r.checked_add(1).map(|r| (c.used, Some(r))),
            },
            _ => None,
        };
        match (settled, c.reserved.checked_sub(1).filter(|r| *r >= 0)) {
            (Some((used, remaining)), Some(reserved)) => {
                c.used = used;
                c.remaining = remaining;
                c.reserved = reserved;
                c.last_seq = seq;
            }
            _ => {
                let reason = format!(
                    "entry {seq} ends job {job} with count {count:?}, which it cannot settle"
                );
                self.underivable(found, t, scene.clone(), seq, reason);
            }
        }
    }

    fn bill_line(&mut self, e: &AuditEntry, seq: u64, d: &Value, found: &mut Findings) {
        let line = key(&e.subject);
        if self.lines.contains_key(&line) {
            let reason = format!("entry {seq} records it a second time");
            self.underivable(found, RecordTable::BillLines, line, seq, reason);
            return;
        }
        let mut row = Derived {
            seq,
            ..Derived::default()
        };
        for (field, pointer) in LINE_POINTERS {
            row.copy(field, d, pointer, seq);
        }
        row.set("arrival_time_ms", e.at_ms.to_string(), seq);
        self.lines.insert(line, row);
        let text = |p: &str| d.pointer(p).and_then(Value::as_str);
        let (Some(bill), Some(customer)) = (text("/bill_id"), text("/line/customer")) else {
            return;
        };
        // The first line of a bill creates it (`YYYY-MM:customer`), open.
        self.bills.entry(key(bill)).or_insert_with(|| {
            let mut b = Derived {
                seq,
                ..Derived::default()
            };
            b.set("customer", text_lit(customer), seq);
            if let Some(period) = bill.strip_suffix(&format!(":{customer}")) {
                b.set("period", text_lit(period), seq);
            }
            b.set("state", text_lit("open"), seq);
            b.set("created_at_ms", e.at_ms.to_string(), seq);
            b.set("closed_at_ms", "NULL".into(), seq);
            b
        });
    }

    fn bill_closed(&mut self, e: &AuditEntry, seq: u64, found: &mut Findings) {
        let bill = key(&e.subject);
        match self.bills.get_mut(&bill) {
            Some(b) => {
                b.set("state", text_lit("closed"), seq);
                b.set("closed_at_ms", e.at_ms.to_string(), seq);
            }
            None => {
                let reason = format!("entry {seq} closes it, but the chain records no line on it");
                self.underivable(found, RecordTable::Bills, bill, seq, reason);
            }
        }
    }
}

/// Fields from an object member of a `complete` entry: `null` sets each to its default, an
/// object to its members; an entry without the member (older) leaves them unchecked.
fn end_object(
    row: &mut Derived,
    d: &Value,
    member: &str,
    fields: &[(&'static str, &str, &str)],
    seq: u64,
) {
    match d.get(member) {
        None => {
            for (field, _, _) in fields {
                row.fields.remove(field);
            }
        }
        Some(Value::Null) => {
            for (field, _, default) in fields {
                row.set(field, (*default).to_string(), seq);
            }
        }
        Some(v) => {
            for (field, pointer, _) in fields {
                row.copy(field, v, pointer, seq);
            }
        }
    }
}

/// Re-derives the licence scene counters, jobs, bills and bill lines from the chain and
/// compares them with the stored rows.
pub(crate) fn check_records(
    entries: &[AuditEntry],
    tables: &RecordTables,
    found: &mut Findings,
) -> RecordsChecked {
    let mut chain = Chain::default();
    for e in entries {
        chain.apply(e, found);
    }
    let Chain {
        scenes,
        jobs,
        bills,
        lines,
        mut accounts,
        underivable,
    } = chain;
    let scenes = scenes
        .into_iter()
        .map(|(k, c)| {
            let mut d = Derived {
                seq: c.seq,
                ..Derived::default()
            };
            d.set("counts", opt_int_lit(c.counts), c.seq);
            d.set("remaining_counts", opt_int_lit(c.remaining), c.last_seq);
            d.set("reserved_counts", c.reserved.to_string(), c.last_seq);
            d.set("used_counts", c.used.to_string(), c.last_seq);
            (k, d)
        })
        .collect();
    let jobs = jobs.into_iter().map(|(k, j)| (k, j.row)).collect();
    let mut checked = RecordsChecked::default();
    let mut partly = 0u64;
    let mut check = |table, derived, stored: &[StoredRow]| {
        compare(table, derived, stored, &underivable, found, &mut partly)
    };
    checked.licence_scenes = check(RecordTable::LicenceScenes, scenes, &tables.licence_scenes);
    checked.jobs = check(RecordTable::Jobs, jobs, &tables.jobs);
    checked.bills = check(RecordTable::Bills, bills, &tables.bills);
    checked.bill_lines = check(RecordTable::BillLines, lines, &tables.bill_lines);
    for (table, stored) in &tables.accounts {
        let derived = accounts.remove(table).unwrap_or_default();
        checked.accounts = checked
            .accounts
            .saturating_add(check(*table, derived, stored));
    }
    checked.partly_checked = partly;
    checked
}

/// Compares stored rows with their re-derivation, in the table's column order: a field that
/// differs, a row no entry records, a row the chain records that is gone. Returns the rows
/// compared.
fn compare(
    table: RecordTable,
    mut derived: BTreeMap<RowKey, Derived>,
    stored: &[StoredRow],
    skip: &BTreeSet<(RecordTable, RowKey)>,
    found: &mut Findings,
    partly_checked: &mut u64,
) -> u64 {
    let mut compared = 0u64;
    for row in stored {
        let Some(d) = derived.remove(&row.key) else {
            if !skip.contains(&(table, row.key.clone())) {
                found.push(AuditProblem::RecordNotInChain {
                    table,
                    row: table.row_name(&row.key),
                });
            }
            continue;
        };
        if skip.contains(&(table, row.key.clone())) {
            continue;
        }
        compared = compared.saturating_add(1);
        if d.fields.len() < table.columns().len() {
            *partly_checked = partly_checked.saturating_add(1);
        }
        for (field, _) in table.columns() {
            let (Some((chain, seq)), Some(stored)) = (d.fields.get(field), row.fields.get(*field))
            else {
                continue;
            };
            if chain != stored {
                found.push(AuditProblem::RecordField {
                    table,
                    row: table.row_name(&row.key),
                    field: (*field).to_string(),
                    stored: stored.clone(),
                    chain: chain.clone(),
                    seq: *seq,
                });
            }
        }
    }
    for (k, d) in derived {
        if !skip.contains(&(table, k.clone())) {
            found.push(AuditProblem::RecordMissing {
                table,
                row: table.row_name(&k),
                seq: d.seq,
            });
        }
    }
    compared
}
