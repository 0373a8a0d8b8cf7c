//! The single table from domain errors to API codes. Every failure the API returns passes
//! through [`ApiCode`]: its gRPC status code here, and its T/AI 123.12 envelope
//! (`{status, code, errorMsg, data}`, appendix A: `status` the HTTP status, `code` "a
//! specific error type") for the REST facade, which maps from the same set.

use tessera_accounting::LedgerError;
use tessera_accounting::settle::SettleError;
use tessera_scheduler::{Refusal, RuleRefusal, SchedulerError, StoreError};
use tonic::Status;

/// The closed set of API error codes: one per thing a caller can act on differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiCode {
    /// The request is malformed (a field missing, too long, out of range, an unknown enum
    /// value).
    InvalidArgument,
    /// A named record does not exist.
    NotFound,
    /// A record with this id exists already.
    AlreadyExists,
    /// The same idempotency key arrived with different fields.
    ExistsWithDifferentFields,
    /// No valid token came with the call (missing, malformed, unknown, expired, revoked, or
    /// its user disabled).
    Unauthenticated,
    /// The caller may not do this (e.g. cancel another user's job, use another party's
    /// dataset).
    PermissionDenied,
    /// The licence's usage policy does not allow it (user, scene, validity window).
    PolicyDenied,
    /// The licence has no runs left for the scene.
    QuotaExhausted,
    /// The buyer's funds do not cover the amount.
    InsufficientFunds,
    /// The buyer's account is frozen (operations manual §3.6.5).
    AccountFrozen,
    /// The licence is sold by the month and no paid term covers now (manual §1.4.5).
    NoPaidTerm,
    /// No live worker can run it now.
    NoWorker,
    /// Another business rule refused it; nothing was written.
    Refused,
    /// The request is larger than the API takes (a REST body over its limit).
    TooLarge,
    /// The REST route exists but not with this HTTP method (the `Allow` header lists those it
    /// takes).
    MethodNotAllowed,
    /// The operator could not make the change durable just now (nothing of it was written);
    /// trying again is safe.
    Unavailable,
    /// Something failed on our side.
    Internal,
}

impl ApiCode {
    /// Every code, in table order.
    pub const ALL: &'static [ApiCode] = &[
        ApiCode::InvalidArgument,
        ApiCode::NotFound,
        ApiCode::AlreadyExists,
        ApiCode::ExistsWithDifferentFields,
        ApiCode::Unauthenticated,
        ApiCode::PermissionDenied,
        ApiCode::PolicyDenied,
        ApiCode::QuotaExhausted,
        ApiCode::InsufficientFunds,
        ApiCode::AccountFrozen,
        ApiCode::NoPaidTerm,
        ApiCode::NoWorker,
        ApiCode::Refused,
        ApiCode::TooLarge,
        ApiCode::MethodNotAllowed,
        ApiCode::Unavailable,
        ApiCode::Internal,
    ];

    /// The table: gRPC status code, HTTP status and envelope `code` of each API code.
    fn row(self) -> (tonic::Code, u16, &'static str) {
        use tonic::Code as G;
        match self {
            ApiCode::InvalidArgument => (G::InvalidArgument, 400, "INVALID_ARGUMENT"),
            ApiCode::NotFound => (G::NotFound, 404, "NOT_FOUND"),
            ApiCode::AlreadyExists => (G::AlreadyExists, 409, "ALREADY_EXISTS"),
            ApiCode::ExistsWithDifferentFields => {
                (G::FailedPrecondition, 409, "EXISTS_WITH_DIFFERENT_FIELDS")
            }
            ApiCode::Unauthenticated => (G::Unauthenticated, 401, "UNAUTHENTICATED"),
            ApiCode::PermissionDenied => (G::PermissionDenied, 403, "PERMISSION_DENIED"),
            ApiCode::PolicyDenied => (G::PermissionDenied, 403, "POLICY_DENIED"),
            ApiCode::QuotaExhausted => (G::ResourceExhausted, 429, "QUOTA_EXHAUSTED"),
            ApiCode::InsufficientFunds => (G::FailedPrecondition, 402, "INSUFFICIENT_FUNDS"),
            ApiCode::AccountFrozen => (G::FailedPrecondition, 403, "ACCOUNT_FROZEN"),
            ApiCode::NoPaidTerm => (G::FailedPrecondition, 402, "NO_PAID_TERM"),
            ApiCode::NoWorker => (G::Unavailable, 503, "NO_WORKER"),
            ApiCode::Refused => (G::FailedPrecondition, 409, "REFUSED"),
            ApiCode::TooLarge => (G::ResourceExhausted, 413, "PAYLOAD_TOO_LARGE"),
            ApiCode::MethodNotAllowed => (G::Unimplemented, 405, "METHOD_NOT_ALLOWED"),
            ApiCode::Unavailable => (G::Unavailable, 503, "UNAVAILABLE"),
            ApiCode::Internal => (G::Internal, 500, "INTERNAL"),
        }
    }

    /// The gRPC status code.
    pub fn grpc(self) -> tonic::Code {
        self.row().0
    }

    /// The HTTP status of the T/AI 123.12 envelope (`status`).
    pub fn http_status(self) -> u16 {
        self.row().1
    }

    /// The error type of the T/AI 123.12 envelope (`code`).
    pub fn envelope_code(self) -> &'static str {
        self.row().2
    }

    /// A gRPC status of this code with `message`, carrying the envelope code in the
    /// [`API_CODE_METADATA`] metadata so that the REST facade answers with exactly this row
    /// (several codes share a gRPC code).
    pub fn status(self, message: impl Into<String>) -> Status {
        let mut s = Status::new(self.grpc(), message.into());
        s.metadata_mut().insert(
            API_CODE_METADATA,
            tonic::metadata::MetadataValue::from_static(self.envelope_code()),
        );
        s
    }

    /// The code of a status: the one it carries (see [`ApiCode::status`]), else the first
    /// row with its gRPC code, else [`ApiCode::Internal`].
    pub fn of_status(s: &Status) -> ApiCode {
        let carried = s
            .metadata()
            .get(API_CODE_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(|name| ApiCode::ALL.iter().find(|c| c.envelope_code() == name));
        if let Some(c) = carried {
            return *c;
        }
        ApiCode::ALL
            .iter()
            .copied()
            .find(|c| c.grpc() == s.code())
            .unwrap_or(ApiCode::Internal)
    }
}

/// The metadata key of a status's envelope code (`ApiCode::status`).
pub const API_CODE_METADATA: &str = "x-tessera-code";

/// The code of a store error, by variant.
pub fn store_code(e: &StoreError) -> ApiCode {
    match e {
        StoreError::NotFound { .. } => ApiCode::NotFound,
        StoreError::Conflict { .. } => ApiCode::AlreadyExists,
        StoreError::IdempotencyMismatch { .. } => ApiCode::ExistsWithDifferentFields,
        StoreError::Ledger(l) => ledger_code(l),
        StoreError::Refused(r) => rule_code(r),
        StoreError::Invalid { .. } => ApiCode::InvalidArgument,
        // A bill rule (identities, a bad period) or a month still open for late charges.
        StoreError::Bill(_) | StoreError::PeriodOpen { .. } | StoreError::Delivered { .. } => {
            ApiCode::Refused
        }
        StoreError::NotCommitted { .. } => ApiCode::Unavailable,
        StoreError::Db(_)
        | StoreError::Io(_)
        | StoreError::Migrate(_)
        | StoreError::Corrupt(_)
        | StoreError::ReadOnly { .. }
        | StoreError::Time(_) => ApiCode::Internal,
    }
}

/// The code of a ledger error.
fn ledger_code(e: &LedgerError) -> ApiCode {
    match e {
        LedgerError::InsufficientFunds { .. } => ApiCode::InsufficientFunds,
        LedgerError::NonPositiveAmount(_)
        | LedgerError::AmountAboveMaximum { .. }
        | LedgerError::BalanceAboveMaximum { .. }
        | LedgerError::SameAccount(_)
        | LedgerError::UnknownAccount(_) => ApiCode::InvalidArgument,
        LedgerError::HoldAlreadyResolved { .. } | LedgerError::PostExceedsHold { .. } => {
            ApiCode::Refused
        }
        LedgerError::Overflow | LedgerError::AccountTotalAboveMaximum { .. } => ApiCode::Refused,
    }
}

/// The code of a business rule's refusal outside admission (licence terms).
fn rule_code(r: &RuleRefusal) -> ApiCode {
    match r {
        RuleRefusal::Funds(SettleError::InsufficientFunds { .. }) => ApiCode::InsufficientFunds,
        RuleRefusal::AccountFrozen { .. } => ApiCode::AccountFrozen,
        RuleRefusal::NotLicensee { .. } => ApiCode::PermissionDenied,
        RuleRefusal::Funds(_)
        | RuleRefusal::Limit(_)
        | RuleRefusal::Subscription(_)
        | RuleRefusal::NotMonthly(_)
        | RuleRefusal::SubscriptionClosed(_) => ApiCode::Refused,
    }
}

/// The code of an admission refusal.
pub fn refusal_code(r: &Refusal) -> ApiCode {
    match r {
        Refusal::DatasetNotFound { .. }
        | Refusal::LicensedDatasetNotFound { .. }
        | Refusal::LicenceNotFound { .. } => ApiCode::NotFound,
        Refusal::DatasetNotOwned { .. } => ApiCode::PermissionDenied,
        Refusal::PolicyDenied { .. } => ApiCode::PolicyDenied,
        Refusal::QuotaExhausted { .. } => ApiCode::QuotaExhausted,
        Refusal::InsufficientFunds { .. } => ApiCode::InsufficientFunds,
        Refusal::AccountFrozen { .. } => ApiCode::AccountFrozen,
        Refusal::NoPaidTerm { .. } => ApiCode::NoPaidTerm,
        Refusal::Unpriced { .. } | Refusal::ModelUnusable { .. } => ApiCode::InvalidArgument,
        Refusal::NoWorker { .. } => ApiCode::NoWorker,
        Refusal::Withdrawn { .. } => ApiCode::PolicyDenied,
        Refusal::OutputTaken { .. } => ApiCode::AlreadyExists,
    }
}

impl From<&SchedulerError> for ApiCode {
    fn from(e: &SchedulerError) -> Self {
        match e {
            SchedulerError::Invalid(_) => ApiCode::InvalidArgument,
            SchedulerError::NotFound(_) => ApiCode::NotFound,
            SchedulerError::Forbidden(_) => ApiCode::PermissionDenied,
            SchedulerError::InUse(_) => ApiCode::AlreadyExists,
            SchedulerError::Store(s) => store_code(s),
            SchedulerError::Encode { .. }
            | SchedulerError::Ticket(_)
            | SchedulerError::Interrupted(_) => ApiCode::Internal,
            SchedulerError::Busy(_) => ApiCode::Unavailable,
        }
    }
}

/// Maps a domain error to a status, logging internal failures here where they are handled.
pub fn status(e: &SchedulerError) -> Status {
    let code = ApiCode::from(e);
    if code == ApiCode::Internal {
        tracing::error!(error = %e, "internal error");
    }
    code.status(e.to_string())
}

/// An `INVALID_ARGUMENT` status for a request that cannot be parsed.
pub(crate) fn invalid(msg: impl std::fmt::Display) -> Status {
    ApiCode::InvalidArgument.status(msg.to_string())
}

/// An `INTERNAL` status, logged.
pub(crate) fn internal(msg: impl std::fmt::Display) -> Status {
    tracing::error!(error = %msg, "internal error");
    ApiCode::Internal.status(msg.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_carries_its_exact_code() {
        for &c in ApiCode::ALL {
            assert_eq!(ApiCode::of_status(&c.status("m")), c);
        }
        let bare = Status::new(tonic::Code::PermissionDenied, "m");
        assert_eq!(ApiCode::of_status(&bare), ApiCode::PermissionDenied);
        let odd = Status::new(tonic::Code::DataLoss, "m");
        assert_eq!(ApiCode::of_status(&odd), ApiCode::Internal);
    }

    #[test]
    fn every_code_has_its_own_envelope_code() {
        let mut seen = std::collections::HashSet::new();
        for c in ApiCode::ALL {
            assert!(seen.insert(c.envelope_code()), "{c:?}");
        }
    }

    #[test]
    fn money_refusals_are_told_apart() {
        let funds = Refusal::InsufficientFunds {
            needed_micros: 10,
            available_micros: 1,
            funds: vec![("customer:u:cash".into(), 1)],
        };
        let frozen = Refusal::AccountFrozen {
            reason: "manual freeze".into(),
        };
        let quota = Refusal::QuotaExhausted {
            scene: "psi".into(),
        };
        let codes = [
            refusal_code(&funds),
            refusal_code(&frozen),
            refusal_code(&quota),
        ];
        assert_eq!(
            codes,
            [
                ApiCode::InsufficientFunds,
                ApiCode::AccountFrozen,
                ApiCode::QuotaExhausted
            ]
        );
        assert_eq!(
            funds.to_string(),
            "insufficient funds: 1 micros available (customer:u:cash 1) is below the estimated \
             maximum cost of 10 micros"
        );
        assert_eq!(
            quota.to_string(),
            "quota exhausted: no runs left for scene psi"
        );
    }

    #[test]
    fn store_errors_map_by_variant() {
        let nf = StoreError::NotFound {
            kind: "job",
            id: "j".into(),
        };
        let dup = StoreError::IdempotencyMismatch {
            kind: "transfer",
            id: "t".into(),
        };
        assert_eq!(store_code(&nf), ApiCode::NotFound);
        assert_eq!(store_code(&dup), ApiCode::ExistsWithDifferentFields);
        assert_eq!(
            ApiCode::from(&SchedulerError::Invalid("x".into())).grpc(),
            tonic::Code::InvalidArgument
        );
    }
}
