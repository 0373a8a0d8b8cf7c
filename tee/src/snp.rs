//! AMD SEV-SNP attestation reports, verified with the `sev` crate (pure-Rust backend): the
//! chain ARK → ASK → VCEK to one of AMD's roots built into `sev` (Milan, Genoa, Turin), each
//! certificate's validity at the given time, the report's ECDSA P-384 signature under the
//! VCEK, and the VCEK's own TCB and chip id extensions against the report's.
//!
//! A chain file (AMD's `cert_chain`: ASK then ARK, PEM) may be given; its ARK must be one of
//! the built-in roots byte for byte, so a chain file can never add trust. Without it, the
//! built-in ASKs are tried.

use sev::certs::snp::{Certificate, Chain, Verifiable, builtin, ca};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;

use crate::error::VerifyError;
use crate::evidence::{Measurements, SnpTcb, VerifiedEvidence};

/// Size of an SEV-SNP attestation report, in bytes.
pub const SNP_REPORT_BYTES: usize = 1184;
/// Largest certificate or chain file read, in bytes.
pub const MAX_CERT_BYTES: usize = 64 * 1024;

/// Verifies an SEV-SNP attestation report (1184 bytes, raw or as hex text) against the VCEK
/// (DER) and, optionally, AMD's ASK/ARK chain (PEM), at `at` (unix seconds).
///
/// # Errors
/// [`VerifyError`]: the first reason the report cannot be trusted.
pub fn verify_snp_report(
    report: &[u8],
    vcek_der: &[u8],
    chain_pem: Option<&[u8]>,
    at: u64,
) -> Result<VerifiedEvidence, VerifyError> {
    VerifyError::check_len("SEV-SNP report", report.len(), 4 * SNP_REPORT_BYTES)?;
    VerifyError::check_len("VCEK", vcek_der.len(), MAX_CERT_BYTES)?;
    let raw = report_bytes(report)?;
    let parsed = AttestationReport::from_bytes(&raw)
        .map_err(|e| VerifyError::malformed("SEV-SNP report", e))?;
    // The signature is checked over the report as `sev` re-encodes it: it must be the bytes
    // given, or a change in a field `sev` ignores would go unnoticed.
    let reencoded = parsed
        .to_bytes()
        .map_err(|e| VerifyError::malformed("SEV-SNP report", e))?;
    if reencoded.as_slice() != raw.as_slice() {
        return Err(VerifyError::malformed(
            "SEV-SNP report",
            "not in canonical form (reserved bytes set)",
        ));
    }
    let vcek = Certificate::from_der(vcek_der).map_err(|e| VerifyError::malformed("VCEK", e))?;
    let ca = ca_chain(chain_pem, &vcek)?;
    for (what, cert) in [("ARK", &ca.ark), ("ASK", &ca.ask), ("VCEK", &vcek)] {
        check_validity(what, cert, at)?;
    }
    let chain = Chain { ca, vek: vcek };
    (&chain, &parsed)
        .verify()
        .map_err(|e| VerifyError::SignatureInvalid {
            detail: e.to_string(),
        })?;
    check_vcek_matches(&chain.vek, &parsed)?;
    Ok(evidence_of(&parsed, at))
}

fn report_bytes(report: &[u8]) -> Result<Vec<u8>, VerifyError> {
    if report.len() == SNP_REPORT_BYTES {
        return Ok(report.to_vec());
    }
    let text: Vec<u8> = report
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let raw = hex::decode(&text).map_err(|_| {
        VerifyError::malformed(
            "SEV-SNP report",
            format!(
                "neither {SNP_REPORT_BYTES} bytes nor hex of them ({} bytes given)",
                report.len()
            ),
        )
    })?;
    if raw.len() != SNP_REPORT_BYTES {
        return Err(VerifyError::malformed(
            "SEV-SNP report",
            format!("{} bytes, expected {SNP_REPORT_BYTES}", raw.len()),
        ));
    }
    Ok(raw)
}

fn builtin_roots() -> Vec<(Certificate, Certificate)> {
    let mut out = Vec::new();
    for (ark, ask) in [
        (builtin::milan::ark(), builtin::milan::ask()),
        (builtin::genoa::ark(), builtin::genoa::ask()),
        (builtin::turin::ark(), builtin::turin::ask()),
    ] {
        if let (Ok(ark), Ok(ask)) = (ark, ask) {
            out.push((ark, ask));
        }
    }
    out
}

/// The CA chain to check the VCEK with: the given chain's ASK under a built-in ARK, or the
/// built-in pair that signs the VCEK.
fn ca_chain(chain_pem: Option<&[u8]>, vcek: &Certificate) -> Result<ca::Chain, VerifyError> {
    let roots = builtin_roots();
    if let Some(pem_bytes) = chain_pem {
        VerifyError::check_len("certificate chain", pem_bytes.len(), MAX_CERT_BYTES)?;
        let blocks = pem::parse_many(pem_bytes)
            .map_err(|e| VerifyError::malformed("certificate chain", e))?;
        let [ask, ark] = blocks.as_slice() else {
            return Err(VerifyError::malformed(
                "certificate chain",
                format!("{} certificates, expected 2 (ASK, ARK)", blocks.len()),
            ));
        };
        let ask = Certificate::from_der(ask.contents())
            .map_err(|e| VerifyError::malformed("certificate chain", e))?;
        let ark_der = ark.contents();
        let trusted = roots
            .into_iter()
            .find(|(root, _)| root.to_der().map(|d| d == ark_der).unwrap_or(false));
        let Some((ark, _)) = trusted else {
            return Err(VerifyError::UnknownRoot);
        };
        let ca = ca::Chain { ark, ask };
        verify_chain(&ca, vcek)?;
        return Ok(ca);
    }
    let mut last = String::from("no built-in AMD root");
    for (ark, ask) in roots {
        let ca = ca::Chain { ark, ask };
        match verify_chain(&ca, vcek) {
            Ok(()) => return Ok(ca),
            Err(e) => last = e.to_string(),
        }
    }
    Err(VerifyError::ChainInvalid { detail: last })
}

fn verify_chain(ca: &ca::Chain, vcek: &Certificate) -> Result<(), VerifyError> {
    let chain = Chain {
        ca: ca.clone(),
        vek: vcek.clone(),
    };
    chain
        .verify()
        .map(|_| ())
        .map_err(|e| VerifyError::ChainInvalid {
            detail: e.to_string(),
        })
}

fn check_validity(what: &str, cert: &Certificate, at: u64) -> Result<(), VerifyError> {
    let x: x509_cert::Certificate = cert.clone().into();
    let v = &x.tbs_certificate.validity;
    let not_before = v.not_before.to_unix_duration().as_secs();
    let not_after = v.not_after.to_unix_duration().as_secs();
    if at < not_before {
        return Err(VerifyError::CollateralNotYetValid {
            what: format!("{what} certificate"),
            valid_from: not_before,
            at,
        });
    }
    if at > not_after {
        return Err(VerifyError::CollateralExpired {
            what: format!("{what} certificate"),
            expired_at: not_after,
            at,
        });
    }
    Ok(())
}

const OID_BL_SPL: &str = "1.3.6.1.4.1.3704.1.3.1";
const OID_TEE_SPL: &str = "1.3.6.1.4.1.3704.1.3.2";
const OID_SNP_SPL: &str = "1.3.6.1.4.1.3704.1.3.3";
const OID_UCODE_SPL: &str = "1.3.6.1.4.1.3704.1.3.8";
const OID_HW_ID: &str = "1.3.6.1.4.1.3704.1.4";

/// The VCEK is derived per chip and TCB: its extensions must name the report's reported TCB
/// and (unless the report masks it) chip id. Otherwise a compromised old firmware could
/// claim a newer TCB in a report signed with its old key.
fn check_vcek_matches(vcek: &Certificate, report: &AttestationReport) -> Result<(), VerifyError> {
    let x: x509_cert::Certificate = vcek.clone().into();
    let exts = x.tbs_certificate.extensions.unwrap_or_default();
    let find = |oid: &str| {
        exts.iter()
            .find(|e| e.extn_id.to_string() == oid)
            .map(|e| e.extn_value.as_bytes().to_vec())
    };
    let tcb = report.reported_tcb;
    for (oid, name, want) in [
        (OID_BL_SPL, "bootloader", tcb.bootloader),
        (OID_TEE_SPL, "tee", tcb.tee),
        (OID_SNP_SPL, "snp", tcb.snp),
        (OID_UCODE_SPL, "microcode", tcb.microcode),
    ] {
        let got = find(oid).and_then(|v| der_small_int(&v));
        if got != Some(u64::from(want)) {
            return Err(VerifyError::VcekMismatch {
                detail: format!("{name} SVN: VCEK {got:?}, report {want}"),
            });
        }
    }
    if report.chip_id != [0u8; 64] {
        let hw = find(OID_HW_ID).map(|v| match v.as_slice() {
            [0x04, 0x40, rest @ ..] => rest.to_vec(),
            _ => v,
        });
        if hw.as_deref() != Some(&report.chip_id[..]) {
            return Err(VerifyError::VcekMismatch {
                detail: "the VCEK's hwID is not the report's chip id".into(),
            });
        }
    }
    Ok(())
}

/// A DER INTEGER of at most 8 content bytes, non-negative.
fn der_small_int(v: &[u8]) -> Option<u64> {
    let [0x02, len, rest @ ..] = v else {
        return None;
    };
    if usize::from(*len) != rest.len() || rest.is_empty() || rest.len() > 9 {
        return None;
    }
    if rest.first().is_some_and(|b| b & 0x80 != 0) {
        return None;
    }
    rest.iter().try_fold(0u64, |acc, b| {
        acc.checked_mul(256).map(|a| a | u64::from(*b))
    })
}

fn evidence_of(r: &AttestationReport, at: u64) -> VerifiedEvidence {
    let policy: u64 = r.policy.into();
    let m = Measurements::SevSnp {
        measurement: hex::encode(r.measurement),
        policy,
        vmpl: r.vmpl,
        guest_svn: r.guest_svn,
        reported_tcb: SnpTcb {
            bootloader: r.reported_tcb.bootloader,
            tee: r.reported_tcb.tee,
            snp: r.reported_tcb.snp,
            microcode: r.reported_tcb.microcode,
        },
        host_data: hex::encode(r.host_data),
    };
    VerifiedEvidence::new(m, r.report_data, r.policy.debug_allowed(), at)
}

/// The SNP guest policy's bits this crate reads.
pub(crate) mod policy_bits {
    /// Host SMT allowed.
    pub const SMT: u64 = 1 << 16;
    /// Association with a migration agent allowed.
    pub const MIGRATE_MA: u64 = 1 << 18;
    /// Debugging allowed.
    pub const DEBUG: u64 = 1 << 19;
}
