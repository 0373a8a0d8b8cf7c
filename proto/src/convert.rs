//! Wire enums ↔ domain enums. A domain value always has a wire value (`From`); a wire value
//! turns into a domain value once, at the boundary (`TryFrom`), and the unspecified zero or
//! a number this build does not know is an [`EnumError`], never a default.

use tessera_core::{
    EmptyKeys, JobState, JoinKind, KeyCase, MpcTriples, PsiMode, PsiProtocol, TaskRole, UnicodeForm,
};

use crate::v1 as pb;

/// A wire enum value that names no domain value: unset (zero) or unknown to this build.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} is unspecified or unknown (value {value}); expected one of: {expected}")]
pub struct EnumError {
    /// The field, e.g. `mode`.
    pub field: &'static str,
    /// The number received.
    pub value: i32,
    /// The accepted names.
    pub expected: &'static str,
}

/// Pairs a domain enum with its wire enum, variant by variant.
macro_rules! pair {
    ($domain:ident, $wire:ident, $field:literal, $expected:literal { $($d:ident <=> $w:ident),+ $(,)? }) => {
        impl From<$domain> for pb::$wire {
            fn from(v: $domain) -> Self {
                match v {
                    $($domain::$d => pb::$wire::$w),+
                }
            }
        }

        impl TryFrom<pb::$wire> for $domain {
            type Error = EnumError;

            fn try_from(v: pb::$wire) -> Result<Self, EnumError> {
                match v {
                    $(pb::$wire::$w => Ok($domain::$d),)+
                    #[allow(unreachable_patterns)]
                    _ => Err(EnumError { field: $field, value: v as i32, expected: $expected }),
                }
            }
        }

        impl WireEnum for $domain {
            const FIELD: &'static str = $field;
            const EXPECTED: &'static str = $expected;

            fn from_wire(v: i32) -> Result<Self, EnumError> {
                let unknown = EnumError { field: $field, value: v, expected: $expected };
                let w = pb::$wire::try_from(v).map_err(|_| unknown.clone())?;
                $domain::try_from(w)
            }
        }
    };
}

/// A domain enum with a wire twin, decodable from the `i32` prost stores.
pub trait WireEnum: Sized {
    /// The field name used in errors.
    const FIELD: &'static str;
    /// The accepted names, for errors.
    const EXPECTED: &'static str;
    /// Decodes a wire number.
    ///
    /// # Errors
    /// [`EnumError`] for zero (unspecified) or a number this build does not know.
    fn from_wire(v: i32) -> Result<Self, EnumError>;
}

/// Decodes the `i32` of an enum field into its domain type, e.g.
/// `decode::<PsiMode>(req.mode)`.
///
/// # Errors
/// [`EnumError`] for zero (unspecified) or an unknown number.
pub fn decode<T: WireEnum>(v: i32) -> Result<T, EnumError> {
    T::from_wire(v)
}

pair!(JobState, JobState, "state", "admitted, running, succeeded, failed, refused, cancelled" {
    Admitted <=> Admitted,
    Running <=> Running,
    Succeeded <=> Succeeded,
    Failed <=> Failed,
    Refused <=> Refused,
    Cancelled <=> Cancelled,
});

pair!(PsiMode, PsiMode, "mode", "intersection, size, both" {
    Intersection <=> Intersection,
    Size <=> Size,
    Both <=> Both,
});

pair!(PsiProtocol, PsiProtocol, "protocol", "rr22, ecdh, ecdh-oprf" {
    Rr22 <=> Rr22,
    Ecdh <=> Ecdh,
    EcdhOprf <=> EcdhOprf,
});

pair!(MpcTriples, MpcTriples, "mpc_triples", "ot, dealer" {
    Ot <=> Ot,
    Dealer <=> Dealer,
});

pair!(JoinKind, JoinKind, "join", "inner, left, difference" {
    Inner <=> Inner,
    Left <=> Left,
    Difference <=> Difference,
});

pair!(KeyCase, KeyCase, "key_case", "preserve, lower, upper, fold" {
    Preserve <=> Preserve,
    Lower <=> Lower,
    Upper <=> Upper,
    Fold <=> Fold,
});

pair!(UnicodeForm, UnicodeForm, "unicode_form", "none, nfc, nfkc" {
    None <=> None,
    Nfc <=> Nfc,
    Nfkc <=> Nfkc,
});

pair!(EmptyKeys, EmptyKeys, "empty_keys", "skip, fail" {
    Skip <=> Skip,
    Fail <=> Fail,
});

pair!(TaskRole, TaskRole, "role", "sender, receiver" {
    Sender <=> Sender,
    Receiver <=> Receiver,
});

impl pb::Job {
    /// The state's text form (`admitted`, ..., `cancelled`), or `unspecified`.
    pub fn state_text(&self) -> &'static str {
        decode::<JobState>(self.state).map_or("unspecified", JobState::as_str)
    }

    /// The mode's text form (`intersection`, `size`), or `unspecified`.
    pub fn mode_text(&self) -> &'static str {
        decode::<PsiMode>(self.mode).map_or("unspecified", PsiMode::as_str)
    }

    /// The protocol's text form (`rr22`, `ecdh`), or `unspecified`.
    pub fn protocol_text(&self) -> &'static str {
        decode::<PsiProtocol>(self.protocol).map_or("unspecified", PsiProtocol::as_str)
    }

    /// Whether the job can no longer change (an unreadable state counts as final).
    pub fn is_terminal(&self) -> bool {
        decode::<JobState>(self.state).map_or(true, JobState::is_terminal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_domain_value_round_trips_and_zero_is_refused() {
        for s in JobState::ALL {
            assert_eq!(decode::<JobState>(pb::JobState::from(*s) as i32), Ok(*s));
        }
        for m in PsiMode::ALL {
            assert_eq!(decode::<PsiMode>(pb::PsiMode::from(*m) as i32), Ok(*m));
        }
        for c in KeyCase::ALL {
            assert_eq!(decode::<KeyCase>(pb::KeyCase::from(*c) as i32), Ok(*c));
        }
        for f in UnicodeForm::ALL {
            assert_eq!(
                decode::<UnicodeForm>(pb::UnicodeForm::from(*f) as i32),
                Ok(*f)
            );
        }
        for e in EmptyKeys::ALL {
            assert_eq!(decode::<EmptyKeys>(pb::EmptyKeys::from(*e) as i32), Ok(*e));
        }
        for t in MpcTriples::ALL {
            assert_eq!(
                decode::<MpcTriples>(pb::MpcTriples::from(*t) as i32),
                Ok(*t)
            );
        }
        assert!(decode::<MpcTriples>(0).is_err());
        assert!(decode::<UnicodeForm>(0).is_err());
        assert!(decode::<EmptyKeys>(0).is_err());
        assert!(decode::<PsiMode>(0).is_err());
        assert!(decode::<JobState>(99).is_err());
        assert_eq!(
            decode::<KeyCase>(0).map_err(|e| e.to_string()),
            Err("key_case is unspecified or unknown (value 0); expected one of: preserve, lower, upper, fold".into())
        );
    }
}
