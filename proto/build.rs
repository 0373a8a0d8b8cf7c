//! Generates the gRPC code with the vendored `protoc`, so a fresh machine needs no install.
//!
//! The messages the REST facade carries (every message but the worker protocol's and the peer
//! link's) also derive `serde` (the proto3 JSON mapping's lowerCamelCase field names; a missing
//! field is its default; an unknown field is an error, so a misspelt one is never ignored) and `utoipa::ToSchema` (the OpenAPI document); their enum fields
//! travel as the enum value's name (`crate::json`).

/// Messages of the worker protocol and the peer link: gRPC only, never JSON.
const GRPC_ONLY: &[&str] = &[
    "TaiRequest",
    "TaiReply",
    "Frame",
    "TaskEnvelope",
    "TaskAssignment",
    "TaskCancel",
    "RegisterWorkerRequest",
    "RegisterWorkerResponse",
    "HeartbeatRequest",
    "CertificateRequest",
    "IssuedCertificate",
    "HeartbeatResponse",
    "PullTasksRequest",
    "ProgressReport",
    "Usage",
    "TaskResult",
    "DeliveryReport",
    "TeeChallengeRequest",
    "TeeChallengeResponse",
    "TeeAttestRequest",
    "TeeAttestResponse",
    "KeyReleaseRequest",
    "ReleasedDatasetKey",
];

/// Enum-typed fields and the `crate::json` module that names their values.
const ENUM_FIELDS: &[(&str, &str, &str)] = &[
    ("SubmitJobRequest.mode", "psi_mode", "PsiModeName"),
    (
        "SubmitJobRequest.protocol",
        "psi_protocol",
        "PsiProtocolName",
    ),
    ("SubmitJobRequest.key_case", "key_case", "KeyCaseName"),
    (
        "SubmitJobRequest.unicode_form",
        "unicode_form",
        "UnicodeFormName",
    ),
    ("SubmitJobRequest.empty_keys", "empty_keys", "EmptyKeysName"),
    ("SubmitJobRequest.join", "join_kind", "JoinKindName"),
    (
        "SubmitJobRequest.mpc_triples",
        "mpc_triples",
        "MpcTriplesName",
    ),
    ("PhaseProgress.role", "task_role", "TaskRoleName"),
    ("Job.state", "job_state", "JobStateName"),
    ("Job.mode", "psi_mode", "PsiModeName"),
    ("Job.protocol", "psi_protocol", "PsiProtocolName"),
    ("Job.mpc_triples", "mpc_triples", "MpcTriplesName"),
    ("JobQuery.state", "job_state", "JobStateName"),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let proto = std::fs::read_to_string("tessera.proto")?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    config.bytes(["."]);
    for name in proto.lines().filter_map(|l| {
        l.strip_prefix("message ")
            .and_then(|rest| rest.split_whitespace().next())
    }) {
        if GRPC_ONLY.contains(&name) {
            continue;
        }
        config.type_attribute(
            format!(".tessera.v1.{name}"),
            "#[derive(serde::Serialize, serde::Deserialize, utoipa::ToSchema)]\n\
             #[serde(default, rename_all = \"camelCase\", deny_unknown_fields)]",
        );
    }
    for (field, module, names) in ENUM_FIELDS {
        config.field_attribute(
            format!(".tessera.v1.{field}"),
            format!(
                "#[serde(with = \"crate::json::{module}\")]\n\
                 #[schema(value_type = crate::json::{names}, \
                 example = json!(crate::json::{module}::EXAMPLE), \
                 default = json!(crate::json::{module}::DEFAULT))]"
            ),
        );
    }
    tonic_prost_build::configure().compile_with_config(config, &["tessera.proto"], &["."])?;
    println!("cargo:rerun-if-changed=tessera.proto");
    println!("cargo:rerun-if-changed=build.rs");
    Ok(())
}
