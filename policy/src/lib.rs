//! Licence usage policies in the shape of T/AI 123.12 tables A.48–A.50, and a pure evaluator.
//!
//! A policy names the users (or groups) allowed, a validity window and the scenes a licence
//! may be used for; each scene may limit the number of runs and the region, compute centre,
//! hardware, AI framework and software environment a run may use. [`evaluate`] returns a
//! verdict per constraint so that every refusal carries its reasons; [`worker_fits`] checks a
//! worker's declared attributes against a scene. Count reservation is not done here: the store
//! reserves counts atomically with the job record.

use serde::{Deserialize, Serialize};
use tessera_core::WorkerAttributes;
use tessera_core::civil::{Zone, parse_millis};

/// Why a policy document was rejected.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PolicyError {
    /// The JSON does not have the T/AI shape.
    #[error("policy JSON: {0}")]
    Json(String),
    /// A date is not `yyyy-mm-dd HH:MM:SS` (or is not a real date).
    #[error("date {value:?} is not yyyy-mm-dd HH:MM:SS")]
    BadDate {
        /// The offending text.
        value: String,
    },
    /// A field's value is not allowed.
    #[error("invalid policy: {0}")]
    Invalid(String),
}

/// A user or group allowed by the policy (table A.49).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RelUser {
    /// User id or group id.
    pub user_id: String,
    /// Display name.
    #[serde(default)]
    pub user_name: String,
    /// 0: a user, 1: a group.
    #[serde(default)]
    pub is_group: u8,
}

/// A T/AI "json" list field: accepted as a string, a list of strings, or absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "ListField", into = "Vec<String>")]
pub struct AllowList(pub Vec<String>);

#[derive(Deserialize)]
#[serde(untagged)]
enum ListField {
    Null,
    One(String),
    Many(Vec<String>),
}

impl From<ListField> for AllowList {
    fn from(v: ListField) -> Self {
        match v {
            ListField::Null => AllowList(Vec::new()),
            ListField::One(s) if s.trim().is_empty() => AllowList(Vec::new()),
            ListField::One(s) => AllowList(vec![s]),
            ListField::Many(v) => AllowList(v),
        }
    }
}

impl From<AllowList> for Vec<String> {
    fn from(v: AllowList) -> Self {
        v.0
    }
}

impl AllowList {
    /// `envHard` against a worker's hardware class: the `tee:` entries name trusted
    /// execution environments (checked against the worker's attestation by the `tee` scene,
    /// `tessera_tee::HardwareRequirement`), the others hardware classes; no entry of the
    /// latter kind means "any class".
    pub fn allows_hardware(&self, hardware: &str) -> bool {
        let mut classes = self.0.iter().filter(|v| !v.starts_with("tee:")).peekable();
        classes.peek().is_none() || classes.any(|v| v == hardware)
    }

    /// Empty means "any".
    pub fn allows(&self, value: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|v| v == value)
    }
    /// Whether any of `values` is allowed.
    pub fn allows_any(&self, values: &[String]) -> bool {
        self.0.is_empty() || values.iter().any(|v| self.allows(v))
    }
}

/// One scene's settings (table A.50).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UseScene {
    /// The scene name (the standard spells the field `useSence`), e.g. `psi`.
    #[serde(rename = "useSence")]
    pub use_sence: String,
    /// Preview rows and columns (预览行列范围; the `preview` scene): `{"rows": [first,
    /// last], "columns": ["a", …]}` (rows numbered from 1, header excluded, inclusive;
    /// `columns` optional: absent means all) or the short form `[first, last]`. See
    /// [`PreviewWindow`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view_rows_range: Option<serde_json::Value>,
    /// Preview pages (预览页数范围; the `preview` scene): `{"pages": [first, last],
    /// "pageSize": n}` (pages numbered from 1; `pageSize` default [`PREVIEW_PAGE_ROWS`]) or
    /// the short form `[first, last]`. See [`PreviewWindow`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view_page_range: Option<serde_json::Value>,
    /// Run limit; absent means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<u64>,
    /// Runs left; maintained by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_counts: Option<u64>,
    /// Allowed hardware.
    #[serde(default)]
    pub env_hard: AllowList,
    /// Allowed run regions.
    #[serde(default)]
    pub visit_area: AllowList,
    /// Allowed AI frameworks.
    #[serde(default)]
    pub ai_frame: AllowList,
    /// Allowed software environments.
    #[serde(default)]
    pub env_soft: AllowList,
    /// Allowed compute centres.
    #[serde(default)]
    pub cp_center: AllowList,
    /// Allowed protocols for this scene's engine (Tessera's extension of table A.50, e.g.
    /// `["ecdh"]` to keep PSI on public-key operations only); empty or absent: any. Names from [`tessera_core::PsiProtocol`] (`rr22`, `ecdh`, `ecdh-oprf`) for the `psi` scene.
    #[serde(default)]
    pub protocols: AllowList,
    /// The `mpc` scene (Tessera's extension): groups of a statistics query with fewer rows
    /// than this are suppressed inside the computation, before anything is opened to the
    /// buyer (1 to [`MIN_GROUP_SIZE_MAX`]; absent: no minimum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_group_size: Option<u64>,
    /// The `mpc` scene (Tessera's extension): only aggregates may leave a computation; a
    /// row-level query is refused at admission and by both workers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub aggregates_only: bool,
    /// The `mpc` scene (Tessera's extension): who receives a model a job trains, `"buyer"`
    /// (absent: the buyer) or `"provider"` — the other party learns nothing of it —, or
    /// `"shared"`: nobody; the model stays secret-shared between the two parties' workers and
    /// the buyer scores rows with it in later jobs under this licence (`SCORE … MODEL job`),
    /// each counted as a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_to: Option<tessera_core::ModelRecipient>,
    /// The `psi_payload` and `tee` scenes (Tessera's extension): the provider's columns a
    /// join may deliver to the buyer for its matched rows (a PSI with payload). Empty or
    /// absent: none — a join then tells the buyer only which of its keys are common. At most
    /// [`PAYLOAD_COLUMNS_MAX`], each named once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub payload_columns: Vec<String>,
    /// The `psi_payload` and `tee` scenes (Tessera's extension): the join shapes a run may
    /// ask for (`inner`, `left`, `difference`: `tessera_core::JoinKind`); empty or absent:
    /// any. Every shape tells the buyer the same thing, which of its keys are common; they
    /// differ in which of its own rows the result keeps.
    #[serde(default)]
    pub joins: AllowList,
}

/// The most columns a scene's `payloadColumns` may name.
pub const PAYLOAD_COLUMNS_MAX: usize = 64;

impl UseScene {
    /// Whether a join of shape `kind` delivering the provider's `columns` lies inside this
    /// scene: the shape is in `joins` (or `joins` is empty), every column is in
    /// `payloadColumns`, and a `difference` delivers none.
    ///
    /// # Errors
    /// Why not, naming the shape or the columns outside the scene.
    pub fn admits_join(
        &self,
        kind: tessera_core::JoinKind,
        columns: &[String],
    ) -> Result<(), String> {
        if !self.joins.allows(kind.as_str()) {
            return Err(format!(
                "join {kind} is not allowed for scene {} (joins: {})",
                self.use_sence,
                self.joins.0.join(", ")
            ));
        }
        if kind == tessera_core::JoinKind::Difference && !columns.is_empty() {
            return Err(
                "a difference keeps the buyer's rows the provider does not have: no provider \
                 column can be delivered with it"
                    .into(),
            );
        }
        let outside: Vec<&str> = columns
            .iter()
            .filter(|c| !self.payload_columns.contains(c))
            .map(String::as_str)
            .collect();
        if !outside.is_empty() {
            return Err(format!(
                "provider column(s) {} are not in scene {}'s payloadColumns ({})",
                outside.join(", "),
                self.use_sence,
                if self.payload_columns.is_empty() {
                    "none: no provider column may be delivered".to_string()
                } else {
                    self.payload_columns.join(", ")
                }
            ));
        }
        Ok(())
    }
}

/// The largest `minGroupSize` an `mpc` scene may set.
pub const MIN_GROUP_SIZE_MAX: u64 = 1_000_000;

/// The correlated-randomness sources an `mpc` scene's `protocols` may name: `ot`, triples made
/// between the two parties by oblivious transfer (no third party); `dealer`, triples expanded
/// by the operator's dealer (which must not collude with either party).
pub const MPC_PROTOCOLS: &[&str] = &["ot", "dealer"];

/// A usage policy (table A.48 minus the licence and data id, which the licence record holds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UsagePolicy {
    /// Policy name.
    pub policy_name: String,
    /// Users and groups allowed.
    pub rel_users: Vec<RelUser>,
    /// Start of validity, `yyyy-mm-dd HH:MM:SS` in the operator's zone (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_date: Option<String>,
    /// End of validity, `yyyy-mm-dd HH:MM:SS` in the operator's zone (exclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_date: Option<String>,
    /// Scenes allowed.
    pub use_scenes: Vec<UseScene>,
}

/// The largest `counts` / `remainingCounts` a policy may set: the store keeps counts as
/// signed 64-bit integers (SQLite `INTEGER`), and no licence needs more runs than this.
pub const COUNTS_MAX: u64 = 1_000_000_000_000;

/// The scenes Tessera's engines serve (`useSence` values, issue "Licences and usage
/// control"): private set intersection, PSI with the provider's payload columns,
/// secret-sharing MPC, federated learning, homomorphic scoring, trusted execution, and a
/// bounded preview of the data. A policy naming any other scene is refused at creation, since
/// it could never admit a job. (This build runs `psi` jobs; the others are admitted by
/// policies now and get their engines in later issues.)
pub const KNOWN_SCENES: &[&str] = &["psi", "psi_payload", "mpc", "fl", "fhe", "tee", "preview"];

/// Rows per page of `viewPageRange` when it names no `pageSize`.
pub const PREVIEW_PAGE_ROWS: u64 = 20;
/// Rows a `preview` scene allows when it sets neither `viewRowsRange` nor `viewPageRange`:
/// the first ten.
pub const PREVIEW_DEFAULT_ROWS: u64 = 10;
/// The most rows one preview window may span (a policy allowing more is refused): a preview
/// is a look at the data, not a delivery of it.
pub const PREVIEW_ROWS_MAX: u64 = 10_000;
/// The largest row number a preview window may start at: the most rows a dataset may have
/// (`tessera_core::limits::DATASET_ROWS_MAX`).
pub const ROW_NUMBER_MAX: u64 = tessera_core::limits::DATASET_ROWS_MAX as u64;
/// The most columns a preview window may name.
pub const PREVIEW_COLUMNS_MAX: usize = 64;

/// What a `preview` run may show: the rows `first_row..=last_row` of the dataset (numbered
/// from 1, the header excluded) and, when `columns` is `Some`, only those columns. It is the
/// intersection of the scene's `viewRowsRange` and `viewPageRange` (T/AI 123.12 table A.50,
/// whose shape the standard leaves open: Tessera's is documented on [`UseScene`]); with
/// neither, the first [`PREVIEW_DEFAULT_ROWS`] rows, every column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviewWindow {
    /// First row shown (1-based).
    pub first_row: u64,
    /// Last row shown (inclusive).
    pub last_row: u64,
    /// The columns that may be shown; `None`: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
}

impl PreviewWindow {
    /// The window of a scene's `viewRowsRange` / `viewPageRange`.
    ///
    /// # Errors
    /// `Invalid` naming the field for a shape that is not one of the documented forms, a
    /// range that is empty, starts at 0 or spans more than [`PREVIEW_ROWS_MAX`] rows, a page
    /// size of 0, or two ranges that do not overlap.
    pub fn of(scene: &UseScene) -> Result<Self, PolicyError> {
        let bad = |field: &str, why: &str| {
            PolicyError::Invalid(format!("scene {}: {field} {why}", scene.use_sence))
        };
        fn pair(v: &serde_json::Value) -> Option<(u64, u64)> {
            match v.as_array()?.as_slice() {
                [a, b] => Some((a.as_u64()?, b.as_u64()?)),
                _ => None,
            }
        }
        let mut first = 1u64;
        let mut last = u64::MAX;
        let mut columns = None;
        let mut any = false;
        if let Some(v) = &scene.view_rows_range {
            const FORM: &str =
                "must be {\"rows\": [first, last], \"columns\": [...]} or [first, last]";
            let (rows, cols) = match v {
                serde_json::Value::Array(_) => (
                    Some(pair(v).ok_or_else(|| bad("viewRowsRange", FORM))?),
                    None,
                ),
                serde_json::Value::Object(o) => {
                    if o.keys().any(|k| k != "rows" && k != "columns") {
                        return Err(bad("viewRowsRange", FORM));
                    }
                    // No `rows`: the columns only; the rows come from the pages or the
                    // default.
                    let rows = match o.get("rows") {
                        None => None,
                        Some(r) => Some(pair(r).ok_or_else(|| bad("viewRowsRange", FORM))?),
                    };
                    (rows, o.get("columns"))
                }
                _ => return Err(bad("viewRowsRange", FORM)),
            };
            if let Some((a, b)) = rows {
                if a == 0 || b < a || a > ROW_NUMBER_MAX {
                    return Err(bad(
                        "viewRowsRange",
                        &format!(
                            "rows must be [first, last] with 1 <= first <= last, first at most {ROW_NUMBER_MAX}"
                        ),
                    ));
                }
                (first, last) = (a, b);
                any = true;
            }
            if let Some(c) = cols {
                let names: Vec<String> = c
                    .as_array()
                    .and_then(|a| {
                        a.iter()
                            .map(|n| n.as_str().map(str::to_string))
                            .collect::<Option<Vec<_>>>()
                    })
                    .filter(|n| {
                        !n.is_empty()
                            && n.len() <= PREVIEW_COLUMNS_MAX
                            && n.iter().all(|c| !c.trim().is_empty())
                    })
                    .ok_or_else(|| {
                        bad(
                            "viewRowsRange",
                            &format!("columns must be 1 to {PREVIEW_COLUMNS_MAX} column names"),
                        )
                    })?;
                let mut seen = std::collections::HashSet::new();
                if let Some(dup) = names.iter().find(|n| !seen.insert(n.as_str())) {
                    return Err(bad(
                        "viewRowsRange",
                        &format!("columns names {dup:?} twice"),
                    ));
                }
                columns = Some(names);
            }
        }
        if let Some(v) = &scene.view_page_range {
            const FORM: &str =
                "must be {\"pages\": [first, last], \"pageSize\": n} or [first, last]";
            let (pages, size) = match v {
                serde_json::Value::Array(_) => (pair(v), Some(PREVIEW_PAGE_ROWS)),
                serde_json::Value::Object(o) => {
                    if o.keys().any(|k| k != "pages" && k != "pageSize") {
                        return Err(bad("viewPageRange", FORM));
                    }
                    let size = match o.get("pageSize") {
                        None => Some(PREVIEW_PAGE_ROWS),
                        Some(n) => n.as_u64(),
                    };
                    (o.get("pages").and_then(pair), size)
                }
                _ => return Err(bad("viewPageRange", FORM)),
            };
            let (a, b) = pages.ok_or_else(|| bad("viewPageRange", FORM))?;
            let size = size
                .filter(|n| (1..=PREVIEW_ROWS_MAX).contains(n))
                .ok_or_else(|| {
                    bad(
                        "viewPageRange",
                        &format!("pageSize must be 1 to {PREVIEW_ROWS_MAX}"),
                    )
                })?;
            if a == 0 || b < a {
                return Err(bad(
                    "viewPageRange",
                    "pages must be [first, last] with 1 <= first <= last",
                ));
            }
            let p_first = (a - 1).saturating_mul(size).saturating_add(1);
            if p_first > ROW_NUMBER_MAX {
                return Err(bad(
                    "viewPageRange",
                    &format!("its first page starts past row {ROW_NUMBER_MAX}, beyond any dataset"),
                ));
            }
            let p_last = b.saturating_mul(size);
            any = true;
            first = first.max(p_first);
            last = last.min(p_last);
            if last < first {
                return Err(bad(
                    "viewPageRange",
                    "does not overlap viewRowsRange: no row could be shown",
                ));
            }
        }
        if !any {
            last = PREVIEW_DEFAULT_ROWS;
        }
        if last - first >= PREVIEW_ROWS_MAX {
            return Err(bad(
                "viewRowsRange/viewPageRange",
                &format!(
                    "allow more than {PREVIEW_ROWS_MAX} rows: a preview shows at most that many"
                ),
            ));
        }
        Ok(Self {
            first_row: first,
            last_row: last,
            columns,
        })
    }

    /// Whether a preview of rows `first..=last` and `columns` (empty: the window's columns,
    /// or all) lies inside this window; `Err` says what falls outside.
    pub fn admits(&self, first: u64, last: u64, columns: &[String]) -> Result<(), String> {
        let mut outside = Vec::new();
        if first < self.first_row || last > self.last_row || last < first {
            outside.push(format!(
                "rows {first}-{last} are not inside the allowed rows {}-{}",
                self.first_row, self.last_row
            ));
        }
        if let Some(allowed) = &self.columns {
            let extra: Vec<&str> = columns
                .iter()
                .filter(|c| !allowed.contains(c))
                .map(String::as_str)
                .collect();
            if !extra.is_empty() {
                outside.push(format!(
                    "columns {extra:?} are not among the allowed columns {allowed:?}"
                ));
            }
        }
        if outside.is_empty() {
            Ok(())
        } else {
            Err(outside.join("; "))
        }
    }
}

/// Largest policy document accepted, in bytes.
pub const POLICY_JSON_BYTES_MAX: usize = 64 * 1024;

impl UsagePolicy {
    /// Parses and checks a policy document.
    pub fn from_json(text: &str) -> Result<Self, PolicyError> {
        if text.len() > POLICY_JSON_BYTES_MAX {
            return Err(PolicyError::Invalid(format!(
                "policy is {} bytes, limit {POLICY_JSON_BYTES_MAX}",
                text.len()
            )));
        }
        let p: UsagePolicy =
            serde_json::from_str(text).map_err(|e| PolicyError::Json(e.to_string()))?;
        p.validate()?;
        Ok(p)
    }

    /// Checks dates, scene names and counts.
    pub fn validate(&self) -> Result<(), PolicyError> {
        // Compared as civil times: the order does not depend on the zone.
        let civil = |d: Option<&str>| {
            d.map(|v| parse_millis(v).map_err(|_| PolicyError::BadDate { value: v.into() }))
                .transpose()
        };
        let (start, end) = (
            civil(self.start_date.as_deref())?,
            civil(self.end_date.as_deref())?,
        );
        if let (Some(s), Some(e)) = (start, end)
            && e <= s
        {
            return Err(PolicyError::Invalid(
                "endDate must be after startDate".into(),
            ));
        }
        if self.use_scenes.is_empty() {
            return Err(PolicyError::Invalid("useScenes must not be empty".into()));
        }
        if self.rel_users.is_empty() {
            return Err(PolicyError::Invalid(
                "relUsers must not be empty: nobody could use the licence".into(),
            ));
        }
        if let Some(u) = self.rel_users.iter().find(|u| u.user_id.trim().is_empty()) {
            return Err(PolicyError::Invalid(format!(
                "relUsers has an empty userId (userName {:?})",
                u.user_name
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for s in &self.use_scenes {
            if s.use_sence.trim().is_empty() {
                return Err(PolicyError::Invalid("a scene has an empty useSence".into()));
            }
            if !KNOWN_SCENES.contains(&s.use_sence.as_str()) {
                return Err(PolicyError::Invalid(format!(
                    "unknown scene {:?}: known scenes are {}",
                    s.use_sence,
                    KNOWN_SCENES.join(", ")
                )));
            }
            for (field, v) in [
                ("counts", s.counts),
                ("remainingCounts", s.remaining_counts),
            ] {
                if v.is_some_and(|n| n > COUNTS_MAX) {
                    return Err(PolicyError::Invalid(format!(
                        "scene {}: {field} is above the maximum of {COUNTS_MAX} (omit counts for \
                         no limit)",
                        s.use_sence
                    )));
                }
            }
            for p in &s.protocols.0 {
                let known = match s.use_sence.as_str() {
                    "psi" => p.parse::<tessera_core::PsiProtocol>().is_ok(),
                    // PSI with payload runs on rr22 only.
                    "psi_payload" => p == tessera_core::PsiProtocol::Rr22.as_str(),
                    "mpc" => MPC_PROTOCOLS.contains(&p.as_str()),
                    _ => false,
                };
                if !known {
                    return Err(PolicyError::Invalid(format!(
                        "scene {}: unknown protocol {p:?} (the psi scene knows {}; the \
                         psi_payload scene rr22; the mpc scene knows {})",
                        s.use_sence,
                        tessera_core::PsiProtocol::ALL
                            .iter()
                            .map(|p| p.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        MPC_PROTOCOLS.join(", ")
                    )));
                }
            }
            if !matches!(s.use_sence.as_str(), "mpc" | "tee")
                && (s.min_group_size.is_some() || s.aggregates_only)
            {
                return Err(PolicyError::Invalid(format!(
                    "scene {}: minGroupSize and aggregatesOnly control the outputs of the mpc \
                     and tee scenes only; move them to one of those",
                    s.use_sence
                )));
            }
            if s.model_to == Some(tessera_core::ModelRecipient::Shared)
                && (s.aggregates_only || s.min_group_size.is_some_and(|k| k > 1))
            {
                return Err(PolicyError::Invalid(format!(
                    "scene {}: a model kept shared (modelTo \"shared\") is used only by scoring \
                     jobs, whose scores are row-level outputs, which aggregatesOnly and a \
                     minGroupSize above 1 refuse: drop them or give the model to a party",
                    s.use_sence
                )));
            }
            if s.use_sence != "mpc" && s.model_to.is_some() {
                return Err(PolicyError::Invalid(format!(
                    "scene {}: modelTo names who receives a model the mpc scene trains; move \
                     it there",
                    s.use_sence
                )));
            }
            if s.min_group_size
                .is_some_and(|k| k == 0 || k > MIN_GROUP_SIZE_MAX)
            {
                return Err(PolicyError::Invalid(format!(
                    "scene {}: minGroupSize must be 1 to {MIN_GROUP_SIZE_MAX}",
                    s.use_sence
                )));
            }
            if !matches!(s.use_sence.as_str(), "psi_payload" | "tee")
                && (!s.payload_columns.is_empty() || !s.joins.0.is_empty())
            {
                return Err(PolicyError::Invalid(format!(
                    "scene {}: payloadColumns and joins bound the joins of the psi_payload and \
                     tee scenes only; move them to one of those",
                    s.use_sence
                )));
            }
            if s.payload_columns.len() > PAYLOAD_COLUMNS_MAX {
                return Err(PolicyError::Invalid(format!(
                    "scene {}: payloadColumns names more than {PAYLOAD_COLUMNS_MAX} columns",
                    s.use_sence
                )));
            }
            let mut named = std::collections::HashSet::new();
            for c in &s.payload_columns {
                if c.trim().is_empty() || c.trim() != c {
                    return Err(PolicyError::Invalid(format!(
                        "scene {}: payloadColumns has an empty name or one with surrounding \
                         spaces ({c:?})",
                        s.use_sence
                    )));
                }
                if !named.insert(c) {
                    return Err(PolicyError::Invalid(format!(
                        "scene {}: payloadColumns names {c:?} twice",
                        s.use_sence
                    )));
                }
            }
            let mut shapes = std::collections::HashSet::new();
            for j in &s.joins.0 {
                if !shapes.insert(j.as_str()) {
                    return Err(PolicyError::Invalid(format!(
                        "scene {}: joins names {j:?} twice",
                        s.use_sence
                    )));
                }
                if j.parse::<tessera_core::JoinKind>().is_err() {
                    return Err(PolicyError::Invalid(format!(
                        "scene {}: unknown join {j:?} (joins are {})",
                        s.use_sence,
                        tessera_core::JoinKind::ALL
                            .iter()
                            .map(|k| k.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
            if !s.payload_columns.is_empty()
                && !s.joins.0.is_empty()
                && s.joins.0.iter().all(|j| j == "difference")
            {
                return Err(PolicyError::Invalid(format!(
                    "scene {}: payloadColumns can never be delivered when joins allows only \
                     difference (which keeps the rows the provider does not have)",
                    s.use_sence
                )));
            }
            if s.use_sence == "preview" {
                PreviewWindow::of(s)?;
            } else if s.view_rows_range.is_some() || s.view_page_range.is_some() {
                return Err(PolicyError::Invalid(format!(
                    "scene {}: viewRowsRange and viewPageRange bound the preview scene only (a {} run would ignore them); move them to a preview scene",
                    s.use_sence, s.use_sence
                )));
            }
            if s.counts == Some(0) {
                return Err(PolicyError::Invalid(format!(
                    "scene {}: counts 0 would never admit a run (omit counts for no limit)",
                    s.use_sence
                )));
            }
            if s.remaining_counts.is_some() && s.counts.is_none() {
                return Err(PolicyError::Invalid(format!(
                    "scene {}: remainingCounts needs counts",
                    s.use_sence
                )));
            }
            if !seen.insert(s.use_sence.as_str()) {
                return Err(PolicyError::Invalid(format!(
                    "scene {} appears twice",
                    s.use_sence
                )));
            }
            if let (Some(c), Some(r)) = (s.counts, s.remaining_counts)
                && r > c
            {
                return Err(PolicyError::Invalid(format!(
                    "scene {}: remainingCounts {r} exceeds counts {c}",
                    s.use_sence
                )));
            }
        }
        if self.rel_users.iter().any(|u| u.is_group > 1) {
            return Err(PolicyError::Invalid("isGroup must be 0 or 1".into()));
        }
        Ok(())
    }

    /// The validity window as UTC instants (ms since epoch): `startDate` and `endDate` carry
    /// no offset (T/AI 123.12 table A.48), so they are read as civil times of the operator's
    /// `zone` (see `tessera_core::civil`).
    pub fn window_ms(&self, zone: &Zone) -> Result<(Option<i64>, Option<i64>), PolicyError> {
        let read = |d: Option<&str>| {
            d.map(|v| {
                zone.parse_instant(v)
                    .map_err(|_| PolicyError::BadDate { value: v.into() })
            })
            .transpose()
        };
        Ok((
            read(self.start_date.as_deref())?,
            read(self.end_date.as_deref())?,
        ))
    }

    /// Refuses a policy that could never admit a job from `now_ms` on: its validity window
    /// (read in `zone`) is already over. Called when a licence is created; [`Self::validate`]
    /// has already refused the time-independent cases (unknown scene, `counts: 0`, empty
    /// `relUsers`, `remainingCounts` without `counts`).
    pub fn check_can_admit(&self, now_ms: i64, zone: &Zone) -> Result<(), PolicyError> {
        let (_, end) = self.window_ms(zone)?;
        if let Some(end) = end
            && end <= now_ms
        {
            return Err(PolicyError::Invalid(format!(
                "the validity window is already over (endDate {} in {zone})",
                self.end_date.as_deref().unwrap_or_default()
            )));
        }
        Ok(())
    }

    /// The scene named `scene`, if the policy has it.
    pub fn scene(&self, scene: &str) -> Option<&UseScene> {
        self.use_scenes.iter().find(|s| s.use_sence == scene)
    }
}

/// The constraint a check is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Constraint {
    /// `relUsers`.
    User,
    /// `useScenes[].useSence`.
    Scene,
    /// `startDate` / `endDate`.
    Window,
    /// `counts` / `remainingCounts`.
    Count,
    /// `useScenes[].protocols` (Tessera's extension).
    Protocol,
    /// `useScenes[].viewRowsRange` / `viewPageRange` (the `preview` scene).
    Preview,
    /// `useScenes[].aggregatesOnly` (the `mpc` scene).
    Output,
    /// `useScenes[].payloadColumns` / `joins` (the `psi_payload` and `tee` scenes).
    Payload,
}

/// One constraint's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// Which constraint.
    pub constraint: Constraint,
    /// Whether it passed.
    pub ok: bool,
    /// Human-readable explanation.
    pub reason: String,
}

/// The evaluator's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// Every check, passed or not.
    pub checks: Vec<Check>,
}

impl Verdict {
    /// Whether every check passed.
    pub fn allowed(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
    /// The reasons of the failed checks.
    pub fn refusals(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.reason.clone())
            .collect()
    }
}

/// What is being asked for.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The submitting user.
    pub user: &'a str,
    /// Groups the user belongs to.
    pub groups: &'a [String],
    /// Scene requested.
    pub scene: &'a str,
    /// The engine protocol the run would use (`None`: the scene's engine has no choice).
    pub protocol: Option<&'a str>,
    /// Time of the request, ms since epoch (UTC).
    pub now_ms: i64,
    /// The operator's calendar zone, in which `startDate` / `endDate` are read.
    pub zone: &'a Zone,
    /// For a `preview` run: the rows (`first`, `last`, 1-based inclusive; `None`: the whole
    /// allowed window) and columns (empty: those allowed) asked for.
    pub preview: Option<PreviewAsk<'a>>,
    /// For an `mpc` run: whether its query opens row-level values (not only aggregates).
    pub mpc_row_level: Option<bool>,
    /// For a join (a PSI with payload): its shape and the provider's columns it delivers.
    pub join: Option<(tessera_core::JoinKind, &'a [String])>,
}

/// The part of the data a `preview` run asks to see.
#[derive(Debug, Clone, Copy)]
pub struct PreviewAsk<'a> {
    /// Rows asked for (1-based, inclusive); `None`: the allowed window.
    pub rows: Option<(u64, u64)>,
    /// Columns asked for; empty: those the window allows (all if it names none).
    pub columns: &'a [String],
}

/// Evaluates a request against a policy; `remaining` is the scene's current remaining count
/// as held by the store (`None` for unlimited).
pub fn evaluate(policy: &UsagePolicy, req: &Request<'_>, remaining: Option<u64>) -> Verdict {
    let mut checks = Vec::with_capacity(4);
    let user_ok = policy.rel_users.iter().any(|u| {
        if u.is_group == 1 {
            req.groups.contains(&u.user_id)
        } else {
            u.user_id == req.user
        }
    });
    checks.push(Check {
        constraint: Constraint::User,
        ok: user_ok,
        reason: if user_ok {
            format!("user {} is allowed", req.user)
        } else {
            format!(
                "user {} is not in relUsers of policy {}",
                req.user, policy.policy_name
            )
        },
    });
    let scene = policy.scene(req.scene);
    checks.push(Check {
        constraint: Constraint::Scene,
        ok: scene.is_some(),
        reason: match scene {
            Some(_) => format!("scene {} is allowed", req.scene),
            None => format!("scene {} is not in useScenes", req.scene),
        },
    });
    let (window_ok, window_reason) = match policy.window_ms(req.zone) {
        Err(e) => (false, format!("validity window unreadable: {e}")),
        Ok((Some(s), _)) if req.now_ms < s => (
            false,
            format!(
                "licence not yet valid: starts {}",
                policy.start_date.as_deref().unwrap_or_default()
            ),
        ),
        Ok((_, Some(e))) if req.now_ms >= e => (
            false,
            format!(
                "licence expired: ended {}",
                policy.end_date.as_deref().unwrap_or_default()
            ),
        ),
        Ok(_) => (true, "inside the validity window".to_string()),
    };
    checks.push(Check {
        constraint: Constraint::Window,
        ok: window_ok,
        reason: window_reason,
    });
    if let (Some(s), Some(p)) = (scene, req.protocol) {
        let ok = s.protocols.allows(p);
        checks.push(Check {
            constraint: Constraint::Protocol,
            ok,
            reason: if ok {
                format!("protocol {p} is allowed")
            } else {
                format!(
                    "protocol {p} is not allowed for scene {} (allowed: {})",
                    req.scene,
                    s.protocols.0.join(", ")
                )
            },
        });
    }
    if let (Some(s), Some(row_level)) = (scene, req.mpc_row_level) {
        let ok = !(row_level && s.aggregates_only);
        checks.push(Check {
            constraint: Constraint::Output,
            ok,
            reason: if ok {
                "the outputs are allowed".to_string()
            } else {
                format!(
                    "scene {} allows only aggregates (aggregatesOnly); this query opens \
                     row-level values",
                    req.scene
                )
            },
        });
    }
    if let (Some(s), Some((kind, columns))) = (scene, req.join) {
        let (ok, reason) = match s.admits_join(kind, columns) {
            Ok(()) if columns.is_empty() => (true, format!("a {kind} join is allowed")),
            Ok(()) => (
                true,
                format!("a {kind} join delivering {} is allowed", columns.join(", ")),
            ),
            Err(why) => (false, why),
        };
        checks.push(Check {
            constraint: Constraint::Payload,
            ok,
            reason,
        });
    }
    if let (Some(s), Some(ask)) = (scene, req.preview) {
        let (ok, reason) = match PreviewWindow::of(s) {
            Err(e) => (false, format!("preview window unreadable: {e}")),
            Ok(w) => {
                let (first, last) = ask.rows.unwrap_or((w.first_row, w.last_row));
                match w.admits(first, last, ask.columns) {
                    Ok(()) => (true, format!("rows {first}-{last} may be previewed")),
                    Err(why) => (false, format!("preview outside the policy: {why}")),
                }
            }
        };
        checks.push(Check {
            constraint: Constraint::Preview,
            ok,
            reason,
        });
    }
    if scene.is_some() {
        let (ok, reason) = match remaining {
            None => (true, "no run limit".to_string()),
            Some(0) => (
                false,
                format!("quota exhausted: no runs left for scene {}", req.scene),
            ),
            Some(n) => (true, format!("{n} runs left")),
        };
        checks.push(Check {
            constraint: Constraint::Count,
            ok,
            reason,
        });
    }
    Verdict { checks }
}

/// Checks a worker's attributes against a scene's environment lists; `Err` lists every misfit.
pub fn worker_fits(scene: &UseScene, w: &WorkerAttributes) -> Result<(), Vec<String>> {
    let mut misfits = Vec::new();
    if !scene.visit_area.allows(&w.region) {
        misfits.push(format!(
            "region {} not in visitArea {:?}",
            w.region, scene.visit_area.0
        ));
    }
    if !scene.cp_center.allows(&w.compute_centre) {
        misfits.push(format!(
            "compute centre {} not in cpCenter {:?}",
            w.compute_centre, scene.cp_center.0
        ));
    }
    if !scene.env_hard.allows_hardware(&w.hardware) {
        misfits.push(format!(
            "hardware {} not in envHard {:?}",
            w.hardware, scene.env_hard.0
        ));
    }
    if !scene.ai_frame.allows_any(&w.ai_frameworks) {
        misfits.push(format!(
            "AI frameworks {:?} not in aiFrame {:?}",
            w.ai_frameworks, scene.ai_frame.0
        ));
    }
    if !scene.env_soft.allows(&w.software_env) {
        misfits.push(format!(
            "software environment {} not in envSoft {:?}",
            w.software_env, scene.env_soft.0
        ));
    }
    if misfits.is_empty() {
        Ok(())
    } else {
        Err(misfits)
    }
}

#[cfg(test)]
mod tests;
