//! The JSON form of the wire enums, for the REST facade: a value travels as its proto name
//! (`"JOB_STATE_SUCCEEDED"`, as the proto3 JSON mapping writes it). On input the name without
//! its enum prefix is accepted too, in any case (`"succeeded"`, `"intersection"`), like the
//! CLI's. An unknown name is an error naming the accepted ones; a number is refused.

macro_rules! enum_json {
    ($module:ident, $enum:ident, $prefix:literal, $example:literal) => {
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
                let upper = text.trim().to_ascii_uppercase();
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

enum_json!(job_state, JobState, "JOB_STATE_", "JOB_STATE_SUCCEEDED");
enum_json!(psi_mode, PsiMode, "PSI_MODE_", "PSI_MODE_INTERSECTION");
enum_json!(key_case, KeyCase, "KEY_CASE_", "KEY_CASE_PRESERVE");
enum_json!(task_role, TaskRole, "TASK_ROLE_", "TASK_ROLE_RECEIVER");
enum_json!(
    unicode_form,
    UnicodeForm,
    "UNICODE_FORM_",
    "UNICODE_FORM_NFC"
);
enum_json!(empty_keys, EmptyKeys, "EMPTY_KEYS_", "EMPTY_KEYS_SKIP");

#[cfg(test)]
mod tests {
    use crate::v1 as pb;

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
        let e = serde_json::from_str::<pb::SubmitJobRequest>(r#"{"mode":"everything"}"#)
            .expect_err("unknown");
        assert!(e.to_string().contains("PSI_MODE_SIZE"), "{e}");
        assert!(serde_json::from_str::<pb::SubmitJobRequest>(r#"{"mode":1}"#).is_err());
    }
}
