//! The JSON form of the wire enums, for the REST facade: a value travels as its proto name
//! (`"JOB_STATE_SUCCEEDED"`, as the proto3 JSON mapping writes it). On input the name without
//! its enum prefix is accepted too, in any case and with `-` for `_` (`"succeeded"`,
//! `"intersection"`, `"ecdh-oprf"`), like the CLI's. An unknown name is an error naming the
//! accepted ones; a number is refused.

macro_rules! enum_json {
    ($module:ident, $enum:ident, $names:ident, $prefix:literal, $example:literal, [$($name:ident),+ $(,)?]) => {
        #[doc = concat!("The names of `", stringify!($enum), "` values, for the OpenAPI document (an `enum` of strings).")]
        #[allow(non_camel_case_types, missing_docs, dead_code)]
        #[derive(Debug, Clone, Copy, utoipa::ToSchema)]
        pub enum $names {
            $($name,)+
        }

        impl $names {
            /// Every name, in order.
            pub const ALL: &'static [&'static str] = &[$(stringify!($name),)+];
        }

        #[doc = concat!("`", stringify!($enum), "` values by name.")]
        pub mod $module {
            use serde::{Deserialize, Deserializer, Serializer};

            use crate::v1::$enum as E;

            /// A value, for the OpenAPI document.
            pub const EXAMPLE: &str = $example;

            /// The name of the zero value (what a missing field means).
            pub const DEFAULT: &str = concat!($prefix, "UNSPECIFIED");

            /// Writes the value's proto name (an unknown number as the number).
            ///
            /// Errors: only the serializer's.
            pub fn serialize<S: Serializer>(value: &i32, s: S) -> Result<S::Ok, S::Error> {
                match E::try_from(*value) {
                    Ok(e) => s.serialize_str(e.as_str_name()),
                    Err(_) => s.serialize_i32(*value),
                }
            }

            /// Reads a proto name, or the name without its prefix in any case.
            ///
            /// Errors: not a string, or not a name of the enum.
            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
                let text = String::deserialize(d)?;
                // `ecdh-oprf` (the CLI's form) is `ECDH_OPRF`.
                let upper = text.trim().to_ascii_uppercase().replace('-', "_");
                let full = if upper.starts_with($prefix) {
                    upper
                } else {
                    format!("{}{upper}", $prefix)
                };
                E::from_str_name(&full).map(|e| e as i32).ok_or_else(|| {
                    let names: Vec<&str> = (1..64)
                        .filter_map(|n| E::try_from(n).ok())
                        .map(|e| e.as_str_name())
                        .collect();
                    serde::de::Error::custom(format!(
                        "{text:?} is not a {} (one of {})",
                        stringify!($enum),
                        names.join(", ")
                    ))
                })
            }
        }
    };
}

enum_json!(
    job_state,
    JobState,
    JobStateName,
    "JOB_STATE_",
    "JOB_STATE_SUCCEEDED",
    [
        JOB_STATE_UNSPECIFIED,
        JOB_STATE_ADMITTED,
        JOB_STATE_RUNNING,
        JOB_STATE_SUCCEEDED,
        JOB_STATE_FAILED,
        JOB_STATE_REFUSED,
        JOB_STATE_CANCELLED,
    ]
);
enum_json!(
    psi_mode,
    PsiMode,
    PsiModeName,
    "PSI_MODE_",
    "PSI_MODE_INTERSECTION",
    [
        PSI_MODE_UNSPECIFIED,
        PSI_MODE_INTERSECTION,
        PSI_MODE_SIZE,
        PSI_MODE_BOTH,
    ]
);
enum_json!(
    psi_protocol,
    PsiProtocol,
    PsiProtocolName,
    "PSI_PROTOCOL_",
    "PSI_PROTOCOL_RR22",
    [
        PSI_PROTOCOL_UNSPECIFIED,
        PSI_PROTOCOL_RR22,
        PSI_PROTOCOL_ECDH,
        PSI_PROTOCOL_ECDH_OPRF,
    ]
);
enum_json!(
    key_case,
    KeyCase,
    KeyCaseName,
    "KEY_CASE_",
    "KEY_CASE_PRESERVE",
    [
        KEY_CASE_UNSPECIFIED,
        KEY_CASE_PRESERVE,
        KEY_CASE_LOWER,
        KEY_CASE_UPPER,
        KEY_CASE_FOLD,
    ]
);
enum_json!(
    task_role,
    TaskRole,
    TaskRoleName,
    "TASK_ROLE_",
    "TASK_ROLE_RECEIVER",
    [TASK_ROLE_UNSPECIFIED, TASK_ROLE_SENDER, TASK_ROLE_RECEIVER]
);
enum_json!(
    unicode_form,
    UnicodeForm,
    UnicodeFormName,
    "UNICODE_FORM_",
    "UNICODE_FORM_NFC",
    [
        UNICODE_FORM_UNSPECIFIED,
        UNICODE_FORM_NONE,
        UNICODE_FORM_NFC,
        UNICODE_FORM_NFKC,
    ]
);
enum_json!(
    empty_keys,
    EmptyKeys,
    EmptyKeysName,
    "EMPTY_KEYS_",
    "EMPTY_KEYS_SKIP",
    [EMPTY_KEYS_UNSPECIFIED, EMPTY_KEYS_SKIP, EMPTY_KEYS_FAIL]
);
enum_json!(
    mpc_triples,
    MpcTriples,
    MpcTriplesName,
    "MPC_TRIPLES_",
    "MPC_TRIPLES_DEALER",
    [MPC_TRIPLES_UNSPECIFIED, MPC_TRIPLES_OT, MPC_TRIPLES_DEALER]
);
enum_json!(
    join_kind,
    JoinKind,
    JoinKindName,
    "JOIN_KIND_",
    "JOIN_KIND_INNER",
    [
        JOIN_KIND_UNSPECIFIED,
        JOIN_KIND_INNER,
        JOIN_KIND_LEFT,
        JOIN_KIND_DIFFERENCE,
    ]
);

#[cfg(test)]
mod tests {
    use crate::v1 as pb;

    /// The names the OpenAPI document lists are exactly the enums' (a value added to the
    /// .proto without its name here fails).
    #[test]
    fn the_documented_names_are_the_enums_names() {
        fn names<E: TryFrom<i32>>(name: impl Fn(E) -> &'static str) -> Vec<&'static str> {
            (0..256)
                .filter_map(|n| E::try_from(n).ok())
                .map(name)
                .collect()
        }
        use super::*;
        assert_eq!(JobStateName::ALL, names(|e: pb::JobState| e.as_str_name()));
        assert_eq!(PsiModeName::ALL, names(|e: pb::PsiMode| e.as_str_name()));
        assert_eq!(
            PsiProtocolName::ALL,
            names(|e: pb::PsiProtocol| e.as_str_name())
        );
        assert_eq!(KeyCaseName::ALL, names(|e: pb::KeyCase| e.as_str_name()));
        assert_eq!(TaskRoleName::ALL, names(|e: pb::TaskRole| e.as_str_name()));
        assert_eq!(
            UnicodeFormName::ALL,
            names(|e: pb::UnicodeForm| e.as_str_name())
        );
        assert_eq!(
            EmptyKeysName::ALL,
            names(|e: pb::EmptyKeys| e.as_str_name())
        );
        assert_eq!(JoinKindName::ALL, names(|e: pb::JoinKind| e.as_str_name()));
        assert_eq!(
            MpcTriplesName::ALL,
            names(|e: pb::MpcTriples| e.as_str_name())
        );
    }

    #[test]
    fn enums_travel_by_name_and_unknown_names_are_refused() {
        let job = pb::Job {
            state: pb::JobState::Succeeded as i32,
            mode: pb::PsiMode::Size as i32,
            ..Default::default()
        };
        let v = serde_json::to_value(&job).expect("json");
        assert_eq!(v["state"], "JOB_STATE_SUCCEEDED");
        assert_eq!(v["mode"], "PSI_MODE_SIZE");
        assert!(v.get("resultSize").is_some(), "camelCase names: {v}");
        let r: pb::SubmitJobRequest = serde_json::from_str(
            r#"{"licenceId":"l","mode":"intersection","keyCase":"KEY_CASE_FOLD"}"#,
        )
        .expect("parse");
        assert_eq!(r.mode, pb::PsiMode::Intersection as i32);
        assert_eq!(r.key_case, pb::KeyCase::Fold as i32);
        assert_eq!(r.licence_id, "l");
        let r: pb::SubmitJobRequest =
            serde_json::from_str(r#"{"join":"left"}"#).expect("join by name");
        assert_eq!(r.join, pb::JoinKind::Left as i32);
        let r: pb::SubmitJobRequest =
            serde_json::from_str(r#"{"mpcTriples":"dealer"}"#).expect("triples by name");
        assert_eq!(r.mpc_triples, pb::MpcTriples::Dealer as i32);
        let e = serde_json::from_str::<pb::SubmitJobRequest>(r#"{"mode":"everything"}"#)
            .expect_err("unknown");
        assert!(e.to_string().contains("PSI_MODE_SIZE"), "{e}");
        assert!(serde_json::from_str::<pb::SubmitJobRequest>(r#"{"mode":1}"#).is_err());
    }
}
